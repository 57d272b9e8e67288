//! Wiring of `tessera-records` from the environment (secrets are never flags):
//!
//! | variable | what |
//! |---|---|
//! | `TESSERA_IDENTITY_PROVIDER` | `persona`, `stripe_identity` or `none`; unset: Persona when its API key is set, else Stripe Identity when a Stripe key is, else none |
//! | `TESSERA_PERSONA_API_KEY`, `TESSERA_PERSONA_TEMPLATE` | Persona's API key and the inquiry template (`itmpl_…`) |
//! | `TESSERA_PERSONA_API_BASE` | another Persona API base (a test server); default Persona's production API |
//! | `TESSERA_PERSONA_WEBHOOK_SECRET` | the webhook secret; two, comma-separated, while rotating; unset: derived from the master key |
//! | `TESSERA_PERSONA_REVIEW` | `true` (default): the template sends completed inquiries to review, so only `approved` verifies; `false`: `completed` verifies |
//! | `TESSERA_IDENTITY_ASSURANCE` | the level the configured provider reaches: `ial2` (default) or `ial1` (which never unlocks) |
//! | `TESSERA_STRIPE_SECRET_KEY`, `TESSERA_STRIPE_API_BASE`, `TESSERA_IDENTITY_WEBHOOK_SECRET` | Stripe Identity (the same key as payments; its own webhook secret) |
//! | `TESSERA_SMART_CLIENT_ID` | the client id Tessera is registered under at providers' authorization servers (default `tessera`; per provider: `tessera providers client`) |
//! | `TESSERA_PROVIDER_SYNC_HOURS` | how often `tessera serve` fetches what changed at connected providers (default 24; 0: never) |

use std::sync::Arc;

use anyhow::{Result, bail};
use tessera_catalog::{Catalog, Keyring};
use tessera_payouts::Payouts;
use tessera_records::RecordsStore;
use tessera_records::identity::{
    Assurance, Identity, IdentityProvider, Persona, PersonaConfig, StripeIdentity,
    StripeIdentityConfig,
};
use tessera_records::smart::{Smart, SmartConfig};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The identity provider the environment configures, if any.
pub fn identity_provider(keyring: &Keyring) -> Result<Option<Arc<dyn IdentityProvider>>> {
    let assurance =
        Assurance::parse(&env("TESSERA_IDENTITY_ASSURANCE").unwrap_or_else(|| "ial2".into()))?;
    let chosen = env("TESSERA_IDENTITY_PROVIDER").unwrap_or_else(|| {
        if env("TESSERA_PERSONA_API_KEY").is_some() {
            "persona".into()
        } else if env("TESSERA_STRIPE_SECRET_KEY").is_some() {
            "stripe_identity".into()
        } else {
            "none".into()
        }
    });
    let secrets = |var: &str, purpose: &str| -> Vec<Vec<u8>> {
        match env(var) {
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
            None => vec![keyring.application_secret(purpose).to_vec()],
        }
    };
    Ok(match chosen.as_str() {
        "none" => None,
        "persona" => Some(Arc::new(Persona::new(PersonaConfig {
            base_url: env("TESSERA_PERSONA_API_BASE")
                .unwrap_or_else(|| "https://api.withpersona.com".into()),
            api_key: env("TESSERA_PERSONA_API_KEY").unwrap_or_default(),
            template_id: env("TESSERA_PERSONA_TEMPLATE").unwrap_or_default(),
            webhook_secrets: secrets("TESSERA_PERSONA_WEBHOOK_SECRET", "persona-webhook"),
            review_configured: env("TESSERA_PERSONA_REVIEW").is_none_or(|v| v != "false"),
            assurance,
        })?)),
        "stripe_identity" => Some(Arc::new(StripeIdentity::new(StripeIdentityConfig {
            base_url: env("TESSERA_STRIPE_API_BASE")
                .unwrap_or_else(|| "https://api.stripe.com".into()),
            secret_key: env("TESSERA_STRIPE_SECRET_KEY").unwrap_or_default(),
            webhook_secrets: secrets("TESSERA_IDENTITY_WEBHOOK_SECRET", "identity-webhook"),
            assurance,
        })?)),
        other => bail!("TESSERA_IDENTITY_PROVIDER=`{other}`: use persona, stripe_identity or none"),
    })
}

/// Records from providers, as `tessera serve` and the CLI use them.
#[derive(Debug, Clone)]
pub struct RecordsServices {
    pub store: RecordsStore,
    pub identity: Option<Identity>,
    pub smart: Smart,
    /// Hours between syncs of connected providers (0: never).
    pub sync_hours: u64,
}

impl RecordsServices {
    pub async fn open(
        database_url: &str,
        catalog: &Catalog,
        keyring: &Keyring,
        payouts: &Payouts,
        public_url: &str,
    ) -> Result<RecordsServices> {
        let store = RecordsStore::connect(database_url).await?;
        let identity =
            identity_provider(keyring)?.map(|p| Identity::new(store.clone(), p, payouts.clone()));
        let smart = Smart::new(
            store.clone(),
            catalog.clone(),
            SmartConfig::new(
                &env("TESSERA_SMART_CLIENT_ID").unwrap_or_else(|| "tessera".into()),
                &format!("{}/me/providers/callback", public_url.trim_end_matches('/')),
            ),
        )?;
        Ok(RecordsServices {
            store,
            identity,
            smart,
            sync_hours: env("TESSERA_PROVIDER_SYNC_HOURS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(24),
        })
    }

    /// Forgets a patient being deleted: identity attempts redacted at the provider, provider
    /// connections revoked, rows deleted.
    pub async fn forget_patient(&self, patient: &str) -> Result<()> {
        match &self.identity {
            Some(identity) => {
                identity.forget(patient).await?;
            }
            None => {
                tessera_records::identity::forget_rows(&self.store, patient).await?;
            }
        }
        self.smart.forget(patient).await?;
        tessera_records::access_request::AccessRequests::new(
            self.store.clone(),
            tessera_records::access_request::Policy::default(),
        )
        .forget(patient)
        .await?;
        Ok(())
    }
}
