//! A patient's deletion: their right to erasure, by crypto-shredding.
//!
//! [`Catalog::delete_patient`] first revokes, in the consent registry, every purpose the
//! patient's consent was in force for (so live queries drop them at once: the query service's
//! consent filter asks the registry on every query), then deletes in one transaction every row
//! that holds their data (records, match keys, shares and their views, survey drafts, sessions
//! and the accounts that act for them alone) and empties their identity, and finally destroys
//! their data key in the key vault ([`crate::vault`]): every copy of their rows left anywhere,
//! backups included, no longer opens.
//!
//! Kept, as a tombstone with no identifying content: the patient's random internal id, when and
//! at whose request they were deleted, and their consent history (the record of the lawful
//! basis of what was done with their data before). Release versions already published keep
//! their de-identified rows, filtered out of every query by the consent filter, and later
//! versions are built without them. The payouts ledger (in its own crate) keeps its amounts
//! under the same pseudonymous id.
//!
//! If the process stops between the transaction and the key's destruction, the next
//! [`Catalog::open`] destroys the key of every tombstone the vault still holds.

use chrono::Utc;
use serde::Serialize;

use crate::consent;
use crate::error::{CatalogError, Result};
use crate::ingest;
use crate::store::{ConsentRow, DeletedRows};
use crate::{Catalog, release};

/// What a deletion did.
#[derive(Debug, Clone, Serialize)]
pub struct Deletion {
    pub patient_id: String,
    /// When it was recorded (RFC 3339 UTC).
    pub deleted_at: String,
    /// Rows deleted now (all zero when the patient had already been deleted).
    pub deleted: DeletedRows,
    /// Purposes whose consent was in force and is now revoked.
    pub consents_revoked: Vec<String>,
    /// Whether the patient's data key was destroyed now (false: there was none left).
    pub key_destroyed: bool,
    /// The patient had already been deleted: nothing more was done but destroying any key left.
    pub already: bool,
}

impl Catalog {
    /// Deletes a patient (see the module documentation). `requested_by` is recorded with the
    /// deletion and as the actor of the revocations: `patient`, `caregiver:<relation>` or
    /// `operator`. Deleting a patient already deleted finishes the job and reports `already`.
    pub async fn delete_patient(&self, patient_id: &str, requested_by: &str) -> Result<Deletion> {
        if let Some((deleted_at, _)) = self.store.deletion_of(patient_id).await? {
            let key_destroyed = self.vault.destroy(&[patient_id]).await? > 0;
            return Ok(Deletion {
                patient_id: patient_id.to_string(),
                deleted_at,
                deleted: DeletedRows::default(),
                consents_revoked: Vec::new(),
                key_destroyed,
                already: true,
            });
        }
        self.require_patient(patient_id).await?;
        let now = Utc::now();
        let at = consent::timestamp(now);
        // Every purpose whose latest event is a grant (in force, or yet to start) is revoked.
        let mut latest: std::collections::BTreeMap<String, ConsentRow> = Default::default();
        for e in self.consent_history(patient_id).await? {
            match latest.get(&e.purpose) {
                Some(l) if l.seq >= e.seq => {}
                _ => {
                    latest.insert(e.purpose.clone(), e);
                }
            }
        }
        let mut revocations = Vec::new();
        for (purpose, last) in latest {
            if last.action == "grant" {
                revocations.push(ConsentRow {
                    event_id: hex::encode(ingest::random_bytes::<16>()?),
                    patient_id: patient_id.to_string(),
                    purpose,
                    action: "revoke".into(),
                    scope: "all".into(),
                    valid_from: at.clone(),
                    valid_until: None,
                    recorded_at: at.clone(),
                    seq: 0,
                    actor: requested_by.to_string(),
                });
            }
        }
        let deleted = self
            .store
            .delete_patient(patient_id, requested_by, &mut revocations)
            .await?
            .ok_or_else(|| CatalogError::NotFound {
                what: format!("patient {patient_id}"),
                hint: "list patients with `tessera patients list`".into(),
            })?;
        let key_destroyed = self.vault.destroy(&[patient_id]).await? > 0;
        let deleted_at = self
            .store
            .deletion_of(patient_id)
            .await?
            .map(|(at, _)| at)
            .unwrap_or(at);
        tracing::info!(
            patient = %patient_id,
            records = deleted.records,
            key_destroyed,
            "patient deleted"
        );
        Ok(Deletion {
            patient_id: patient_id.to_string(),
            deleted_at,
            deleted,
            consents_revoked: revocations.into_iter().map(|r| r.purpose).collect(),
            key_destroyed,
            already: false,
        })
    }

    /// When a patient was deleted and at whose request; `None` when they were not.
    pub async fn deletion_of(&self, patient_id: &str) -> Result<Option<(String, String)>> {
        self.store.deletion_of(patient_id).await
    }

    /// Destroys the keys the vault still holds for deleted patients (a deletion interrupted
    /// after its transaction).
    pub(crate) async fn finish_deletions(&self) -> Result<()> {
        let deleted = self.store.deleted_patients().await?;
        if deleted.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = deleted.iter().map(String::as_str).collect();
        let n = self.vault.destroy(&ids).await?;
        if n > 0 {
            tracing::warn!(
                keys = n,
                "destroyed the data keys of deleted patients that an interrupted deletion left in the key vault"
            );
        }
        Ok(())
    }

    /// A patient's `person_id` in a release family (what an operator needs to find a patient's
    /// rows in a release, e.g. to confirm a deletion reached it).
    pub fn release_pseudonym(&self, family: &str, patient_id: &str) -> String {
        release::family_pseudonym(&self.keyring.release_family_key(family), patient_id)
    }

    /// How many patient data keys the key vault holds.
    pub async fn vault_key_count(&self) -> Result<i64> {
        self.vault.count().await
    }
}
