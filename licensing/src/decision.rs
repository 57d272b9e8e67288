//! The one authorization decision. Every request — HTTP or Flight, browse or query, analyst or
//! operator — is put to [`decide`] with the credential, the license it names, the usage so far
//! and the clock. It is a pure function, and it refuses by default: a request is allowed only
//! when every check passes, and a denial names the first check that failed.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{AccessMode, License, LicenseStatus, VersionPin};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An analyst of an organization, allowed to use the listed licenses.
    Analyst {
        organization: String,
        licenses: Vec<String>,
    },
    /// A platform operator.
    Admin,
    /// A patient (or caregiver), signed in to their own earnings and consent pages. Refused by
    /// every licensing decision: a patient's credential reads no research data and
    /// administers nothing.
    Patient { patient: String },
}

/// A presented, recognised credential (an API key already matched by its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub principal: Principal,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Credential {
    /// Neither revoked nor expired at `now` (what the decision checks first; also what calls
    /// that answer no data ask).
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none_or(|t| t > now) && self.expires_at.is_none_or(|t| t > now)
    }
}

/// An administrative action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminAction {
    ManageOrganizations,
    ManageLicenses,
    ManageKeys,
    ReadAudit,
    /// Build and retire release versions.
    ManageReleases,
    /// Read the platform's counts (patients, consents, quarantine) and payouts, and reconcile.
    Operate,
}

/// Every kind of request, closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// List the releases, tables and columns the caller may see.
    BrowseCatalog,
    /// Read `columns` of `table` in a release version under a license.
    ReadTable {
        license: String,
        family: String,
        version: u32,
        latest_version: u32,
        /// The consent purpose the release version was built for; `None` when no such
        /// version exists (refused as not covered).
        release_purpose: Option<String>,
        table: String,
        columns: Vec<String>,
    },
    /// Run a query touching `tables` (each with its columns) of a release version.
    RunQuery {
        license: String,
        family: String,
        version: u32,
        latest_version: u32,
        /// The consent purpose the release version was built for; `None` when no such
        /// version exists (refused as not covered).
        release_purpose: Option<String>,
        tables: Vec<(String, Vec<String>)>,
        row_level: bool,
    },
    /// See one license's terms, status, usage and remaining quota.
    ViewLicense {
        license: String,
    },
    Admin(AdminAction),
    /// List, issue or revoke the API keys of `organization` (an analyst manages their own
    /// organization's keys; operators manage every key).
    ManageOwnKeys {
        organization: String,
    },
}

/// Usage so far under the license (from the metering store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub queries_last_minute: u32,
    pub queries_today: u64,
    pub rows_today: u64,
    pub queries_this_month: u64,
    pub rows_this_month: u64,
}

/// Why a request was refused: a stable code for clients and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NoCredential,
    CredentialExpired,
    CredentialRevoked,
    NotAdmin,
    AdminCannotQuery,
    UnknownLicense,
    LicenseNotBoundToCredential,
    WrongOrganization,
    LicenseNotActive,
    OutsideTerm,
    ReleaseNotCovered,
    VersionNotCovered,
    PurposeNotCovered,
    TableNotLicensed,
    ColumnNotLicensed,
    RowLevelNotAllowed,
    RateLimited,
    QuotaExceeded,
    PatientCredential,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 19] = [
        Reason::NoCredential,
        Reason::CredentialExpired,
        Reason::CredentialRevoked,
        Reason::NotAdmin,
        Reason::AdminCannotQuery,
        Reason::UnknownLicense,
        Reason::LicenseNotBoundToCredential,
        Reason::WrongOrganization,
        Reason::LicenseNotActive,
        Reason::OutsideTerm,
        Reason::ReleaseNotCovered,
        Reason::VersionNotCovered,
        Reason::PurposeNotCovered,
        Reason::TableNotLicensed,
        Reason::ColumnNotLicensed,
        Reason::RowLevelNotAllowed,
        Reason::RateLimited,
        Reason::QuotaExceeded,
        Reason::PatientCredential,
    ];

    /// The stable code clients and the audit log see (the serde name).
    pub fn code(self) -> &'static str {
        match self {
            Reason::NoCredential => "no_credential",
            Reason::CredentialExpired => "credential_expired",
            Reason::CredentialRevoked => "credential_revoked",
            Reason::NotAdmin => "not_admin",
            Reason::AdminCannotQuery => "admin_cannot_query",
            Reason::UnknownLicense => "unknown_license",
            Reason::LicenseNotBoundToCredential => "license_not_bound_to_credential",
            Reason::WrongOrganization => "wrong_organization",
            Reason::LicenseNotActive => "license_not_active",
            Reason::OutsideTerm => "outside_term",
            Reason::ReleaseNotCovered => "release_not_covered",
            Reason::VersionNotCovered => "version_not_covered",
            Reason::PurposeNotCovered => "purpose_not_covered",
            Reason::TableNotLicensed => "table_not_licensed",
            Reason::ColumnNotLicensed => "column_not_licensed",
            Reason::RowLevelNotAllowed => "row_level_not_allowed",
            Reason::RateLimited => "rate_limited",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::PatientCredential => "patient_credential",
        }
    }

    /// What the caller can do about it.
    pub fn message(self) -> &'static str {
        match self {
            Reason::NoCredential => "send an API key as `Authorization: Bearer <key>`",
            Reason::CredentialExpired => {
                "this key has expired: ask your administrator for a new one"
            }
            Reason::CredentialRevoked => {
                "this key was revoked: ask your administrator for a new one"
            }
            Reason::NotAdmin => "this action needs an operator credential",
            Reason::AdminCannotQuery => {
                "operator credentials do not read data: use an analyst key under a license"
            }
            Reason::UnknownLicense => "no such license: list yours at /v1/licenses",
            Reason::LicenseNotBoundToCredential => "this key is not bound to that license",
            Reason::WrongOrganization => "that license belongs to another organization",
            Reason::LicenseNotActive => {
                "the license is not active (draft, signed, suspended, expired or terminated)"
            }
            Reason::OutsideTerm => "the license's term has not started or has ended",
            Reason::ReleaseNotCovered => {
                "the license does not cover that release (or there is no such release): GET /v1/releases lists yours"
            }
            Reason::PurposeNotCovered => {
                "that release was built for another consent purpose than the license's"
            }
            Reason::VersionNotCovered => "the license covers another version of that release",
            Reason::TableNotLicensed => "the license does not cover that table",
            Reason::ColumnNotLicensed => "the license does not cover one of the columns asked for",
            Reason::RowLevelNotAllowed => "the license is aggregate-only: ask for aggregates",
            Reason::RateLimited => "too many queries this minute: retry later",
            Reason::QuotaExceeded => "the license's daily or monthly quota is used up",
            Reason::PatientCredential => {
                "a patient's sign-in reaches only their own earnings and consent pages"
            }
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "reason")]
pub enum Decision {
    Allow,
    Deny(Reason),
}

/// Decides a request. `license` is the license the request names, looked up by the caller
/// (`None` when the request names none or it does not exist).
pub fn decide(
    request: &Request,
    credential: Option<&Credential>,
    license: Option<&License>,
    usage: &Usage,
    now: DateTime<Utc>,
) -> Decision {
    match check(request, credential, license, usage, now) {
        Ok(()) => Decision::Allow,
        Err(r) => Decision::Deny(r),
    }
}

fn check(
    request: &Request,
    credential: Option<&Credential>,
    license: Option<&License>,
    usage: &Usage,
    now: DateTime<Utc>,
) -> Result<(), Reason> {
    let c = credential.ok_or(Reason::NoCredential)?;
    if c.revoked_at.is_some_and(|t| t <= now) {
        return Err(Reason::CredentialRevoked);
    }
    if c.expires_at.is_some_and(|t| t <= now) {
        return Err(Reason::CredentialExpired);
    }
    let (organization, bound) = match (&c.principal, request) {
        (Principal::Admin, Request::Admin(_) | Request::ManageOwnKeys { .. }) => return Ok(()),
        (Principal::Admin, Request::BrowseCatalog | Request::ViewLicense { .. }) => {
            return Ok(());
        }
        (Principal::Admin, _) => return Err(Reason::AdminCannotQuery),
        (Principal::Patient { .. }, _) => return Err(Reason::PatientCredential),
        (Principal::Analyst { .. }, Request::Admin(_)) => return Err(Reason::NotAdmin),
        (Principal::Analyst { .. }, Request::BrowseCatalog) => return Ok(()),
        (
            Principal::Analyst { organization, .. },
            Request::ManageOwnKeys {
                organization: theirs,
            },
        ) => {
            return if organization == theirs {
                Ok(())
            } else {
                Err(Reason::WrongOrganization)
            };
        }
        (
            Principal::Analyst {
                organization,
                licenses,
            },
            _,
        ) => (organization, licenses),
    };
    let (license_id, family, version, latest, purpose, tables, row_level) = match request {
        Request::ReadTable {
            license,
            family,
            version,
            latest_version,
            release_purpose,
            table,
            columns,
        } => (
            license,
            family,
            *version,
            *latest_version,
            release_purpose,
            vec![(table.clone(), columns.clone())],
            true,
        ),
        Request::RunQuery {
            license,
            family,
            version,
            latest_version,
            release_purpose,
            tables,
            row_level,
        } => (
            license,
            family,
            *version,
            *latest_version,
            release_purpose,
            tables.clone(),
            *row_level,
        ),
        Request::ViewLicense { license: id } => {
            // Its own licenses, in any status: an analyst may see why one no longer grants.
            let l = license
                .filter(|l| &l.id == id)
                .ok_or(Reason::UnknownLicense)?;
            if &l.organization != organization {
                return Err(Reason::WrongOrganization);
            }
            if !bound.iter().any(|b| b == id) {
                return Err(Reason::LicenseNotBoundToCredential);
            }
            return Ok(());
        }
        Request::BrowseCatalog | Request::Admin(_) | Request::ManageOwnKeys { .. } => {
            return Err(Reason::NotAdmin);
        }
    };
    let l = license
        .filter(|l| &l.id == license_id)
        .ok_or(Reason::UnknownLicense)?;
    if &l.organization != organization {
        return Err(Reason::WrongOrganization);
    }
    if !bound.iter().any(|b| b == license_id) {
        return Err(Reason::LicenseNotBoundToCredential);
    }
    if l.status != LicenseStatus::Active {
        return Err(Reason::LicenseNotActive);
    }
    if now < l.term_start || now >= l.term_end {
        return Err(Reason::OutsideTerm);
    }
    let Some(purpose) = purpose else {
        return Err(Reason::ReleaseNotCovered);
    };
    match l.releases.get(family) {
        None => return Err(Reason::ReleaseNotCovered),
        Some(VersionPin::Latest) if version != latest => return Err(Reason::VersionNotCovered),
        Some(VersionPin::Pinned(v)) if *v != version => return Err(Reason::VersionNotCovered),
        Some(_) => {}
    }
    // Only patients who consented to the license's purpose may be seen under it.
    if purpose != &l.purpose {
        return Err(Reason::PurposeNotCovered);
    }
    for (table, columns) in &tables {
        let grant = l.tables.get(table).ok_or(Reason::TableNotLicensed)?;
        if !columns.iter().all(|c| grant.allows(c)) {
            return Err(Reason::ColumnNotLicensed);
        }
    }
    if row_level && l.mode == AccessMode::AggregateOnly {
        return Err(Reason::RowLevelNotAllowed);
    }
    let q = &l.quota;
    if usage.queries_last_minute >= q.queries_per_minute {
        return Err(Reason::RateLimited);
    }
    if usage.queries_today >= q.queries_per_day
        || usage.rows_today >= q.rows_per_day
        || usage.queries_this_month >= q.queries_per_month
        || usage.rows_this_month >= q.rows_per_month
    {
        return Err(Reason::QuotaExceeded);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0)
            .single()
            .expect("time")
    }

    fn license() -> License {
        sample_license(now())
    }

    fn analyst() -> Credential {
        Credential {
            id: "key-1".into(),
            principal: Principal::Analyst {
                organization: "acme".into(),
                licenses: vec!["lic-1".into()],
            },
            expires_at: Some(now() + chrono::Duration::days(10)),
            revoked_at: None,
        }
    }

    fn query(table: &str, columns: &[&str], row_level: bool) -> Request {
        Request::RunQuery {
            license: "lic-1".into(),
            family: "nh".into(),
            version: 3,
            latest_version: 3,
            release_purpose: Some("research.natural_history".into()),
            tables: vec![(
                table.into(),
                columns.iter().map(|c| c.to_string()).collect(),
            )],
            row_level,
        }
    }

    fn query_fv(family: &str, version: u32) -> Request {
        Request::RunQuery {
            license: "lic-1".into(),
            family: family.into(),
            version,
            latest_version: 3,
            release_purpose: Some("research.natural_history".into()),
            tables: vec![("person".into(), vec!["person_id".into()])],
            row_level: false,
        }
    }

    /// One row per reason (and the allowed cases): the request, what is changed from the
    /// defaults, and the expected decision.
    #[test]
    fn every_reason() {
        use Reason::*;
        let ok = query("person", &["person_id", "zip"], false);
        type Case = (
            &'static str,
            Request,
            Option<Credential>,
            Option<License>,
            Usage,
            Decision,
        );
        let with = |f: &dyn Fn(&mut License)| {
            let mut l = license();
            f(&mut l);
            Some(l)
        };
        let cred = |f: &dyn Fn(&mut Credential)| {
            let mut c = analyst();
            f(&mut c);
            Some(c)
        };
        let admin = Some(Credential {
            id: "op".into(),
            principal: Principal::Admin,
            expires_at: None,
            revoked_at: None,
        });
        let cases: Vec<Case> = vec![
            (
                "allowed aggregate",
                ok.clone(),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Allow,
            ),
            (
                "browse",
                Request::BrowseCatalog,
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Allow,
            ),
            (
                "admin action",
                Request::Admin(AdminAction::ManageLicenses),
                admin.clone(),
                None,
                Usage::default(),
                Decision::Allow,
            ),
            (
                "no credential",
                ok.clone(),
                None,
                Some(license()),
                Usage::default(),
                Decision::Deny(NoCredential),
            ),
            (
                "expired key",
                ok.clone(),
                cred(&|c| c.expires_at = Some(now())),
                Some(license()),
                Usage::default(),
                Decision::Deny(CredentialExpired),
            ),
            (
                "revoked key",
                ok.clone(),
                cred(&|c| c.revoked_at = Some(now() - chrono::Duration::seconds(1))),
                Some(license()),
                Usage::default(),
                Decision::Deny(CredentialRevoked),
            ),
            (
                "analyst asks admin",
                Request::Admin(AdminAction::ReadAudit),
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Deny(NotAdmin),
            ),
            (
                "analyst manages own organization's keys",
                Request::ManageOwnKeys {
                    organization: "acme".into(),
                },
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Allow,
            ),
            (
                "analyst manages another organization's keys",
                Request::ManageOwnKeys {
                    organization: "globex".into(),
                },
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Deny(WrongOrganization),
            ),
            (
                "operator manages an organization's keys",
                Request::ManageOwnKeys {
                    organization: "acme".into(),
                },
                admin.clone(),
                None,
                Usage::default(),
                Decision::Allow,
            ),
            (
                "analyst builds a release",
                Request::Admin(AdminAction::ManageReleases),
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Deny(NotAdmin),
            ),
            (
                "admin reads data",
                ok.clone(),
                admin.clone(),
                Some(license()),
                Usage::default(),
                Decision::Deny(AdminCannotQuery),
            ),
            (
                "unknown license",
                ok.clone(),
                Some(analyst()),
                None,
                Usage::default(),
                Decision::Deny(UnknownLicense),
            ),
            (
                "another license id",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.id = "lic-2".into()),
                Usage::default(),
                Decision::Deny(UnknownLicense),
            ),
            (
                "wrong organization",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.organization = "globex".into()),
                Usage::default(),
                Decision::Deny(WrongOrganization),
            ),
            (
                "view own suspended license",
                Request::ViewLicense {
                    license: "lic-1".into(),
                },
                Some(analyst()),
                with(&|l| l.status = LicenseStatus::Suspended),
                Usage::default(),
                Decision::Allow,
            ),
            (
                "view another organization's license",
                Request::ViewLicense {
                    license: "lic-1".into(),
                },
                Some(analyst()),
                with(&|l| l.organization = "globex".into()),
                Usage::default(),
                Decision::Deny(WrongOrganization),
            ),
            (
                "view an unknown license",
                Request::ViewLicense {
                    license: "lic-9".into(),
                },
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(UnknownLicense),
            ),
            (
                "view a license the key is not bound to",
                Request::ViewLicense {
                    license: "lic-1".into(),
                },
                cred(&|c| {
                    c.principal = Principal::Analyst {
                        organization: "acme".into(),
                        licenses: vec![],
                    }
                }),
                Some(license()),
                Usage::default(),
                Decision::Deny(LicenseNotBoundToCredential),
            ),
            (
                "operator views a license",
                Request::ViewLicense {
                    license: "lic-1".into(),
                },
                admin.clone(),
                Some(license()),
                Usage::default(),
                Decision::Allow,
            ),
            (
                "key not bound",
                ok.clone(),
                cred(&|c| {
                    c.principal = Principal::Analyst {
                        organization: "acme".into(),
                        licenses: vec![],
                    }
                }),
                Some(license()),
                Usage::default(),
                Decision::Deny(LicenseNotBoundToCredential),
            ),
            (
                "suspended",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.status = LicenseStatus::Suspended),
                Usage::default(),
                Decision::Deny(LicenseNotActive),
            ),
            (
                "signed, not active",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.status = LicenseStatus::Signed),
                Usage::default(),
                Decision::Deny(LicenseNotActive),
            ),
            (
                "terminated",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.status = LicenseStatus::Terminated),
                Usage::default(),
                Decision::Deny(LicenseNotActive),
            ),
            (
                "term over",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.term_end = now()),
                Usage::default(),
                Decision::Deny(OutsideTerm),
            ),
            (
                "term not begun",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.term_start = now() + chrono::Duration::days(1)),
                Usage::default(),
                Decision::Deny(OutsideTerm),
            ),
            (
                "other family",
                query_fv("other", 3),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(ReleaseNotCovered),
            ),
            (
                "no such release version",
                {
                    let mut r = query_fv("nh", 3);
                    if let Request::RunQuery {
                        release_purpose, ..
                    } = &mut r
                    {
                        *release_purpose = None;
                    }
                    r
                },
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(ReleaseNotCovered),
            ),
            (
                "release built for another purpose",
                ok.clone(),
                Some(analyst()),
                with(&|l| l.purpose = "commercial.licensing".into()),
                Usage::default(),
                Decision::Deny(PurposeNotCovered),
            ),
            (
                "old version under latest",
                query_fv("nh", 2),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(VersionNotCovered),
            ),
            (
                "pinned version",
                ok.clone(),
                Some(analyst()),
                with(&|l| {
                    l.releases.insert("nh".into(), VersionPin::Pinned(2));
                }),
                Usage::default(),
                Decision::Deny(VersionNotCovered),
            ),
            (
                "unlicensed table",
                query("death", &["person_id"], false),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(TableNotLicensed),
            ),
            (
                "unlicensed column",
                query("measurement", &["person_id", "unit_source_value"], false),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(ColumnNotLicensed),
            ),
            (
                "licensed columns",
                query("measurement", &["value_as_number"], false),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Allow,
            ),
            (
                "row level on aggregate-only",
                query("person", &["person_id"], true),
                Some(analyst()),
                Some(license()),
                Usage::default(),
                Decision::Deny(RowLevelNotAllowed),
            ),
            (
                "row level licensed",
                query("person", &["person_id"], true),
                Some(analyst()),
                with(&|l| l.mode = AccessMode::RowLevel),
                Usage::default(),
                Decision::Allow,
            ),
            (
                "rate limit",
                ok.clone(),
                Some(analyst()),
                Some(license()),
                Usage {
                    queries_last_minute: 10,
                    ..Usage::default()
                },
                Decision::Deny(RateLimited),
            ),
            (
                "daily queries",
                ok.clone(),
                Some(analyst()),
                Some(license()),
                Usage {
                    queries_today: 100,
                    ..Usage::default()
                },
                Decision::Deny(QuotaExceeded),
            ),
            (
                "monthly rows",
                ok.clone(),
                Some(analyst()),
                Some(license()),
                Usage {
                    rows_this_month: 10_000_000,
                    ..Usage::default()
                },
                Decision::Deny(QuotaExceeded),
            ),
        ];
        let mut reasons_seen = std::collections::BTreeSet::new();
        for (name, request, credential, license, usage, want) in cases {
            let got = decide(
                &request,
                credential.as_ref(),
                license.as_ref(),
                &usage,
                now(),
            );
            assert_eq!(got, want, "{name}");
            if let Decision::Deny(r) = got {
                reasons_seen.insert(format!("{r:?}"));
                assert!(!r.message().is_empty());
            }
        }
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string)),
                Some(r.code().to_string()),
                "code of {r:?}"
            );
        }
        assert_eq!(
            reasons_seen.len(),
            18,
            "every reason code is exercised: {reasons_seen:?}"
        );
    }
}
