//! `tessera serve`: the HTTP API and the Flight SQL service, until
//! SIGTERM or Ctrl-C; requests in flight are finished before the process exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tessera::api::{self, ApiConfig, AppState};
use tessera_licensing::gate::Gate;
use tessera_licensing::store::LicensingStore;
use tessera_licensing::terms;

use crate::config::{DEFAULT_FLIGHT_ADDR, DEFAULT_HTTP_ADDR, GlobalArgs, replace_private};
use crate::output::say;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API (port 0 picks a free port; the address is printed and written to
    /// DATA_DIR/demo.json when that file exists).
    #[arg(long, env = "TESSERA_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http: SocketAddr,

    /// Address of the Flight SQL service (port 0 picks a free port).
    #[arg(long, env = "TESSERA_FLIGHT_ADDR", default_value = DEFAULT_FLIGHT_ADDR)]
    pub flight: SocketAddr,

    /// The address patients reach the HTTP service at (behind a proxy, say), for the links in
    /// sign-in e-mails; default: the HTTP address. Mail goes through `TESSERA_SMTP_URL` (else
    /// it is written to DATA_DIR/outbox), from `TESSERA_MAIL_FROM`.
    #[arg(long, env = "TESSERA_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// PEM certificate chain for serving Flight SQL over TLS (with --tls-key); the URI becomes
    /// grpc+tls://. Without it Flight SQL is plain gRPC: put it behind a TLS proxy, or on
    /// loopback only.
    #[arg(long, env = "TESSERA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TESSERA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Runs of the same aggregate an aggregate-only license may make within the differencing
    /// window (i2b2: 7 in 30 days).
    #[arg(long, env = "TESSERA_REPEAT_LIMIT", default_value_t = 7)]
    pub repeat_limit: u64,

    /// Runs of aggregates differing only in their literal values an aggregate-only license may
    /// make within the differencing window.
    #[arg(long, env = "TESSERA_NEAR_REPEAT_LIMIT", default_value_t = 50)]
    pub near_repeat_limit: u64,

    /// The differencing window, in days.
    #[arg(long, env = "TESSERA_REPEAT_WINDOW_DAYS", default_value_t = 30)]
    pub repeat_window_days: i64,

    /// Memory one SQL query may use, in MiB.
    #[arg(long, env = "TESSERA_QUERY_MEMORY_MIB", default_value_t = 1024)]
    pub query_memory_mib: usize,

    /// Seconds one SQL query may take.
    #[arg(long, env = "TESSERA_QUERY_TIMEOUT", default_value_t = 120)]
    pub query_timeout: u64,

    /// Sustained requests per second per API key (or per address without a valid key), for
    /// the HTTP API and Flight SQL calls alike.
    #[arg(long, env = "TESSERA_RATE_LIMIT", default_value_t = 20)]
    pub rate_limit: u32,

    /// Requests a key may send in a burst above the sustained rate.
    #[arg(long, env = "TESSERA_RATE_BURST", default_value_t = 40)]
    pub burst: u32,

    /// Seconds a request may take before it is answered with 503 `timeout`.
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,

    /// Largest request body, in KiB.
    #[arg(long, env = "TESSERA_BODY_LIMIT_KIB", default_value_t = 64)]
    pub body_limit_kib: usize,

    /// The de-identification policies operators may build releases with from the operator
    /// console and `/v1/admin/releases/builds` (the `.toml` files of this folder).
    #[arg(long, env = "TESSERA_POLICIES", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))]
    pub policies: PathBuf,
}

pub async fn run(g: &GlobalArgs, args: ServeArgs) -> Result<ExitCode> {
    let catalog = super::open_catalog(g, false).await?;
    let keyring = g.keyring(false)?;
    let store = LicensingStore::connect(&g.database_url())
        .await
        .context("cannot open the licensing store")?;
    let platform = terms::platform_key(&keyring.application_secret("platform-signing-seed"))
        .map_err(|e| anyhow::anyhow!("cannot make the platform signing key: {e}"))?;
    let pepper = keyring.application_secret("api-key-pepper").to_vec();
    let config = ApiConfig {
        body_limit: args.body_limit_kib.max(1) * 1024,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        requests_per_second: args.rate_limit,
        burst: args.burst,
        enforce: true,
    };
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}: is another server using it?"))
    };
    let listener = bind(args.http).await?;
    let flight_listener = bind(args.flight).await?;
    let http = format!("http://{}", listener.local_addr()?);
    let payouts_config = tessera::payouts::PayoutsConfig::from_env(&keyring);
    let mailer = tessera::mail::Mailer::from_env(&g.data_dir)?;
    // Links in e-mails and passkeys use the public URL. On a loopback address the default is
    // `localhost` rather than the IP address, because WebAuthn takes no IP address as a relying
    // party.
    let local = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| {
            if local.ip().is_loopback() {
                format!("http://localhost:{}", local.port())
            } else {
                http.clone()
            }
        })
        .trim_end_matches('/')
        .to_string();
    let passkeys = tessera::api::passkeys::Passkeys::new(&public_url);
    if let Err(why) = &passkeys {
        say!("tessera serve: no passkeys: {why}");
    }
    let payouts = tessera_payouts::Payouts::connect(&g.database_url())
        .await
        .context("cannot open the payouts store")?;
    let records = tessera::records::RecordsServices::open(
        &g.database_url(),
        &catalog,
        &keyring,
        &payouts,
        &public_url,
    )
    .await
    .context("cannot open the records store (identity verification, provider connections)")?;
    say!(
        "tessera serve: identity verification: {}",
        records
            .identity
            .as_ref()
            .map_or("not offered (set TESSERA_IDENTITY_PROVIDER)", |i| i
                .provider()
                .code())
    );
    let patients = tessera::api::patients::PatientServices {
        mailer: mailer.clone(),
        passkeys: std::sync::Arc::new(passkeys),
        public_url,
        records: records.clone(),
        payouts,
        rails: payouts_config.rails()?,
        gift_cards: tessera::api::getting_paid::GiftCards::new(payouts_config.giftcard_provider()?),
        config: payouts_config,
    };
    let query = tessera_query::QueryService::new(
        catalog.clone(),
        Gate::new(
            store.clone(),
            keyring.application_secret("api-key-pepper").to_vec(),
        ),
        tessera_query::Limits {
            memory: args.query_memory_mib.max(16) << 20,
            time: Duration::from_secs(args.query_timeout.max(1)),
            differencing: tessera_query::service::Differencing {
                same: args.repeat_limit.max(1),
                near: args.near_repeat_limit.max(1),
                window: chrono::Duration::days(args.repeat_window_days.max(1)),
            },
        },
    );
    let state = AppState::new(
        catalog.clone(),
        Gate::new(store.clone(), pepper.clone()),
        platform,
        pepper,
        config,
        Some(patients),
        Some(query.clone()),
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            tessera_query::flight::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }
            .load()
            .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let flight = tessera_query::flight::uri(flight_listener.local_addr()?, tls.is_some());
    let state = state.with_operations(
        g.data_dir.join("releases"),
        args.policies.clone(),
        flight.clone(),
    );
    record_services(&g.data_dir.join("demo.json"), &http, &flight)?;
    say!("tessera serve: HTTP API on {http} (OpenAPI at {http}/openapi.json)");
    say!("tessera serve: Flight SQL on {flight}; stop with SIGTERM or Ctrl-C");
    say!(
        "tessera serve: patients' sign-in e-mails: {}",
        mailer.describe()
    );
    for (what, url) in super::demo::console_urls(&http) {
        say!("  {what:<18} {url}");
    }
    // One signal stops both services; each finishes what it has in flight.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(sync_providers(records, wait(stopped.clone())));
    let flight_task = tokio::spawn(tessera_query::flight::serve(
        flight_listener,
        query,
        tessera_query::flight::Throttle {
            per_second: args.rate_limit,
            burst: args.burst,
        },
        tls,
        wait(stopped.clone()),
    ));
    api::serve(listener, state, wait(stopped)).await?;
    match flight_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => anyhow::bail!("the Flight SQL service failed: {e}"),
        Err(e) => anyhow::bail!("the Flight SQL service stopped: {e}"),
    }
    store.close().await;
    catalog.close().await;
    say!("tessera serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Every ten minutes, until stopped: fetches what changed at connected providers (the
/// connections not synced for `sync_hours`, one at a time: a provider's rate limits are per
/// client), and applies the right-of-access schedule (follow-ups, escalation, the stop).
async fn sync_providers(
    records: tessera::records::RecordsServices,
    stop: impl std::future::Future<Output = ()>,
) {
    let every = chrono::Duration::hours(i64::try_from(records.sync_hours).unwrap_or(24));
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let requests = tessera_records::access_request::AccessRequests::new(
            records.store.clone(),
            tessera_records::access_request::Policy::default(),
        );
        match requests.tick(chrono::Utc::now()).await {
            Ok(done) if !done.is_empty() => {
                tracing::info!(actions = done.len(), "right-of-access schedule applied");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "applying the right-of-access schedule"),
        }
        if records.sync_hours == 0 {
            continue;
        }
        match records.smart.due(every).await {
            Ok(due) => {
                for (patient, id) in due {
                    if let Err(e) = records.smart.sync(&patient, &id).await {
                        tracing::warn!(error = %e, connection = %id, "a scheduled provider sync failed; tried again at the next round");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading connections due a sync"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing requests in flight");
}

/// Writes the addresses the services listen on into demo.json's `services`, when the demo
/// made one.
fn record_services(path: &Path, http: &str, flight: &str) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not JSON: remove it and run `tessera demo` again",
            path.display()
        )
    })?;
    doc["services"] = serde_json::json!({ "http": http, "flight_sql": flight });
    replace_private(path, serde_json::to_string_pretty(&doc)?.as_bytes())
}
