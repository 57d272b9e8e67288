//! Right-of-access requests (HIPAA, 45 CFR 164.524) to providers without a patient API:
//! Tessera prepares the letter for the patient's signature, tracks it, applies the rule's
//! deadlines, follows up and escalates on a schedule, stops at the policy's limit, takes in
//! what arrives (an operator attaches it; the files go through ingest), and scores providers
//! from real outcomes.
//!
//! The rule's clock: a covered entity must act within 30 days of receiving the request
//! (164.524(b)(2)(i)); it may extend once, by up to 30 more days, if it tells the individual in
//! writing within the first 30 days why and when (164.524(b)(2)(ii)). A fee may only be
//! cost-based (164.524(c)(4)); $6.50 is HHS's flat-fee option for electronic copies.
//!
//! Every time here is given by the caller (`now`), so a simulated clock drives the schedule in
//! tests exactly as the real one does in `tessera serve`.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::identity::status_of;
use crate::store::{parse_time, sql_err, time_text};
use crate::{RecordsError, RecordsStore, Result, random_id};

/// The follow-up and escalation policy (Ciitizen followed up by fax and e-mail and stopped at
/// 45 days past the deadline; the defaults here are close to that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Days the provider has by rule (30).
    pub response_days: i64,
    /// The one extension's length (30).
    pub extension_days: i64,
    /// Follow-ups after sending, in days from the sending (a reminder before the deadline,
    /// then after it).
    pub follow_up_days: Vec<i64>,
    /// Days past the (possibly extended) deadline at which the request is escalated (a
    /// complaint to the provider's privacy officer, and the patient told of their right to
    /// complain to HHS's Office for Civil Rights).
    pub escalate_after_days: i64,
    /// Days past the deadline after which Tessera stops following up (closed unfulfilled).
    pub stop_after_days: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            response_days: 30,
            extension_days: 30,
            follow_up_days: vec![14, 28, 37, 51],
            escalate_after_days: 14,
            stop_after_days: 45,
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// The letter is ready for the patient's signature.
    Prepared,
    Sent,
    Acknowledged,
    Extended,
    FeeRequested,
    Escalated,
    Received,
    /// The policy's limit passed without the records.
    ClosedUnfulfilled,
    Cancelled,
}

impl RequestState {
    pub fn code(self) -> &'static str {
        match self {
            RequestState::Prepared => "prepared",
            RequestState::Sent => "sent",
            RequestState::Acknowledged => "acknowledged",
            RequestState::Extended => "extended",
            RequestState::FeeRequested => "fee_requested",
            RequestState::Escalated => "escalated",
            RequestState::Received => "received",
            RequestState::ClosedUnfulfilled => "closed_unfulfilled",
            RequestState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<RequestState> {
        Ok(match s {
            "prepared" => RequestState::Prepared,
            "sent" => RequestState::Sent,
            "acknowledged" => RequestState::Acknowledged,
            "extended" => RequestState::Extended,
            "fee_requested" => RequestState::FeeRequested,
            "escalated" => RequestState::Escalated,
            "received" => RequestState::Received,
            "closed_unfulfilled" => RequestState::ClosedUnfulfilled,
            "cancelled" => RequestState::Cancelled,
            _ => return Err(RecordsError::internal("an unknown request state is stored")),
        })
    }

    /// Whether the provider still owes an answer.
    pub fn open(self) -> bool {
        matches!(
            self,
            RequestState::Sent
                | RequestState::Acknowledged
                | RequestState::Extended
                | RequestState::FeeRequested
                | RequestState::Escalated
        )
    }

    /// What the patient reads.
    pub fn describe(self) -> &'static str {
        match self {
            RequestState::Prepared => "Ready for your signature",
            RequestState::Sent => "Request sent",
            RequestState::Acknowledged => "The provider confirmed receiving it",
            RequestState::Extended => "The provider took its one 30-day extension",
            RequestState::FeeRequested => "The provider asked for a fee",
            RequestState::Escalated => "Overdue: escalated to the provider's privacy officer",
            RequestState::Received => "Records received",
            RequestState::ClosedUnfulfilled => "Closed: the provider did not answer in time",
            RequestState::Cancelled => "Cancelled",
        }
    }
}

/// One request as pages and the CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct AccessRequest {
    pub id: String,
    pub patient: String,
    pub provider: String,
    pub provider_name: String,
    pub state: RequestState,
    pub prepared_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    /// The deadline in force: the extended one once extended.
    pub due_at: Option<DateTime<Utc>>,
    pub extension_reason: Option<String>,
    /// (minor units, currency)
    pub fee: Option<(i64, String)>,
    pub received_at: Option<DateTime<Utc>>,
    /// `complete` or `partial`.
    pub completeness: Option<String>,
    pub follow_ups: i64,
    pub next_follow_up_at: Option<DateTime<Utc>>,
    pub escalated_at: Option<DateTime<Utc>>,
}

/// What [`AccessRequests::tick`] did to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    pub request: String,
    /// `follow_up`, `escalate`, `close`.
    pub kind: &'static str,
    pub at: DateTime<Utc>,
}

/// A provider's scorecard, from requests that ended.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub provider: String,
    pub provider_name: String,
    pub requests: usize,
    pub fulfilled: usize,
    /// Median days from sending to records received, over fulfilled requests.
    pub median_days: Option<f64>,
    pub follow_ups_per_request: f64,
    /// Requests that were charged a fee, and the largest fee (minor units).
    pub charged: usize,
    pub largest_fee_minor: Option<i64>,
    pub complete_share: f64,
    /// 1 to 5.
    pub stars: u8,
}

/// Right-of-access requests in the records store.
#[derive(Debug, Clone)]
pub struct AccessRequests {
    store: RecordsStore,
    policy: Policy,
}

fn day_text(t: DateTime<Utc>) -> String {
    t.format("%-d %B %Y").to_string()
}

impl AccessRequests {
    pub fn new(store: RecordsStore, policy: Policy) -> AccessRequests {
        AccessRequests { store, policy }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Prepares a request to `provider_name` (keyed `provider` for the scorecard: a directory
    /// id or the provider's NPI). Refused until the patient's identity is verified at IAL2.
    pub async fn prepare(
        &self,
        patient: &str,
        provider: &str,
        provider_name: &str,
        now: DateTime<Utc>,
    ) -> Result<String> {
        if !status_of(&self.store, patient).await?.unlocked() {
            return Err(RecordsError::Invalid(
                "verify the patient's identity first: a request is sent only for a verified person"
                    .into(),
            ));
        }
        let provider = provider.trim();
        let provider_name = provider_name.trim();
        if provider.is_empty() || provider_name.is_empty() || provider_name.len() > 200 {
            return Err(RecordsError::Invalid(
                "name the provider (its name, and a key such as its NPI)".into(),
            ));
        }
        let id = random_id()?;
        let t = time_text(now);
        sqlx::query(
            "INSERT INTO access_requests (id, patient, provider, provider_name, state, prepared_at, updated_at)
             VALUES ($1, $2, $3, $4, 'prepared', $5, $5)",
        )
        .bind(&id)
        .bind(patient)
        .bind(provider)
        .bind(provider_name)
        .bind(&t)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("recording a request"))?;
        self.event(&id, now, "prepared", None).await?;
        Ok(id)
    }

    /// The signed letter was sent (fax, e-mail, post): the rule's clock starts.
    pub async fn sent(&self, id: &str, now: DateTime<Utc>) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if r.state != RequestState::Prepared {
            return Err(self.wrong_state(&r, "send"));
        }
        let due = now + Duration::days(self.policy.response_days);
        let next = self
            .policy
            .follow_up_days
            .first()
            .map(|d| time_text(now + Duration::days(*d)));
        sqlx::query(
            "UPDATE access_requests SET state = 'sent', sent_at = $1, due_at = $2, next_follow_up_at = $3, updated_at = $1 WHERE id = $4",
        )
        .bind(time_text(now))
        .bind(time_text(due))
        .bind(next)
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(id, now, "sent", None).await?;
        self.get(id).await
    }

    pub async fn acknowledged(&self, id: &str, now: DateTime<Utc>) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if !r.state.open() {
            return Err(self.wrong_state(&r, "acknowledge"));
        }
        sqlx::query(
            "UPDATE access_requests SET state = CASE WHEN state = 'sent' THEN 'acknowledged' ELSE state END, acknowledged_at = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(time_text(now))
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(id, now, "acknowledged", None).await?;
        self.get(id).await
    }

    /// The provider's one extension: only within the first deadline, only once, and only with
    /// the written reasons the rule requires.
    pub async fn extended(
        &self,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if !r.state.open() {
            return Err(self.wrong_state(&r, "extend"));
        }
        if r.extension_reason.is_some() {
            return Err(RecordsError::Invalid(
                "the rule allows one extension only, and this request had it: the deadline stands"
                    .into(),
            ));
        }
        let due = r
            .due_at
            .ok_or_else(|| RecordsError::internal("a sent request has no deadline"))?;
        if now > due {
            return Err(RecordsError::Invalid(format!(
                "an extension must be given within the first {} days (by {}): this one came late and does not move the deadline",
                self.policy.response_days,
                day_text(due)
            )));
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(RecordsError::Invalid(
                "an extension needs the provider's written reasons (45 CFR 164.524(b)(2)(ii))"
                    .into(),
            ));
        }
        let extended = due + Duration::days(self.policy.extension_days);
        sqlx::query(
            "UPDATE access_requests SET state = 'extended', extended_due_at = $1, extension_reason = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(time_text(extended))
        .bind(reason)
        .bind(time_text(now))
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(id, now, "extended", Some(reason)).await?;
        self.get(id).await
    }

    pub async fn fee_requested(
        &self,
        id: &str,
        minor: i64,
        currency: &str,
        now: DateTime<Utc>,
    ) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if !r.state.open() {
            return Err(self.wrong_state(&r, "record a fee for"));
        }
        if minor < 0 || currency.len() != 3 {
            return Err(RecordsError::Invalid(
                "a fee is a non-negative amount in minor units with a three-letter currency".into(),
            ));
        }
        sqlx::query(
            "UPDATE access_requests SET state = 'fee_requested', fee_minor = $1, fee_currency = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(minor)
        .bind(currency.to_ascii_uppercase())
        .bind(time_text(now))
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(
            id,
            now,
            "fee_requested",
            Some(&format!("{minor} {}", currency.to_ascii_uppercase())),
        )
        .await?;
        self.get(id).await
    }

    /// Records arrived (`complete` or `partial`); the caller ingests the files.
    pub async fn received(
        &self,
        id: &str,
        complete: bool,
        now: DateTime<Utc>,
    ) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if !(r.state.open() || r.state == RequestState::ClosedUnfulfilled) {
            return Err(self.wrong_state(&r, "receive records for"));
        }
        let completeness = if complete { "complete" } else { "partial" };
        sqlx::query(
            "UPDATE access_requests SET state = 'received', received_at = $1, completeness = $2, next_follow_up_at = NULL, closed_at = $1, updated_at = $1 WHERE id = $3",
        )
        .bind(time_text(now))
        .bind(completeness)
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(id, now, "received", Some(completeness)).await?;
        self.get(id).await
    }

    pub async fn cancel(&self, id: &str, now: DateTime<Utc>) -> Result<AccessRequest> {
        let r = self.get(id).await?;
        if matches!(r.state, RequestState::Received | RequestState::Cancelled) {
            return Err(self.wrong_state(&r, "cancel"));
        }
        sqlx::query(
            "UPDATE access_requests SET state = 'cancelled', next_follow_up_at = NULL, closed_at = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(time_text(now))
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a request"))?;
        self.event(id, now, "cancelled", None).await?;
        self.get(id).await
    }

    /// Applies the schedule at `now`: follow-ups due, escalation past the deadline, closing at
    /// the policy's limit. Idempotent: a second tick at the same time does nothing more.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<Action>> {
        let open = sqlx::query(
            "SELECT * FROM access_requests WHERE state IN ('sent', 'acknowledged', 'extended', 'fee_requested', 'escalated') ORDER BY id",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading requests"))?;
        let mut actions = Vec::new();
        for row in &open {
            let r = row_to_request(row)?;
            let id = r.id.clone();
            let (Some(sent), Some(due)) = (r.sent_at, r.due_at) else {
                continue;
            };
            if now > due + Duration::days(self.policy.stop_after_days) {
                sqlx::query(
                    "UPDATE access_requests SET state = 'closed_unfulfilled', next_follow_up_at = NULL, closed_at = $1, updated_at = $1 WHERE id = $2",
                )
                .bind(time_text(now))
                .bind(&id)
                .execute(self.store.pool())
                .await
                .map_err(sql_err("updating a request"))?;
                self.event(&id, now, "closed_unfulfilled", None).await?;
                actions.push(Action {
                    request: id,
                    kind: "close",
                    at: now,
                });
                continue;
            }
            if r.escalated_at.is_none()
                && now > due + Duration::days(self.policy.escalate_after_days)
            {
                sqlx::query(
                    "UPDATE access_requests SET state = 'escalated', escalated_at = $1, updated_at = $1 WHERE id = $2",
                )
                .bind(time_text(now))
                .bind(&id)
                .execute(self.store.pool())
                .await
                .map_err(sql_err("updating a request"))?;
                self.event(&id, now, "escalated", None).await?;
                actions.push(Action {
                    request: id.clone(),
                    kind: "escalate",
                    at: now,
                });
            }
            if let Some(next) = r.next_follow_up_at
                && next <= now
            {
                // The schedule counts from the sending; an extension moves the follow-ups
                // that would fall before the new deadline to the day after it.
                let done = usize::try_from(r.follow_ups + 1).unwrap_or(usize::MAX);
                let following = self.policy.follow_up_days.get(done).map(|d| {
                    let mut f = sent + Duration::days(*d);
                    if r.extension_reason.is_some() && f < due {
                        f = due + Duration::days(1);
                    }
                    // Never two on one day: a follow-up already past waits a week.
                    if f <= now {
                        f = now + Duration::days(7);
                    }
                    f
                });
                sqlx::query(
                    "UPDATE access_requests SET follow_ups = follow_ups + 1, next_follow_up_at = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(following.map(time_text))
                .bind(time_text(now))
                .bind(&id)
                .execute(self.store.pool())
                .await
                .map_err(sql_err("updating a request"))?;
                self.event(&id, now, "follow_up", Some(&done.to_string()))
                    .await?;
                actions.push(Action {
                    request: id,
                    kind: "follow_up",
                    at: now,
                });
            }
        }
        Ok(actions)
    }

    pub async fn get(&self, id: &str) -> Result<AccessRequest> {
        let r = sqlx::query("SELECT * FROM access_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(self.store.pool())
            .await
            .map_err(sql_err("reading a request"))?
            .ok_or_else(|| {
                RecordsError::NotFound(format!("no request {id}: see `tessera providers requests`"))
            })?;
        row_to_request(&r)
    }

    /// A patient's requests (all patients' with `None`), newest first.
    pub async fn list(&self, patient: Option<&str>) -> Result<Vec<AccessRequest>> {
        let rows = match patient {
            Some(p) => sqlx::query(
                "SELECT * FROM access_requests WHERE patient = $1 ORDER BY prepared_at DESC, id",
            )
            .bind(p)
            .fetch_all(self.store.pool())
            .await,
            None => {
                sqlx::query("SELECT * FROM access_requests ORDER BY prepared_at DESC, id")
                    .fetch_all(self.store.pool())
                    .await
            }
        }
        .map_err(sql_err("reading requests"))?;
        rows.iter().map(row_to_request).collect()
    }

    /// A deleted patient's requests: deleted with their history (the scorecard keeps nothing of
    /// them; a provider's score is recomputed from the requests that remain).
    pub async fn forget(&self, patient: &str) -> Result<u64> {
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(sql_err("deleting requests"))?;
        sqlx::query("DELETE FROM access_request_events WHERE request_id IN (SELECT id FROM access_requests WHERE patient = $1)")
            .bind(patient)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("deleting requests"))?;
        let done = sqlx::query("DELETE FROM access_requests WHERE patient = $1")
            .bind(patient)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("deleting requests"))?;
        tx.commit().await.map_err(sql_err("deleting requests"))?;
        Ok(done.rows_affected())
    }

    /// The scorecard: providers with at least one request that ended (received or closed),
    /// best first.
    ///
    /// Stars: start from 5; −1 if the median fulfilment took over 30 days (the rule's
    /// deadline), −1 more if over 60; −1 if on average more than one follow-up was needed;
    /// −1 if any fee above HHS's $6.50 flat option was asked; −1 if under 80% of received
    /// records were complete; a provider that left more than half its requests unfulfilled
    /// has 1 star. Never below 1.
    pub async fn scorecard(&self) -> Result<Vec<Score>> {
        let all = self.list(None).await?;
        let mut by: std::collections::BTreeMap<&str, Vec<&AccessRequest>> = Default::default();
        for r in &all {
            if matches!(
                r.state,
                RequestState::Received | RequestState::ClosedUnfulfilled
            ) {
                by.entry(r.provider.as_str()).or_default().push(r);
            }
        }
        let mut out: Vec<Score> = by
            .into_iter()
            .map(|(provider, list)| score(provider, &list))
            .collect();
        out.sort_by(|a, b| {
            b.stars
                .cmp(&a.stars)
                .then(b.requests.cmp(&a.requests))
                .then(a.provider_name.cmp(&b.provider_name))
        });
        Ok(out)
    }

    async fn event(
        &self,
        id: &str,
        at: DateTime<Utc>,
        kind: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM access_request_events WHERE request_id = $1",
        )
        .bind(id)
        .fetch_one(self.store.pool())
        .await
        .map_err(sql_err("recording a request's step"))?;
        sqlx::query(
            "INSERT INTO access_request_events (request_id, seq, at, kind, detail) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(seq)
        .bind(time_text(at))
        .bind(kind)
        .bind(detail)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("recording a request's step"))?;
        Ok(())
    }

    /// A request's steps, oldest first: (time, kind, detail).
    pub async fn history(&self, id: &str) -> Result<Vec<(DateTime<Utc>, String, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT at, kind, detail FROM access_request_events WHERE request_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading a request's steps"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_time(&r.get::<String, _>("at"))?,
                    r.get("kind"),
                    r.get("detail"),
                ))
            })
            .collect()
    }

    fn wrong_state(&self, r: &AccessRequest, what: &str) -> RecordsError {
        RecordsError::Invalid(format!(
            "cannot {what} request {}: it is {}",
            r.id,
            r.state.code().replace('_', " ")
        ))
    }
}

fn score(provider: &str, list: &[&AccessRequest]) -> Score {
    let fulfilled: Vec<&&AccessRequest> = list
        .iter()
        .filter(|r| r.state == RequestState::Received)
        .collect();
    let mut days: Vec<f64> = fulfilled
        .iter()
        .filter_map(|r| Some((r.received_at? - r.sent_at?).num_hours() as f64 / 24.0))
        .collect();
    days.sort_by(f64::total_cmp);
    let median_days = match days.len() {
        0 => None,
        n if n % 2 == 1 => Some(days[n / 2]),
        n => Some((days[n / 2 - 1] + days[n / 2]) / 2.0),
    };
    let follow_ups_per_request =
        list.iter().map(|r| r.follow_ups as f64).sum::<f64>() / list.len() as f64;
    let charged = list
        .iter()
        .filter(|r| r.fee.as_ref().is_some_and(|(m, _)| *m > 0))
        .count();
    let largest_fee_minor = list
        .iter()
        .filter_map(|r| r.fee.as_ref().map(|(m, _)| *m))
        .max();
    let complete = fulfilled
        .iter()
        .filter(|r| r.completeness.as_deref() == Some("complete"))
        .count();
    let complete_share = if fulfilled.is_empty() {
        0.0
    } else {
        complete as f64 / fulfilled.len() as f64
    };
    let mut stars: i32 = 5;
    if median_days.is_some_and(|d| d > 30.0) {
        stars -= 1;
    }
    if median_days.is_some_and(|d| d > 60.0) {
        stars -= 1;
    }
    if follow_ups_per_request > 1.0 {
        stars -= 1;
    }
    if largest_fee_minor.is_some_and(|m| m > 650) {
        stars -= 1;
    }
    if !fulfilled.is_empty() && complete_share < 0.8 {
        stars -= 1;
    }
    if fulfilled.len() * 2 < list.len() {
        stars = 1;
    }
    Score {
        provider: provider.to_string(),
        provider_name: list
            .first()
            .map(|r| r.provider_name.clone())
            .unwrap_or_default(),
        requests: list.len(),
        fulfilled: fulfilled.len(),
        median_days,
        follow_ups_per_request,
        charged,
        largest_fee_minor,
        complete_share,
        stars: u8::try_from(stars.clamp(1, 5)).unwrap_or(1),
    }
}

fn row_to_request(r: &sqlx::any::AnyRow) -> Result<AccessRequest> {
    let t = |col: &str| -> Result<Option<DateTime<Utc>>> {
        r.get::<Option<String>, _>(col)
            .map(|s| parse_time(&s))
            .transpose()
    };
    let due = t("extended_due_at")?.or(t("due_at")?);
    Ok(AccessRequest {
        id: r.get("id"),
        patient: r.get("patient"),
        provider: r.get("provider"),
        provider_name: r.get("provider_name"),
        state: RequestState::parse(&r.get::<String, _>("state"))?,
        prepared_at: parse_time(&r.get::<String, _>("prepared_at"))?,
        sent_at: t("sent_at")?,
        due_at: due,
        extension_reason: r.get("extension_reason"),
        fee: r.get::<Option<i64>, _>("fee_minor").map(|m| {
            (
                m,
                r.get::<Option<String>, _>("fee_currency")
                    .unwrap_or_default(),
            )
        }),
        received_at: t("received_at")?,
        completeness: r.get("completeness"),
        follow_ups: r.get("follow_ups"),
        next_follow_up_at: t("next_follow_up_at")?,
        escalated_at: t("escalated_at")?,
    })
}

/// What the letter needs of the patient (from their identity in the catalog, at the moment
/// it is rendered; none of it is stored with the request).
#[derive(Clone, Default)]
pub struct LetterDetails {
    pub full_name: String,
    pub birth_date: String,
    pub address_lines: Vec<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    /// Record numbers at this provider, when known.
    pub record_numbers: Vec<String>,
    /// Where the copy goes (the patient's delivery address at Tessera, or their own).
    pub deliver_to: String,
    /// Set when a parent or guardian signs as the personal representative.
    pub representative: Option<(String, String)>,
}

impl LetterDetails {
    /// The details from the patient's identity as the catalog holds it: name, birth date,
    /// address, and the record numbers (`MR` identifiers) of the system `provider_system`
    /// names (none without it: another provider's record number is not this one's business).
    pub fn from_identity(
        identity: &tessera_catalog::model::PatientIdentity,
        provider_system: Option<&str>,
        deliver_to: &str,
    ) -> LetterDetails {
        let mut name: Vec<String> = identity.given_names.clone();
        name.extend(identity.family_name.iter().cloned());
        let mut address_lines = Vec::new();
        if let Some(a) = &identity.address {
            address_lines.extend(a.lines.iter().cloned());
            let place: Vec<&str> = [
                a.city.as_deref(),
                a.state.as_deref(),
                a.postal_code.as_deref(),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !place.is_empty() {
                address_lines.push(place.join(", "));
            }
        }
        LetterDetails {
            full_name: name.join(" "),
            birth_date: identity.birth_date.clone().unwrap_or_default(),
            address_lines,
            phone: None,
            email: None,
            record_numbers: identity
                .identifiers
                .iter()
                .filter(|i| {
                    i.type_code.as_deref() == Some("MR")
                        && provider_system.is_some_and(|s| i.system == s)
                })
                .map(|i| i.value.clone())
                .collect(),
            deliver_to: deliver_to.to_string(),
            representative: None,
        }
    }
}

impl std::fmt::Debug for LetterDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LetterDetails(redacted)")
    }
}

/// The letter's text, line by line (the PDF lays these out; tests read them back).
pub fn letter_lines(
    request: &AccessRequest,
    d: &LetterDetails,
    today: DateTime<Utc>,
    policy: &Policy,
) -> Vec<String> {
    let mut l = vec![d.full_name.clone()];
    l.extend(d.address_lines.iter().cloned());
    if let Some(p) = &d.phone {
        l.push(format!("Telephone: {p}"));
    }
    if let Some(e) = &d.email {
        l.push(format!("E-mail: {e}"));
    }
    l.push(String::new());
    l.push(day_text(today));
    l.push(String::new());
    l.push(format!(
        "To: {}, Health Information Management / Privacy Officer",
        request.provider_name
    ));
    l.push(String::new());
    l.push("Re: Request for access to my protected health information under 45 CFR 164.524".into());
    l.push(String::new());
    l.push(format!(
        "Patient: {}    Date of birth: {}",
        d.full_name, d.birth_date
    ));
    if !d.record_numbers.is_empty() {
        l.push(format!(
            "Medical record number(s): {}",
            d.record_numbers.join(", ")
        ));
    }
    l.push(String::new());
    l.push(
        "Under the HIPAA Privacy Rule's right of access (45 CFR 164.524), I request a copy of"
            .into(),
    );
    l.push(
        "all of my protected health information in your designated record set, including".into(),
    );
    l.push(
        "medical and billing records, clinical notes, problem lists, medications, allergies,"
            .into(),
    );
    l.push(
        "laboratory and imaging results and reports, genetic test results, and immunizations,"
            .into(),
    );
    l.push("for all dates of service.".into());
    l.push(String::new());
    l.push(
        "Form and format: an electronic copy (PDF, C-CDA or FHIR), as 45 CFR 164.524(c)(2)".into(),
    );
    l.push("requires where the records are held electronically.".into());
    l.push(format!("Please send the copy to me at: {}", d.deliver_to));
    l.push(String::new());
    l.push(format!(
        "Timing: you must act on this request within {} days of receiving it (45 CFR",
        policy.response_days
    ));
    l.push(format!(
        "164.524(b)(2)). You may extend once, by no more than {} days, only by telling me in",
        policy.extension_days
    ));
    l.push(
        "writing within those days the reasons for the delay and the date you will respond.".into(),
    );
    l.push(String::new());
    l.push(
        "Fees: only a reasonable, cost-based fee may be charged (45 CFR 164.524(c)(4)); for".into(),
    );
    l.push(
        "electronic copies you may charge the flat fee of $6.50. Please tell me of any fee before"
            .into(),
    );
    l.push("you prepare the copy.".into());
    l.push(String::new());
    if let Some((name, relation)) = &d.representative {
        l.push(format!(
            "I make this request as the patient's {relation} and personal representative (45 CFR 164.502(g)): {name}."
        ));
        l.push(String::new());
    }
    l.push("Signature: ______________________________    Date: ______________".into());
    l.push(String::new());
    l.push(format!("Tessera request reference: {}", request.id));
    l
}

/// The letter as a PDF (A4/Letter-safe margins, Helvetica, WinAnsi text; several pages when
/// long), ready for the patient's signature.
pub fn letter_pdf(lines: &[String]) -> Vec<u8> {
    use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};
    const PER_PAGE: usize = 52;
    let font_name = Name(b"F1");
    let catalog_id = Ref::new(1);
    let tree_id = Ref::new(2);
    let font_id = Ref::new(3);
    let chunks: Vec<&[String]> = lines.chunks(PER_PAGE).collect();
    let page_ids: Vec<Ref> = (0..chunks.len())
        .map(|i| Ref::new(i32::try_from(4 + 2 * i).unwrap_or(i32::MAX)))
        .collect();
    let mut pdf = Pdf::new();
    pdf.catalog(catalog_id).pages(tree_id);
    pdf.pages(tree_id)
        .kids(page_ids.iter().copied())
        .count(i32::try_from(page_ids.len()).unwrap_or(i32::MAX));
    for (chunk, page_id) in chunks.iter().zip(&page_ids) {
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(*page_id);
        // US Letter: 612 x 792 points.
        page.media_box(Rect::new(0.0, 0.0, 612.0, 792.0));
        page.parent(tree_id);
        page.contents(content_id);
        page.resources().fonts().pair(font_name, font_id);
        page.finish();
        let mut content = Content::new();
        content.begin_text();
        content.set_font(font_name, 10.5);
        content.set_leading(14.0);
        content.next_line(72.0, 792.0 - 72.0);
        for line in chunk.iter() {
            content.show(Str(&win_ansi(line)));
            content.next_line_using_leading();
        }
        content.end_text();
        pdf.stream(content_id, &content.finish());
    }
    pdf.type1_font(font_id)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.finish()
}

/// Text in WinAnsiEncoding (Latin-1 where the two agree; anything else as `?`).
fn win_ansi(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7E | 0xA0..=0xFF => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            0x2019 => 0x92,
            0x2013 => 0x96,
            0x2014 => 0x97,
            _ => b'?',
        })
        .collect()
}
