//! Patients' accounts: who may sign in to the patients' pages, for which patients, and how.
//!
//! - An **account** is a person: the patient themself or a caregiver. Its e-mail address and
//!   name are sealed like every identified value; a keyed blind index of the normalized address
//!   finds it again. An account **acts for** one or more patients with a relation (`self`,
//!   `parent`, `guardian`, `spouse`, `child`, `other`), recorded with who linked it.
//! - Accounts are linked to patients only by an operator, the way ingest already knows them (a
//!   patient's internal id, or an identifier the ingest matched on): `tessera patients invite`
//!   makes an invitation link; the operator's older patient sign-in link makes the patient's own
//!   (`self`) account the first time it is used. Nobody links themself to a record by typing an
//!   identifier: knowing a record number is not proof of being that person.
//! - **Sign-in links** (an invitation, or a link e-mailed on request) are single use and
//!   short-lived; only their keyed hash is stored, and redeeming one is one conditional
//!   `UPDATE`, so a link cannot be used twice even by two requests at once.
//! - **Sessions** are bound to an account and to the patient it currently acts for; the
//!   cookie holds a random token whose keyed hash is stored. A session ends at
//!   [`SESSION_LIFETIME`] after sign-in, after [`SESSION_IDLE`] without a request, or when
//!   revoked (from the account page, or all at once). The times are a choice: short enough
//!   that a health record left open on a shared computer closes itself soon, long enough to
//!   answer a survey without signing in again.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::Catalog;
use crate::error::{CatalogError, Result};
use crate::ingest::random_bytes;
use crate::store::{LinkRow, PasskeyRow, SessionRow};

/// A session's longest life from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::hours(12);
/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::minutes(60);
/// How long an e-mailed sign-in link works.
pub const EMAIL_LINK_LIFETIME: Duration = Duration::minutes(15);
/// How long an operator's invitation works.
pub const INVITATION_LIFETIME: Duration = Duration::days(7);
/// E-mailed links per account per hour; more requests are answered alike but send nothing.
pub const EMAIL_LINKS_PER_HOUR: i64 = 5;
/// Last-seen times are written at most this often (every request reads the session).
const TOUCH_EVERY: Duration = Duration::seconds(60);

/// A session as the pages see it.
pub type Session = SessionRow;
/// A patient an account acts for.
pub type Link = LinkRow;
/// A passkey of an account, as listed.
pub type PasskeyListing = PasskeyRow;

/// How an account stands to a patient it acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The patient themself.
    #[serde(rename = "self")]
    Own,
    Parent,
    Guardian,
    Spouse,
    Child,
    Other,
}

impl Relation {
    pub const ALL: [Relation; 6] = [
        Relation::Own,
        Relation::Parent,
        Relation::Guardian,
        Relation::Spouse,
        Relation::Child,
        Relation::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Own => "self",
            Relation::Parent => "parent",
            Relation::Guardian => "guardian",
            Relation::Spouse => "spouse",
            Relation::Child => "child",
            Relation::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Result<Relation> {
        Relation::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| {
                CatalogError::invalid(format!(
                    "relation `{}`: use one of self, parent, guardian, spouse, child, other",
                    s.escape_debug()
                ))
            })
    }

    /// How the pages describe the account holder: "you" or "a parent".
    pub fn describe(self) -> &'static str {
        match self {
            Relation::Own => "you",
            Relation::Parent => "a parent",
            Relation::Guardian => "a legal guardian",
            Relation::Spouse => "a spouse or partner",
            Relation::Child => "an adult child",
            Relation::Other => "a caregiver",
        }
    }
}

/// How a session was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    /// A link e-mailed on request.
    EmailLink,
    /// An operator's invitation link.
    Invitation,
    /// The operator-issued patient sign-in link (`tessera payouts sign-in`).
    OperatorLink,
    /// A passkey (WebAuthn).
    Passkey,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInMethod::EmailLink => "email_link",
            SignInMethod::Invitation => "invitation",
            SignInMethod::OperatorLink => "operator_link",
            SignInMethod::Passkey => "passkey",
        }
    }

    pub fn parse(s: &str) -> Option<SignInMethod> {
        [
            SignInMethod::EmailLink,
            SignInMethod::Invitation,
            SignInMethod::OperatorLink,
            SignInMethod::Passkey,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }

    pub fn describe(self) -> &'static str {
        match self {
            SignInMethod::EmailLink => "e-mailed link",
            SignInMethod::Invitation => "invitation link",
            SignInMethod::OperatorLink => "sign-in link from Tessera",
            SignInMethod::Passkey => "passkey",
        }
    }
}

/// The sealed part of an account.
#[derive(Default, Serialize, Deserialize)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// An account, opened.
#[derive(Clone)]
pub struct Account {
    pub account_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: String,
    /// The patients it acts for, oldest link first.
    pub patients: Vec<Link>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("account_id", &self.account_id)
            .field("has_email", &self.email.is_some())
            .field("patients", &self.patients.len())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// The relation with which this account acts for `patient_id`, if it does.
    pub fn relation_to(&self, patient_id: &str) -> Option<Relation> {
        self.patients
            .iter()
            .find(|l| l.patient_id == patient_id)
            .and_then(|l| Relation::parse(&l.relation).ok())
    }
}

/// What asking for an e-mailed link came to. The page answers all three alike, so that it
/// does not tell a stranger which addresses have accounts.
#[derive(Debug)]
pub enum EmailLink {
    /// Send this token to the address.
    Send { account_id: String, token: String },
    /// No account has this address.
    NoAccount,
    /// Too many links were asked for this hour.
    TooMany,
}

/// Trimmed and lowercased; refuses what is not an address (`local@domain.tld`, no spaces,
/// at most 254 characters).
pub fn normalize_email(s: &str) -> Result<String> {
    let e = s.trim().to_lowercase();
    let ok = e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && match e.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if ok {
        Ok(e)
    } else {
        Err(CatalogError::invalid(
            "e-mail address: give one such as name@example.org",
        ))
    }
}

fn account_aad(account_id: &str) -> Vec<u8> {
    format!("accounts/{account_id}").into_bytes()
}

fn text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| CatalogError::internal("a stored time does not parse"))
}

fn new_id(prefix: &str) -> Result<String> {
    Ok(format!("{prefix}_{}", hex::encode(random_bytes::<10>()?)))
}

/// A fresh secret for a link or a session cookie: 256 bits, hex.
fn new_token() -> Result<String> {
    Ok(hex::encode(random_bytes::<32>()?))
}

/// Whether a session is in force at `now`.
pub fn session_live(s: &Session, now: DateTime<Utc>) -> bool {
    let (Ok(expires), Ok(seen)) = (parse_time(&s.expires_at), parse_time(&s.last_seen_at)) else {
        return false;
    };
    s.revoked_at.is_none() && now < expires && now < seen + SESSION_IDLE
}

impl Catalog {
    fn token_hash(&self, kind: &str, token: &str) -> String {
        self.keyring.keyed_hash(kind, token.as_bytes())
    }

    fn email_index(&self, email: &str) -> String {
        self.keyring.blind_index(&["account-email", email])
    }

    async fn new_account(&self, email: Option<&str>) -> Result<String> {
        let account_id = new_id("acc")?;
        let profile = Profile {
            email: email.map(str::to_string),
            name: None,
        };
        let sealed = self.keyring.seal(
            &serde_json::to_vec(&profile)
                .map_err(|e| CatalogError::internal(format!("sealing an account: {e}")))?,
            &account_aad(&account_id),
        )?;
        let index = email.map(|e| self.email_index(e));
        self.store
            .insert_account(&account_id, index.as_deref(), &sealed)
            .await?;
        Ok(account_id)
    }

    /// Opens an account with the patients it acts for.
    pub async fn account(&self, account_id: &str) -> Result<Account> {
        let (sealed, created_at) =
            self.store
                .account(account_id)
                .await?
                .ok_or_else(|| CatalogError::NotFound {
                    what: format!("account {account_id}"),
                    hint: "it may have been deleted".into(),
                })?;
        let profile: Profile =
            serde_json::from_slice(&self.keyring.open(&sealed, &account_aad(account_id))?)
                .map_err(|_| CatalogError::internal("a stored account does not parse"))?;
        Ok(Account {
            account_id: account_id.to_string(),
            email: profile.email,
            name: profile.name,
            created_at,
            patients: self.store.account_links(account_id).await?,
        })
    }

    /// Sets or changes an account's e-mail address (where its sign-in links go). Refused when
    /// another account has it.
    pub async fn set_account_email(&self, account_id: &str, email: &str) -> Result<()> {
        let email = normalize_email(email)?;
        let index = self.email_index(&email);
        if let Some(other) = self.store.account_by_email_index(&index).await?
            && other != account_id
        {
            return Err(CatalogError::invalid(
                "another account already uses this e-mail address",
            ));
        }
        let mut account = self.account(account_id).await?;
        account.email = Some(email);
        let sealed = self.keyring.seal(
            &serde_json::to_vec(&Profile {
                email: account.email,
                name: account.name,
            })
            .map_err(|e| CatalogError::internal(format!("sealing an account: {e}")))?,
            &account_aad(account_id),
        )?;
        self.store
            .update_account(account_id, Some(&index), &sealed)
            .await
    }

    /// An operator invites someone to act for a stored patient: the account of `email` (made
    /// if new; without an e-mail, the patient's own account for `self`, else a new one) is
    /// linked with `relation`, and a single-use invitation link is made. Answers
    /// (account id, link token).
    pub async fn invite(
        &self,
        patient_id: &str,
        relation: Relation,
        email: Option<&str>,
        actor: &str,
    ) -> Result<(String, String)> {
        if !self.store.patient_exists(patient_id).await? {
            return Err(CatalogError::NotFound {
                what: format!("patient {patient_id}"),
                hint: "see `tessera patients list` for internal ids".into(),
            });
        }
        let email = email.map(normalize_email).transpose()?;
        let account_id = match &email {
            Some(e) => match self
                .store
                .account_by_email_index(&self.email_index(e))
                .await?
            {
                Some(id) => id,
                None => self.new_account(Some(e)).await?,
            },
            None if relation == Relation::Own => {
                match self
                    .store
                    .own_accounts(patient_id)
                    .await?
                    .into_iter()
                    .next()
                {
                    Some(id) => id,
                    None => self.new_account(None).await?,
                }
            }
            None => self.new_account(None).await?,
        };
        self.store
            .link_account(&account_id, patient_id, relation.as_str(), actor)
            .await?;
        let token = new_token()?;
        self.store
            .insert_sign_in_link(
                &self.token_hash("sign-in-link", &token),
                &account_id,
                SignInMethod::Invitation.as_str(),
                &text(Utc::now() + INVITATION_LIFETIME),
            )
            .await?;
        tracing::info!(account = %account_id, relation = relation.as_str(), "invitation made");
        Ok((account_id, token))
    }

    /// The stored patient an identifier (system and value, as a source gave it) belongs to,
    /// matched the way ingest matches patients (the identifier's blind index). `None` when no
    /// patient or more than one has it.
    pub async fn find_patient_by_identifier(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<String>> {
        if system.trim().is_empty() || value.trim().is_empty() {
            return Err(CatalogError::invalid(
                "an identifier is SYSTEM|VALUE, such as http://hospital.example.org/mrn|12345",
            ));
        }
        let key = self.keyring.blind_index(&["identifier", system, value]);
        let mut tx = self.store.begin().await?;
        let found = tx.patients_by_keys(&[key]).await?;
        drop(tx);
        let mut ids: Vec<String> = found.into_iter().map(|(_, p)| p).collect();
        ids.sort();
        ids.dedup();
        Ok(if ids.len() == 1 { ids.pop() } else { None })
    }

    /// The patient's own account, made (and linked as `self` by `actor`) the first time: for
    /// the operator's patient sign-in link.
    pub async fn own_account(&self, patient_id: &str, actor: &str) -> Result<String> {
        if let Some(id) = self
            .store
            .own_accounts(patient_id)
            .await?
            .into_iter()
            .next()
        {
            return Ok(id);
        }
        let id = self.new_account(None).await?;
        self.store
            .link_account(&id, patient_id, Relation::Own.as_str(), actor)
            .await?;
        Ok(id)
    }

    /// A sign-in link for the account of an e-mail address, if there is one and it has not
    /// asked for too many this hour.
    pub async fn email_sign_in_link(&self, email: &str) -> Result<EmailLink> {
        let email = normalize_email(email)?;
        let Some(account_id) = self
            .store
            .account_by_email_index(&self.email_index(&email))
            .await?
        else {
            return Ok(EmailLink::NoAccount);
        };
        let since = text(Utc::now() - Duration::hours(1));
        if self.store.count_sign_in_links(&account_id, &since).await? >= EMAIL_LINKS_PER_HOUR {
            return Ok(EmailLink::TooMany);
        }
        let token = new_token()?;
        self.store
            .insert_sign_in_link(
                &self.token_hash("sign-in-link", &token),
                &account_id,
                SignInMethod::EmailLink.as_str(),
                &text(Utc::now() + EMAIL_LINK_LIFETIME),
            )
            .await?;
        Ok(EmailLink::Send { account_id, token })
    }

    /// Uses a sign-in link once: the account and how it signed in, or `None` when the link is
    /// unknown, used or expired.
    pub async fn redeem_sign_in_link(&self, token: &str) -> Result<Option<(String, SignInMethod)>> {
        let used = self
            .store
            .redeem_sign_in_link(&self.token_hash("sign-in-link", token), &text(Utc::now()))
            .await?;
        Ok(used.map(|(account, kind)| {
            (
                account,
                SignInMethod::parse(&kind).unwrap_or(SignInMethod::EmailLink),
            )
        }))
    }

    /// Starts a session for an account, acting for its own record if it has one, else for
    /// the first patient it was linked to. Answers the cookie's token and the session.
    pub async fn start_session(
        &self,
        account_id: &str,
        method: SignInMethod,
        label: &str,
    ) -> Result<(String, Session)> {
        let links = self.store.account_links(account_id).await?;
        let patient = links
            .iter()
            .find(|l| l.relation == Relation::Own.as_str())
            .or(links.first())
            .ok_or_else(|| {
                CatalogError::invalid(
                    "this account acts for no patient yet: ask the study team for an invitation",
                )
            })?;
        let now = Utc::now();
        let token = new_token()?;
        let label: String = label.chars().filter(|c| !c.is_control()).take(60).collect();
        let session = Session {
            session_id: new_id("ses")?,
            account_id: account_id.to_string(),
            patient_id: patient.patient_id.clone(),
            method: method.as_str().to_string(),
            label: if label.is_empty() {
                "a browser".into()
            } else {
                label
            },
            created_at: text(now),
            expires_at: text(now + SESSION_LIFETIME),
            last_seen_at: text(now),
            revoked_at: None,
        };
        self.store
            .insert_session(&session, &self.token_hash("session", &token))
            .await?;
        tracing::info!(session = %session.session_id, method = method.as_str(), "session started");
        Ok((token, session))
    }

    /// The live session of a cookie's token, its last-seen time brought up to date; `None`
    /// when unknown, revoked, expired or idle too long.
    pub async fn session(&self, token: &str) -> Result<Option<Session>> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let Some(mut s) = self
            .store
            .session_by_token(&self.token_hash("session", token))
            .await?
        else {
            return Ok(None);
        };
        let now = Utc::now();
        if !session_live(&s, now) {
            return Ok(None);
        }
        // The link between account and patient may have been removed since sign-in.
        let links = self.store.account_links(&s.account_id).await?;
        if !links.iter().any(|l| l.patient_id == s.patient_id) {
            return Ok(None);
        }
        if parse_time(&s.last_seen_at)? + TOUCH_EVERY <= now {
            s.last_seen_at = text(now);
            self.store
                .touch_session(&s.session_id, &s.last_seen_at)
                .await?;
        }
        Ok(Some(s))
    }

    /// An account's sessions, newest first (live and ended).
    pub async fn sessions(&self, account_id: &str) -> Result<Vec<Session>> {
        self.store.sessions_of(account_id).await
    }

    /// Ends one of an account's sessions, or all of them; answers how many were live.
    pub async fn revoke_sessions(&self, account_id: &str, session_id: Option<&str>) -> Result<u64> {
        self.store
            .revoke_sessions(account_id, session_id, &text(Utc::now()))
            .await
    }

    /// The WebAuthn user handle of an account: 16 bytes of a keyed hash of its id (the same
    /// for every passkey of the account, and meaningless without the master key).
    pub fn webauthn_user_handle(&self, account_id: &str) -> [u8; 16] {
        let h = self
            .keyring
            .keyed_hash("webauthn-user", account_id.as_bytes());
        let mut out = [0u8; 16];
        if let Ok(bytes) = hex::decode(&h[..32]) {
            out.copy_from_slice(&bytes);
        }
        out
    }

    /// Records a passkey an account registered (`credential` is the relying party's record, as
    /// the WebAuthn library serializes it).
    pub async fn add_passkey(
        &self,
        account_id: &str,
        credential_id: &str,
        credential: &str,
        label: &str,
    ) -> Result<()> {
        let handle = hex::encode(self.webauthn_user_handle(account_id));
        let label: String = label.chars().filter(|c| !c.is_control()).take(60).collect();
        self.store
            .insert_passkey(credential_id, account_id, &handle, credential, &label)
            .await
    }

    /// The account and stored credential of a passkey, if its user handle is the one the
    /// authenticator returned (`None` for an unknown credential or a mismatched handle).
    pub async fn passkey_for_sign_in(
        &self,
        credential_id: &str,
        user_handle: &[u8],
    ) -> Result<Option<(String, String)>> {
        let Some((account, handle, credential)) = self.store.passkey(credential_id).await? else {
            return Ok(None);
        };
        if hex::encode(user_handle) != handle {
            return Ok(None);
        }
        Ok(Some((account, credential)))
    }

    /// Stores a passkey's updated record (its signature counter) after a sign-in.
    pub async fn passkey_used(&self, credential_id: &str, credential: &str) -> Result<()> {
        self.store.update_passkey(credential_id, credential).await
    }

    pub async fn passkeys(&self, account_id: &str) -> Result<Vec<PasskeyListing>> {
        self.store.passkeys_of(account_id).await
    }

    /// Removes one of an account's passkeys; `false` if it has no such passkey.
    pub async fn remove_passkey(&self, account_id: &str, credential_id: &str) -> Result<bool> {
        self.store.delete_passkey(account_id, credential_id).await
    }

    /// Switches a session to act for another patient of its account.
    pub async fn act_for(&self, session: &Session, patient_id: &str) -> Result<()> {
        let links = self.store.account_links(&session.account_id).await?;
        if !links.iter().any(|l| l.patient_id == patient_id) {
            return Err(CatalogError::NotFound {
                what: "that patient among this account's".into(),
                hint: "an account acts only for the patients it was invited for".into(),
            });
        }
        self.store
            .set_session_patient(&session.session_id, patient_id)
            .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{IngestOptions, Keyring, NoProgress};

    /// A catalog with the two shipped FHIR patients.
    pub(crate) async fn two_patients() -> (tempfile::TempDir, Catalog, String, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let catalog = Catalog::open(&url, Keyring::new(&[9; 32], &[]))
            .await
            .expect("catalog");
        let fhir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/fhir");
        catalog
            .ingest(&[fhir], &IngestOptions::default(), &NoProgress)
            .await
            .expect("ingest");
        let ids: Vec<String> = catalog
            .list_patients(10, 0)
            .await
            .expect("patients")
            .into_iter()
            .map(|p| p.patient_id)
            .collect();
        assert_eq!(ids.len(), 2);
        (dir, catalog, ids[0].clone(), ids[1].clone())
    }

    #[tokio::test]
    async fn links_work_once_and_sessions_act_only_for_linked_patients() {
        let (_dir, c, a, b) = two_patients().await;
        let (acc, token) = c
            .invite(&a, Relation::Own, Some("Ada@example.org"), "test")
            .await
            .expect("invite");
        let (used, method) = c
            .redeem_sign_in_link(&token)
            .await
            .expect("redeem")
            .expect("a fresh link works");
        assert_eq!(
            (used.as_str(), method),
            (acc.as_str(), SignInMethod::Invitation)
        );
        assert!(
            c.redeem_sign_in_link(&token)
                .await
                .expect("again")
                .is_none(),
            "once only"
        );
        // The same address finds the same account; a caregiver link adds a patient to it.
        let (again, _) = c
            .invite(&b, Relation::Parent, Some("ada@example.org"), "test")
            .await
            .expect("invite");
        assert_eq!(again, acc);
        let account = c.account(&acc).await.expect("account");
        assert_eq!(account.email.as_deref(), Some("ada@example.org"));
        assert_eq!(account.relation_to(&a), Some(Relation::Own));
        assert_eq!(account.relation_to(&b), Some(Relation::Parent));
        let (cookie, session) = c
            .start_session(&acc, SignInMethod::EmailLink, "Chrome on Linux")
            .await
            .expect("session");
        assert_eq!(
            session.patient_id, a,
            "a session acts for the account's own record first"
        );
        assert_eq!(
            c.session(&cookie)
                .await
                .expect("read")
                .map(|s| s.session_id),
            Some(session.session_id.clone())
        );
        c.act_for(&session, &b).await.expect("a linked patient");
        assert_eq!(
            c.session(&cookie)
                .await
                .expect("read")
                .map(|s| s.patient_id),
            Some(b.clone())
        );
        // Another account cannot act for A.
        let (other, _) = c
            .invite(&b, Relation::Own, Some("bo@example.org"), "test")
            .await
            .expect("invite");
        let (_, theirs) = c
            .start_session(&other, SignInMethod::EmailLink, "x")
            .await
            .expect("session");
        assert!(c.act_for(&theirs, &a).await.is_err());
        // Revoked: the cookie signs in no more.
        assert_eq!(
            c.revoke_sessions(&acc, Some(&session.session_id))
                .await
                .expect("revoke"),
            1
        );
        assert!(c.session(&cookie).await.expect("read").is_none());
        assert!(c.session("not-a-token").await.expect("read").is_none());
        // E-mailed links: unknown addresses and too many requests send nothing.
        assert!(matches!(
            c.email_sign_in_link("nobody@example.org")
                .await
                .expect("ask"),
            EmailLink::NoAccount
        ));
        let mut sent = 0;
        for _ in 0..EMAIL_LINKS_PER_HOUR + 2 {
            if let EmailLink::Send { .. } =
                c.email_sign_in_link("ADA@example.org").await.expect("ask")
            {
                sent += 1;
            }
        }
        // The invitations count towards the hour too (two of them went to this account).
        assert_eq!(sent, EMAIL_LINKS_PER_HOUR - 2);
        // An identifier finds its patient the way ingest matched it.
        assert!(
            c.find_patient_by_identifier("https://github.com/synthetichealth/synthea", "no-such")
                .await
                .expect("find")
                .is_none()
        );
    }

    #[test]
    fn emails_are_normalized_or_refused() {
        assert_eq!(
            normalize_email("  Ada@Example.ORG ").expect("valid"),
            "ada@example.org"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "a b@example.org",
            "a@b@c.org",
            "ada@localhost",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn relations_round_trip() {
        for r in Relation::ALL {
            assert_eq!(Relation::parse(r.as_str()).expect("parses"), r);
        }
        assert!(Relation::parse("neighbour").is_err());
    }

    #[test]
    fn sessions_end_when_idle_expired_or_revoked() {
        let now = Utc::now();
        let mut s = Session {
            session_id: "ses_1".into(),
            account_id: "acc_1".into(),
            patient_id: "p".into(),
            method: "email_link".into(),
            label: "test".into(),
            created_at: text(now),
            expires_at: text(now + SESSION_LIFETIME),
            last_seen_at: text(now),
            revoked_at: None,
        };
        assert!(session_live(&s, now));
        assert!(!session_live(&s, now + SESSION_IDLE + Duration::seconds(1)));
        s.last_seen_at = text(now + Duration::hours(11));
        assert!(session_live(
            &s,
            now + Duration::hours(11) + Duration::minutes(30)
        ));
        assert!(!session_live(
            &s,
            now + SESSION_LIFETIME + Duration::seconds(1)
        ));
        s.revoked_at = Some(text(now));
        assert!(!session_live(&s, now));
    }
}
