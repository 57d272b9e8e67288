//! The double-entry ledger. A transaction is a set of entries, each a debit or a credit of a
//! positive amount to one account; per currency, debits equal credits. Transactions are
//! append-only (the database refuses updates and deletes), carry a unique idempotency key, and
//! a correction is a reversing transaction. An account's balance is kept in its normal
//! direction and, unless the account allows it, never goes below zero: the update that applies
//! an entry is conditional on the result staying non-negative, in the same database transaction
//! as the entries, and a CHECK constraint guards it again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{Any, Row, Transaction};

use crate::PayoutsError;
use crate::money::{Currency, Money};
use crate::store::{new_id, now_text, sql_err};

/// Debit or credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Debit,
    Credit,
}

impl Side {
    fn code(self) -> &'static str {
        match self {
            Side::Debit => "D",
            Side::Credit => "C",
        }
    }
    fn from_code(s: &str) -> Side {
        if s == "D" { Side::Debit } else { Side::Credit }
    }
    pub fn opposite(self) -> Side {
        match self {
            Side::Debit => Side::Credit,
            Side::Credit => Side::Debit,
        }
    }
}

/// What an account stands for. The kind fixes its normal side and whether it may go negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Money held at a provider (Stripe balance, gift-card provider funding). An asset; may be
    /// overdrawn in the books when the operator has not yet topped the provider up, which
    /// reconciliation reports.
    ProviderFunds,
    /// The platform's share of license fees.
    PlatformRevenue,
    /// A license fee's patient share, before it is allocated.
    PatientPool,
    /// What a patient may be paid.
    PatientAvailable,
    /// What is set aside for a patient's payout in progress.
    PatientReserved,
    /// Payouts submitted to a rail and not yet settled.
    RailClearing,
    /// Donations on their way to an advocacy organization (its clearing account on the
    /// Stripe Connect rail).
    OrgClearing,
    /// Incentives a study has paid out (an expense of its sponsor).
    StudyIncentives,
    /// What deleted patients had earned and not been paid: a liability kept (as unclaimed
    /// funds, which unclaimed-property law may require to be reported) under the pseudonymous
    /// id of each, since whom to pay is no longer known.
    Unclaimed,
}

impl AccountKind {
    pub const ALL: [AccountKind; 9] = [
        AccountKind::ProviderFunds,
        AccountKind::PlatformRevenue,
        AccountKind::PatientPool,
        AccountKind::PatientAvailable,
        AccountKind::PatientReserved,
        AccountKind::RailClearing,
        AccountKind::OrgClearing,
        AccountKind::StudyIncentives,
        AccountKind::Unclaimed,
    ];

    pub fn code(self) -> &'static str {
        match self {
            AccountKind::ProviderFunds => "funds",
            AccountKind::PlatformRevenue => "revenue",
            AccountKind::PatientPool => "pool",
            AccountKind::PatientAvailable => "available",
            AccountKind::PatientReserved => "reserved",
            AccountKind::RailClearing => "clearing",
            AccountKind::OrgClearing => "org",
            AccountKind::StudyIncentives => "incentives",
            AccountKind::Unclaimed => "unclaimed",
        }
    }

    pub fn normal(self) -> Side {
        match self {
            AccountKind::ProviderFunds | AccountKind::StudyIncentives => Side::Debit,
            _ => Side::Credit,
        }
    }

    pub fn allows_negative(self) -> bool {
        matches!(self, AccountKind::ProviderFunds)
    }
}

/// One account: a kind, an owner (patient id, license id, rail name, ...) and a currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Account {
    pub kind: AccountKind,
    pub owner: String,
    pub currency: Currency,
}

impl Account {
    pub fn new(kind: AccountKind, owner: impl Into<String>, currency: Currency) -> Account {
        Account {
            kind,
            owner: owner.into(),
            currency,
        }
    }
    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.kind.code(), self.owner, self.currency)
    }
    pub fn patient_available(patient: &str, c: Currency) -> Account {
        Account::new(AccountKind::PatientAvailable, patient, c)
    }
    pub fn patient_reserved(patient: &str, c: Currency) -> Account {
        Account::new(AccountKind::PatientReserved, patient, c)
    }
}

/// One line of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub account: Account,
    pub side: Side,
    /// Minor units, positive.
    pub amount: i64,
}

impl Entry {
    pub fn debit(account: Account, amount: i64) -> Entry {
        Entry {
            account,
            side: Side::Debit,
            amount,
        }
    }
    pub fn credit(account: Account, amount: i64) -> Entry {
        Entry {
            account,
            side: Side::Credit,
            amount,
        }
    }
}

/// Where a movement of money came from, as a patient's history shows it. Never identifying:
/// internal ids of licenses, invoices, studies, surveys and payouts only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// A transaction to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    /// Unique per movement: posting the same key again changes nothing.
    pub key: String,
    /// What kind of movement (`license_payment`, `license_share`, `survey_incentive`,
    /// `payout_reserve`, `payout_submit`, `payout_post`, `payout_void`, `reversal`, ...).
    pub kind: String,
    pub source: Source,
    pub entries: Vec<Entry>,
    /// The transaction this one reverses, when it is a correction.
    pub reverses: Option<String>,
}

/// The result of posting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// Written now, with this transaction id.
    New(String),
    /// The key was posted before with the same entries: nothing written; the earlier id.
    Replayed(String),
}

impl Posted {
    pub fn id(&self) -> &str {
        match self {
            Posted::New(id) | Posted::Replayed(id) => id,
        }
    }
    pub fn is_new(&self) -> bool {
        matches!(self, Posted::New(_))
    }
}

impl NewTransaction {
    /// Checks what must hold before anything is written: a key, two or more entries,
    /// positive amounts, and per currency debits equal to credits.
    pub fn validate(&self) -> Result<(), PayoutsError> {
        if self.key.is_empty() || self.key.len() > 255 {
            return Err(PayoutsError::Invalid(
                "transaction key: 1 to 255 characters".into(),
            ));
        }
        if self.entries.len() < 2 {
            return Err(PayoutsError::Invalid(format!(
                "transaction `{}`: at least two entries",
                self.key
            )));
        }
        let mut per: BTreeMap<Currency, (i128, i128)> = BTreeMap::new();
        for e in &self.entries {
            if e.amount <= 0 {
                return Err(PayoutsError::Invalid(format!(
                    "transaction `{}`: entry amounts must be positive minor units",
                    self.key
                )));
            }
            let s = per.entry(e.account.currency).or_default();
            match e.side {
                Side::Debit => s.0 += i128::from(e.amount),
                Side::Credit => s.1 += i128::from(e.amount),
            }
        }
        for (c, (d, cr)) in per {
            if d != cr {
                return Err(PayoutsError::Unbalanced {
                    key: self.key.clone(),
                    currency: c.to_string(),
                    debits: d as i64,
                    credits: cr as i64,
                });
            }
        }
        Ok(())
    }

    /// A hash of what the transaction does, to tell a replay from a reused key.
    fn digest(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(self.kind.as_bytes());
        for e in &self.entries {
            ctx.update(format!("|{}|{}|{}", e.account.id(), e.side.code(), e.amount).as_bytes());
        }
        if let Some(r) = &self.reverses {
            ctx.update(format!("|rev:{r}").as_bytes());
        }
        hex::encode(ctx.finish().as_ref())
    }
}

/// `($1, …, $cols<suffix>), (…)` for a multi-row `VALUES` of `rows` rows.
pub(crate) fn values_placeholders(rows: usize, cols: usize, suffix: &str) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * cols + c + 1));
        }
        out.push_str(suffix);
        out.push(')');
    }
    out
}

/// Rows per multi-row statement (well inside SQLite's and PostgreSQL's bind limits).
const CHUNK: usize = 400;

/// Posts `t` inside the caller's database transaction: all of it or nothing, with the caller's
/// other writes. Returns `Replayed` when the key was posted before with the same entries, and
/// an error when it was posted with other entries.
pub(crate) async fn post_in(
    tx: &mut Transaction<'static, Any>,
    t: &NewTransaction,
) -> Result<Posted, PayoutsError> {
    t.validate()?;
    let digest = t.digest();
    if let Some(row) =
        sqlx::query("SELECT id, digest FROM ledger_transactions WHERE idempotency_key = $1")
            .bind(&t.key)
            .fetch_optional(&mut **tx)
            .await
            .map_err(sql_err("looking up a transaction key"))?
    {
        let id: String = row
            .try_get("id")
            .map_err(sql_err("reading a transaction"))?;
        let earlier: String = row
            .try_get("digest")
            .map_err(sql_err("reading a transaction"))?;
        if earlier != digest {
            return Err(PayoutsError::KeyReused(t.key.clone()));
        }
        return Ok(Posted::Replayed(id));
    }

    // Accounts come into being on first use.
    let mut accounts: BTreeMap<String, (&Account, i64)> = BTreeMap::new();
    for e in &t.entries {
        let delta = if e.side == e.account.kind.normal() {
            e.amount
        } else {
            -e.amount
        };
        let slot = accounts.entry(e.account.id()).or_insert((&e.account, 0));
        slot.1 = slot
            .1
            .checked_add(delta)
            .ok_or_else(|| PayoutsError::Invalid("amount out of range".into()))?;
    }
    let now = now_text();
    let list: Vec<(&String, &(&Account, i64))> = accounts.iter().collect();
    for chunk in list.chunks(CHUNK) {
        // The balance starts at 0: a literal, so the row binds seven values.
        let mut sql = String::from(
            "INSERT INTO ledger_accounts (id, kind, owner, currency, normal, allow_negative, created_at, balance) VALUES ",
        );
        sql.push_str(&values_placeholders(chunk.len(), 7, ", 0"));
        sql.push_str(" ON CONFLICT (id) DO NOTHING");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, (a, _)) in chunk {
            q = q
                .bind(id.as_str())
                .bind(a.kind.code())
                .bind(a.owner.as_str())
                .bind(a.currency.as_str())
                .bind(a.kind.normal().code())
                .bind(i64::from(a.kind.allows_negative()))
                .bind(now.as_str());
        }
        q.execute(&mut **tx)
            .await
            .map_err(sql_err("creating ledger accounts"))?;
    }

    let id = new_id("txn");
    let source = serde_json::to_string(&t.source).unwrap_or_else(|_| "{}".into());
    sqlx::query("INSERT INTO ledger_transactions (id, idempotency_key, kind, source, digest, reverses, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&id)
        .bind(&t.key)
        .bind(&t.kind)
        .bind(&source)
        .bind(&digest)
        .bind(t.reverses.as_deref())
        .bind(&now)
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if crate::store::contended(&e) {
                PayoutsError::Contended
            } else {
                PayoutsError::Sql { what: "writing a ledger transaction", source: e }
            }
        })?;

    for (ci, chunk) in t.entries.chunks(CHUNK).enumerate() {
        let mut sql = String::from(
            "INSERT INTO ledger_entries (transaction_id, seq, account_id, side, amount, currency) VALUES ",
        );
        sql.push_str(&values_placeholders(chunk.len(), 6, ""));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, e) in chunk.iter().enumerate() {
            q = q
                .bind(id.as_str())
                .bind((ci * CHUNK + i) as i64)
                .bind(e.account.id())
                .bind(e.side.code())
                .bind(e.amount)
                .bind(e.account.currency.as_str());
        }
        q.execute(&mut **tx)
            .await
            .map_err(sql_err("writing ledger entries"))?;
    }

    // Balances: one conditional update per account (one prepared statement, reused). An
    // account that would go below zero is not updated, and the whole transaction is refused.
    for (account, (_, delta)) in &list {
        let done = sqlx::query(
            "UPDATE ledger_accounts SET balance = balance + $1 WHERE id = $2 AND (allow_negative = 1 OR balance + $1 >= 0)",
        )
        .bind(*delta)
        .bind(account.as_str())
        .execute(&mut **tx)
        .await
        .map_err(|e| {
            if crate::store::check_violation(&e) {
                PayoutsError::InsufficientFunds(t.key.clone())
            } else {
                PayoutsError::Sql {
                    what: "updating balances",
                    source: e,
                }
            }
        })?;
        if done.rows_affected() != 1 {
            return Err(PayoutsError::InsufficientFunds(t.key.clone()));
        }
    }
    Ok(Posted::New(id))
}

/// A posted transaction as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostedTransaction {
    pub id: String,
    pub key: String,
    pub kind: String,
    pub source: Source,
    pub reverses: Option<String>,
    pub created_at: String,
    pub entries: Vec<PostedEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostedEntry {
    pub account_id: String,
    pub side: Side,
    pub amount: i64,
    pub currency: String,
}

/// An account's balance as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub account_id: String,
    pub kind: String,
    pub owner: String,
    pub currency: String,
    pub balance: i64,
}

impl Balance {
    pub fn money(&self) -> Option<Money> {
        Currency::parse(&self.currency)
            .ok()
            .map(|c| Money::new(self.balance, c))
    }
}

pub(crate) fn balance_from(r: &sqlx::any::AnyRow) -> Result<Balance, PayoutsError> {
    let c = sql_err("reading an account");
    Ok(Balance {
        account_id: r.try_get("id").map_err(c)?,
        kind: r.try_get("kind").map_err(sql_err("reading an account"))?,
        owner: r.try_get("owner").map_err(sql_err("reading an account"))?,
        currency: r
            .try_get("currency")
            .map_err(sql_err("reading an account"))?,
        balance: r
            .try_get("balance")
            .map_err(sql_err("reading an account"))?,
    })
}

pub(crate) fn entry_side(code: &str) -> Side {
    Side::from_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::USD
    }

    #[test]
    fn placeholders_number_every_row() {
        assert_eq!(values_placeholders(2, 2, ""), "($1, $2),($3, $4)");
        assert_eq!(values_placeholders(1, 3, ", 0"), "($1, $2, $3, 0)");
    }

    #[test]
    fn unbalanced_transactions_are_refused_before_writing() {
        let t = NewTransaction {
            key: "k".into(),
            kind: "test".into(),
            source: Source::default(),
            entries: vec![
                Entry::debit(
                    Account::new(AccountKind::ProviderFunds, "stripe", usd()),
                    100,
                ),
                Entry::credit(
                    Account::new(AccountKind::PlatformRevenue, "platform", usd()),
                    99,
                ),
            ],
            reverses: None,
        };
        assert!(matches!(t.validate(), Err(PayoutsError::Unbalanced { .. })));
    }

    #[test]
    fn balance_is_per_currency() {
        let eur = Currency::parse("EUR").expect("a code");
        let t = NewTransaction {
            key: "k".into(),
            kind: "test".into(),
            source: Source::default(),
            entries: vec![
                Entry::debit(
                    Account::new(AccountKind::ProviderFunds, "stripe", usd()),
                    100,
                ),
                Entry::credit(
                    Account::new(AccountKind::PlatformRevenue, "platform", eur),
                    100,
                ),
            ],
            reverses: None,
        };
        assert!(
            t.validate().is_err(),
            "100 USD against 100 EUR does not balance"
        );
    }

    #[test]
    fn non_positive_amounts_are_refused() {
        let t = NewTransaction {
            key: "k".into(),
            kind: "test".into(),
            source: Source::default(),
            entries: vec![
                Entry::debit(Account::new(AccountKind::ProviderFunds, "s", usd()), 0),
                Entry::credit(Account::new(AccountKind::PlatformRevenue, "p", usd()), 0),
            ],
            reverses: None,
        };
        assert!(t.validate().is_err());
    }
}
