//! `tessera serve`: the HTTP API (and, once the query service lands, Flight SQL), until
//! SIGTERM or Ctrl-C; requests in flight are finished before the process exits.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use tessera::api::{self, ApiConfig, AppState};
use tessera_licensing::gate::Gate;
use tessera_licensing::store::LicensingStore;
use tessera_licensing::terms;

use crate::config::{DEFAULT_HTTP_ADDR, GlobalArgs, replace_private};
use crate::output::say;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTP API (port 0 picks a free port; the address is printed and written to
    /// DATA_DIR/demo.json when that file exists).
    #[arg(long, env = "TESSERA_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http: SocketAddr,

    /// Sustained requests per second per API key (or per address without a valid key).
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
    let state = AppState::new(
        catalog.clone(),
        Gate::new(store.clone(), pepper.clone()),
        platform,
        pepper,
        config,
    );
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}: is another server using it?",
                args.http
            )
        })?;
    let bound = listener.local_addr()?;
    let http = format!("http://{bound}");
    record_services(&g.data_dir.join("demo.json"), &http)?;
    say!(
        "tessera serve: HTTP API on {http} (OpenAPI at {http}/openapi.json); stop with SIGTERM or Ctrl-C"
    );
    api::serve(listener, state, shutdown_signal()).await?;
    store.close().await;
    catalog.close().await;
    say!("tessera serve: stopped");
    Ok(ExitCode::SUCCESS)
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

/// Writes the address the API listens on into demo.json's `services`, when the demo made one.
fn record_services(path: &Path, http: &str) -> Result<()> {
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
    doc["services"] = serde_json::json!({ "http": http });
    replace_private(path, serde_json::to_string_pretty(&doc)?.as_bytes())
}
