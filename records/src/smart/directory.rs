//! The provider directory: which FHIR endpoints exist and which organizations they serve, read
//! from a FHIR Bundle of `Endpoint` and `Organization` resources, the form in which certified EHR
//! vendors publish their patient-access endpoints (45 CFR 170.404(b)(2)).
//!
//! Kept: active endpoints whose connection type is `hl7-fhir-rest` and whose address is HTTPS
//! (plain HTTP only on a loopback address, for tests and local servers), each with every
//! organization that names it (`Organization.endpoint`) or that it names
//! (`Endpoint.managingOrganization`). One directory entry per (endpoint, organization): a patient
//! looks for their hospital, not for a server.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::identity::str_at;
use crate::{RecordsError, Result};

/// One provider a patient can pick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectoryEntry {
    /// `<Endpoint.id>/<Organization.id>`.
    pub id: String,
    pub organization: String,
    pub fhir_base: String,
    pub city: Option<String>,
    pub region: Option<String>,
}

/// What a directory bundle held.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectoryReport {
    pub entries: Vec<DirectoryEntry>,
    /// Endpoints left out, with why (by `Endpoint.id`; no address is secret, but a refusal
    /// names only what is needed to fix the bundle).
    pub skipped: Vec<(String, String)>,
}

/// Whether `url` may be a FHIR base: HTTPS, or HTTP on a loopback address.
pub fn acceptable_base(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// Reads a directory bundle.
pub fn parse(bundle: &[u8]) -> Result<DirectoryReport> {
    let v: Value = serde_json::from_slice(bundle).map_err(|e| {
        RecordsError::Invalid(format!(
            "the directory is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if str_at(&v, &["resourceType"]) != Some("Bundle") {
        return Err(RecordsError::Invalid(
            "the directory must be a FHIR Bundle of Endpoint and Organization resources".into(),
        ));
    }
    let mut endpoints: BTreeMap<String, &Value> = BTreeMap::new();
    let mut organizations: BTreeMap<String, &Value> = BTreeMap::new();
    for entry in v
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(r) = entry.get("resource") else {
            continue;
        };
        let Some(id) = str_at(r, &["id"]) else {
            continue;
        };
        match str_at(r, &["resourceType"]) {
            Some("Endpoint") => {
                endpoints.insert(id.to_string(), r);
            }
            Some("Organization") => {
                organizations.insert(id.to_string(), r);
            }
            _ => {}
        }
    }
    let reference_id = |r: &Value, kind: &str| -> Option<String> {
        str_at(r, &["reference"]).and_then(|s| {
            s.rsplit_once(&format!("{kind}/"))
                .map(|(_, id)| id.to_string())
        })
    };
    let mut report = DirectoryReport::default();
    for (eid, e) in &endpoints {
        let status = str_at(e, &["status"]).unwrap_or("");
        if status != "active" {
            report
                .skipped
                .push((eid.clone(), format!("status is `{status}`, not active")));
            continue;
        }
        if str_at(e, &["connectionType", "code"]) != Some("hl7-fhir-rest") {
            report
                .skipped
                .push((eid.clone(), "connectionType is not hl7-fhir-rest".into()));
            continue;
        }
        let Some(address) = str_at(e, &["address"]) else {
            report.skipped.push((eid.clone(), "no address".into()));
            continue;
        };
        if !acceptable_base(address) {
            report.skipped.push((
                eid.clone(),
                "the address is not HTTPS (tokens would travel in clear)".into(),
            ));
            continue;
        }
        let mut orgs: Vec<&str> = organizations
            .iter()
            .filter(|(_, o)| {
                o.get("endpoint")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| {
                        refs.iter()
                            .any(|r| reference_id(r, "Endpoint").as_deref() == Some(eid))
                    })
            })
            .map(|(id, _)| id.as_str())
            .collect();
        if let Some(m) = e
            .get("managingOrganization")
            .and_then(|r| reference_id(r, "Organization"))
            && organizations.contains_key(&m)
            && !orgs.contains(&m.as_str())
        {
            orgs.push(
                organizations
                    .get_key_value(&m)
                    .map_or("", |(k, _)| k.as_str()),
            );
        }
        if orgs.is_empty() {
            report
                .skipped
                .push((eid.clone(), "no Organization names this endpoint".into()));
            continue;
        }
        for oid in orgs {
            let o = organizations[oid];
            let address = o
                .get("address")
                .and_then(|a| a.get(0))
                .unwrap_or(&Value::Null);
            report.entries.push(DirectoryEntry {
                id: format!("{eid}/{oid}"),
                organization: str_at(o, &["name"])
                    .or_else(|| str_at(e, &["name"]))
                    .unwrap_or(oid)
                    .to_string(),
                fhir_base: address_trimmed(str_at(e, &["address"]).unwrap_or("")),
                city: str_at(address, &["city"]).map(str::to_string),
                region: str_at(address, &["state"]).map(str::to_string),
            });
        }
    }
    Ok(report)
}

fn address_trimmed(a: &str) -> String {
    a.trim_end_matches('/').to_string()
}
