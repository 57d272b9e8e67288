//! Passkeys (WebAuthn) for the patients' pages, verified by `webauthn-rs`.
//!
//! - Registration, from the account page (signed in): `POST /me/passkeys/register/start`
//!   answers the creation options (a discoverable credential with user verification);
//!   `POST /me/passkeys/register/finish` verifies the browser's answer and stores the passkey.
//!   `POST /me/passkeys/remove` removes one.
//! - Sign-in, from the sign-in page (no e-mail to type: the credential is discoverable):
//!   `POST /me/sign-in/passkey/start` answers request options and a ceremony id;
//!   `POST /me/sign-in/passkey/finish` verifies the assertion, finds the account by the
//!   credential id and the user handle, stores the new signature counter, and starts a
//!   session.
//!
//! The relying party is the public URL's host (`TESSERA_PUBLIC_URL`; a server bound to a
//! loopback address defaults to `http://localhost:PORT`, because WebAuthn refuses IP
//! addresses as relying-party ids). Ceremony states stay in this process's memory for five
//! minutes (one server; a second instance would need them in the database). The browser part
//! is a small script on the account and sign-in pages: the forms work without it, passkeys
//! need it.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use tessera_catalog::accounts::SignInMethod;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::AppState;
use super::me::{Refusal, me};

/// How long a ceremony may take.
const CEREMONY: Duration = Duration::from_secs(300);
/// Ceremonies kept at once (older ones are dropped first).
const MAX_CEREMONIES: usize = 10_000;

/// The relying party and the ceremonies in progress.
pub struct Passkeys {
    webauthn: Webauthn,
    /// The origin the ceremonies run at (the public URL).
    pub origin: String,
    registrations: Mutex<HashMap<String, (PasskeyRegistration, Instant)>>,
    sign_ins: Mutex<HashMap<String, (DiscoverableAuthentication, Instant)>>,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Passkeys {
    /// The relying party of a public URL; `Err` says why passkeys cannot be offered there (an
    /// IP address, say).
    pub fn new(public_url: &str) -> Result<Passkeys, String> {
        let url = Url::parse(public_url).map_err(|e| format!("{public_url}: {e}"))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("{public_url} has no host"))?
            .to_string();
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!(
                "passkeys need a host name, not the IP address {host}: set TESSERA_PUBLIC_URL (http://localhost:PORT on one machine)"
            ));
        }
        let webauthn = WebauthnBuilder::new(&host, &url)
            .and_then(|b| b.rp_name("Tessera").build())
            .map_err(|e| format!("passkeys at {public_url}: {e}"))?;
        Ok(Passkeys {
            webauthn,
            origin: url.origin().ascii_serialization(),
            registrations: Mutex::new(HashMap::new()),
            sign_ins: Mutex::new(HashMap::new()),
        })
    }
}

/// Keeps `map` to live ceremonies and below the cap.
fn prune<T>(map: &mut HashMap<String, (T, Instant)>) {
    map.retain(|_, (_, at)| at.elapsed() < CEREMONY);
    if map.len() >= MAX_CEREMONIES {
        let mut ages: Vec<(String, Instant)> =
            map.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
        ages.sort_by_key(|(_, t)| *t);
        for (k, _) in ages.into_iter().take(map.len() + 1 - MAX_CEREMONIES) {
            map.remove(&k);
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/passkeys/register/start", post(register_start))
        .route("/me/passkeys/register/finish", post(register_finish))
        .route("/me/passkeys/remove", post(remove))
        .route("/me/sign-in/passkey/start", post(sign_in_start))
        .route("/me/sign-in/passkey/finish", post(sign_in_finish))
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn passkeys(s: &AppState) -> Result<&Passkeys, Response> {
    match s.patients.as_ref().map(|p| p.passkeys.as_ref()) {
        Some(Ok(p)) => Ok(p),
        Some(Err(why)) => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "passkeys_unavailable",
            why,
        )),
        None => Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "passkeys_unavailable",
            "the patients' pages are not configured on this server",
        )),
    }
}

/// The signed-in patient of a script's request, with the page's CSRF token in a header.
async fn signed_in(s: &AppState, h: &HeaderMap) -> Result<super::me::Me, Response> {
    let me = me(s, h).await.map_err(|r| match r {
        Refusal::SignIn => err(StatusCode::UNAUTHORIZED, "sign_in", "sign in first"),
        Refusal::OtherRole => err(
            StatusCode::FORBIDDEN,
            "patient_pages",
            "these pages are for patients and their caregivers",
        ),
        Refusal::Unavailable => err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"),
    })?;
    let sent = h.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if sent != Some(me.csrf.as_str()) {
        return Err(err(
            StatusCode::FORBIDDEN,
            "csrf",
            "reload the page and try again",
        ));
    }
    Ok(me)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn register_start(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match signed_in(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let pk = match passkeys(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let handle = Uuid::from_bytes(s.catalog.webauthn_user_handle(&me.account.account_id));
    let existing = match s.catalog.passkeys(&me.account.account_id).await {
        Ok(v) => v,
        Err(_) => return err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"),
    };
    let exclude: Vec<_> = existing
        .iter()
        .filter_map(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&p.credential_id)
                .ok()
        })
        .collect();
    // The name the authenticator shows: the account's address, else a generic one (never a
    // patient's name).
    let name = me
        .account
        .email
        .clone()
        .unwrap_or_else(|| "Tessera account".into());
    match pk
        .webauthn
        .start_passkey_registration(handle, &name, &name, Some(exclude))
    {
        Ok((ccr, state)) => {
            // A discoverable credential, so that signing in needs no address typed.
            let mut options = serde_json::to_value(&ccr).unwrap_or_default();
            options["publicKey"]["authenticatorSelection"]["residentKey"] = json!("required");
            options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(true);
            if let Ok(mut map) = pk.registrations.lock() {
                prune(&mut map);
                map.insert(me.session.session_id.clone(), (state, Instant::now()));
            }
            Json(options).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a passkey registration");
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "passkey",
                "could not start",
            )
        }
    }
}

#[derive(Deserialize)]
struct Finish {
    credential: RegisterPublicKeyCredential,
    #[serde(default)]
    label: String,
}

async fn register_finish(
    State(s): State<AppState>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let me = match signed_in(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let pk = match passkeys(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Ok(f) = serde_json::from_slice::<Finish>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "credential",
            "not a WebAuthn registration",
        );
    };
    let state = pk
        .registrations
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&me.session.session_id))
        .filter(|(_, at)| at.elapsed() < CEREMONY);
    let Some((state, _)) = state else {
        return err(
            StatusCode::BAD_REQUEST,
            "ceremony",
            "start again: the request expired",
        );
    };
    let passkey: Passkey = match pk
        .webauthn
        .finish_passkey_registration(&f.credential, &state)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "a passkey registration did not verify");
            return err(
                StatusCode::BAD_REQUEST,
                "passkey",
                "the passkey did not verify",
            );
        }
    };
    let id = b64(passkey.cred_id().as_ref());
    let stored = serde_json::to_string(&passkey).unwrap_or_default();
    let label = if f.label.trim().is_empty() {
        super::me::browser_label(&h)
    } else {
        f.label
    };
    match s
        .catalog
        .add_passkey(&me.account.account_id, &id, &stored, &label)
        .await
    {
        Ok(()) => {
            tracing::info!(account = %me.account.account_id, "passkey registered");
            Json(json!({"registered": true})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a passkey");
            err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again")
        }
    }
}

async fn remove(State(s): State<AppState>, h: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let me = match super::me::form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = form
        .iter()
        .find(|(k, _)| k == "passkey")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    match s.catalog.remove_passkey(&me.account.account_id, id).await {
        Ok(_) => axum::response::Redirect::to("/me/account").into_response(),
        Err(_) => Refusal::Unavailable.page(),
    }
}

async fn sign_in_start(State(s): State<AppState>) -> Response {
    let pk = match passkeys(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match pk.webauthn.start_discoverable_authentication() {
        Ok((mut rcr, state)) => {
            // A modal request from a button, not the autofill ("conditional") one.
            rcr.mediation = None;
            let id = Uuid::new_v4().to_string();
            if let Ok(mut map) = pk.sign_ins.lock() {
                prune(&mut map);
                map.insert(id.clone(), (state, Instant::now()));
            }
            Json(json!({"ceremony": id, "options": rcr})).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a passkey sign-in");
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "passkey",
                "could not start",
            )
        }
    }
}

#[derive(Deserialize)]
struct Assertion {
    ceremony: String,
    credential: PublicKeyCredential,
}

async fn sign_in_finish(
    State(s): State<AppState>,
    h: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let pk = match passkeys(&s) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Ok(a) = serde_json::from_slice::<Assertion>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "credential",
            "not a WebAuthn assertion",
        );
    };
    let state = pk
        .sign_ins
        .lock()
        .ok()
        .and_then(|mut m| m.remove(&a.ceremony))
        .filter(|(_, at)| at.elapsed() < CEREMONY);
    let Some((state, _)) = state else {
        return err(
            StatusCode::BAD_REQUEST,
            "ceremony",
            "start again: the request expired",
        );
    };
    let refused = || {
        err(
            StatusCode::UNAUTHORIZED,
            "passkey",
            "this passkey is not one of a Tessera account: sign in by e-mail, then add it on your account page",
        )
    };
    let Ok((handle, cred_id)) = pk
        .webauthn
        .identify_discoverable_authentication(&a.credential)
    else {
        return refused();
    };
    let cred_id = b64(cred_id);
    let found = match s
        .catalog
        .passkey_for_sign_in(&cred_id, handle.as_bytes())
        .await
    {
        Ok(v) => v,
        Err(_) => return err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"),
    };
    let Some((account, stored)) = found else {
        return refused();
    };
    let Ok(mut passkey) = serde_json::from_str::<Passkey>(&stored) else {
        tracing::error!("a stored passkey does not parse");
        return refused();
    };
    let result =
        match pk
            .webauthn
            .finish_discoverable_authentication_v2(&a.credential, state, &passkey)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a passkey sign-in did not verify");
                return refused();
            }
        };
    if passkey.update_credential(&result).is_some()
        && let Ok(text) = serde_json::to_string(&passkey)
        && s.catalog.passkey_used(&cred_id, &text).await.is_err()
    {
        return err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again");
    }
    match s
        .catalog
        .start_session(
            &account,
            SignInMethod::Passkey,
            &super::me::browser_label(&h),
        )
        .await
    {
        Ok((token, _)) => (
            [(header::SET_COOKIE, super::me::session_cookie(&s, &token))],
            Json(json!({"next": "/me"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "starting a session");
            err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again")
        }
    }
}

/// The pages' script for passkeys: registration on the account page, sign-in on the sign-in
/// page. WebAuthn's JSON carries binary fields as base64url; the browser API wants buffers.
pub const SCRIPT: &str = r#"<script>
(() => {
  const b = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)), (c) => c.charCodeAt(0));
  const s = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  const say = (el, text) => { const o = document.getElementById(el); if (o) o.textContent = text; };
  const root = document.getElementById("passkeys");
  const origin = root && root.dataset.origin;
  if (!window.PublicKeyCredential || !origin) return;
  if (location.origin !== origin) {
    say("passkey-status", "Passkeys work at " + origin + location.pathname + ".");
    return;
  }
  for (const el of document.querySelectorAll("[data-passkey]")) el.hidden = false;
  const add = document.getElementById("passkey-add");
  if (add) add.addEventListener("click", async () => {
    const csrf = add.dataset.csrf;
    try {
      const start = await fetch("/me/passkeys/register/start", { method: "POST", headers: { "x-csrf-token": csrf } });
      if (!start.ok) throw new Error((await start.json()).error.message);
      const o = (await start.json()).publicKey;
      o.challenge = b(o.challenge);
      o.user.id = b(o.user.id);
      for (const c of o.excludeCredentials || []) c.id = b(c.id);
      const cred = await navigator.credentials.create({ publicKey: o });
      const body = { label: "", credential: { id: cred.id, rawId: s(cred.rawId), type: cred.type,
        response: { attestationObject: s(cred.response.attestationObject), clientDataJSON: s(cred.response.clientDataJSON) },
        extensions: cred.getClientExtensionResults() } };
      const done = await fetch("/me/passkeys/register/finish", { method: "POST", headers: { "x-csrf-token": csrf, "content-type": "application/json" }, body: JSON.stringify(body) });
      if (!done.ok) throw new Error((await done.json()).error.message);
      location.reload();
    } catch (e) { say("passkey-status", "The passkey was not added: " + e.message); }
  });
  const use = document.getElementById("passkey-sign-in");
  if (use) use.addEventListener("click", async () => {
    try {
      const start = await fetch("/me/sign-in/passkey/start", { method: "POST" });
      if (!start.ok) throw new Error((await start.json()).error.message);
      const { ceremony, options } = await start.json();
      const o = options.publicKey;
      o.challenge = b(o.challenge);
      for (const c of o.allowCredentials || []) c.id = b(c.id);
      const a = await navigator.credentials.get({ publicKey: o });
      const body = { ceremony, credential: { id: a.id, rawId: s(a.rawId), type: a.type,
        response: { authenticatorData: s(a.response.authenticatorData), clientDataJSON: s(a.response.clientDataJSON),
          signature: s(a.response.signature), userHandle: a.response.userHandle ? s(a.response.userHandle) : null },
        extensions: a.getClientExtensionResults() } };
      const done = await fetch("/me/sign-in/passkey/finish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
      const j = await done.json();
      if (!done.ok) throw new Error(j.error.message);
      location.assign(j.next);
    } catch (e) { say("passkey-status", "Not signed in: " + e.message); }
  });
})();
</script>"#;
