//! How a patient chooses to be paid, as a person expects: a gift card from the provider's
//! catalog (names, pictures, amounts), a donation to an advocacy organization described in a
//! sentence, or direct payment to a bank account they open through Stripe's hosted onboarding
//! (Stripe Connect Express): no product code or account id is ever typed.
//!
//! - `GET /me/giftcards/{product}/image`: a product's picture, fetched by the server from the
//!   provider and served from here, so that patients' browsers never contact the provider.
//! - `POST /me/stripe/onboard` (CSRF): opens the patient's Express account (once: the
//!   idempotency key is the patient's), then sends them to a fresh onboarding link.
//! - `GET /me/stripe/refresh`: Stripe's `refresh_url` (the link expired): a new link.
//! - `GET /me/stripe/return`: Stripe's `return_url`: asks Stripe where the account stands,
//!   stores it, and, once Stripe pays out to it, makes direct payment the patient's choice.
//!   Stripe's `account.updated` webhook does the same when the status changes later.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tessera_payouts::payout::{AdvocacyOrg, Choice};
use tessera_payouts::rails::giftcard::{GiftCardProvider, Product};
use tessera_payouts::{Currency, Money};

use super::AppState;
use super::me::{Refusal, form_me, me, message_page, parse_form};
use super::web::esc;

/// How long the catalog is kept before it is fetched again.
const CATALOG_TTL: Duration = Duration::from_secs(3600);

struct Catalog {
    fetched: Instant,
    products: Vec<Product>,
    images: HashMap<String, (String, Vec<u8>)>,
}

/// The gift-card provider's catalog, cached.
#[derive(Clone)]
pub struct GiftCards {
    provider: Option<Arc<GiftCardProvider>>,
    cache: Arc<tokio::sync::Mutex<Option<Catalog>>>,
}

impl std::fmt::Debug for GiftCards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiftCards")
            .field("provider", &self.provider.is_some())
            .finish_non_exhaustive()
    }
}

/// What the page can offer of gift cards.
#[derive(Debug)]
pub enum Offer {
    /// No gift-card provider is configured on this server.
    NotOffered,
    /// The provider could not be reached just now.
    Unavailable,
    Products(Vec<Product>),
}

impl GiftCards {
    pub fn new(provider: Option<GiftCardProvider>) -> GiftCards {
        GiftCards {
            provider: provider.map(Arc::new),
            cache: Arc::default(),
        }
    }

    /// The products sold in `currency`, from the cache or the provider (pictures fetched
    /// with them; a picture that fails is left out, the product stays).
    pub async fn offer(&self, currency: Currency) -> Offer {
        let Some(provider) = &self.provider else {
            return Offer::NotOffered;
        };
        let mut cache = self.cache.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|c| c.fetched.elapsed() > CATALOG_TTL);
        if stale {
            match provider.products().await {
                Ok(products) => {
                    let mut images = HashMap::new();
                    for p in &products {
                        if let Some(pic) = p.picture() {
                            match provider.image(&pic.src).await {
                                Ok(img) => {
                                    images.insert(p.id.clone(), img);
                                }
                                Err(e) => {
                                    tracing::warn!(product = %p.id, error = %e, "a gift card's picture was not fetched")
                                }
                            }
                        }
                    }
                    *cache = Some(Catalog {
                        fetched: Instant::now(),
                        products,
                        images,
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the gift-card catalog could not be fetched");
                    if cache.is_none() {
                        return Offer::Unavailable;
                    }
                }
            }
        }
        // Products whose picture was not fetched (or was refused) are shown without one.
        let products = cache
            .as_ref()
            .map(|c| {
                c.products
                    .iter()
                    .filter(|p| p.sold_in(currency) && p.category != "charity")
                    .cloned()
                    .map(|mut p| {
                        if !c.images.contains_key(&p.id) {
                            p.images.clear();
                        }
                        p
                    })
                    .collect()
            })
            .unwrap_or_default();
        Offer::Products(products)
    }

    async fn image(&self, product: &str) -> Option<(String, Vec<u8>)> {
        self.cache
            .lock()
            .await
            .as_ref()
            .and_then(|c| c.images.get(product).cloned())
    }

    /// Whether `product` is in the catalog now (a choice is checked against it).
    pub async fn has(&self, product: &str, currency: Currency) -> bool {
        match self.offer(currency).await {
            Offer::Products(list) => list.iter().any(|p| p.id == product),
            _ => false,
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/giftcards/{product}/image", get(image))
        .route("/me/stripe/onboard", post(onboard))
        .route("/me/stripe/refresh", get(refresh))
        .route("/me/stripe/return", get(returned))
}

fn money(m: Money) -> String {
    super::patients::money(m.minor, m.currency)
}

/// "$5.00 to $500.00", "$25.00 or $50.00": a product's amounts in words.
fn amounts(p: &Product, c: Currency) -> String {
    let d = p.denominations(c);
    if d.is_empty() {
        return String::new();
    }
    if d.iter().all(|(lo, hi)| lo == hi) {
        let list: Vec<String> = d.iter().map(|(v, _)| money(*v)).collect();
        return match list.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => String::new(),
        };
    }
    let lo = d.iter().map(|(l, _)| l.minor).min().unwrap_or(0);
    let hi = d.iter().map(|(_, h)| h.minor).max().unwrap_or(0);
    format!(
        "any amount from {} to {}",
        money(Money::new(lo, c)),
        money(Money::new(hi, c))
    )
}

/// The payout-choice form of the earnings page: radio groups with what each option is, and,
/// outside it (forms do not nest), the Stripe onboarding button.
pub fn choice_form(
    csrf: &str,
    current: &Choice,
    minimum: Money,
    gift: &Offer,
    orgs: &[AdvocacyOrg],
    connect: Option<&(String, String)>,
    stripe_configured: bool,
) -> String {
    let c = minimum.currency;
    let mut h = String::new();
    let checked = |on: bool| if on { " checked" } else { "" };
    let _ = write!(
        h,
        "<h2>How you want to be paid</h2><form method=\"post\" action=\"/me/payout-choice\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<fieldset><legend>Pay me by</legend>\
<label><input type=\"radio\" name=\"choice\" value=\"accumulate\"{}> Keep it for now</label>",
        checked(matches!(current, Choice::Accumulate))
    );
    // Gift cards.
    let _ = write!(
        h,
        "<label><input type=\"radio\" name=\"choice\" value=\"gift_card\"{}> A gift card</label>",
        checked(matches!(current, Choice::GiftCard { .. }))
    );
    match gift {
        Offer::NotOffered => h.push_str("<p class=\"muted\">Gift cards are not offered on this server.</p>"),
        Offer::Unavailable => h.push_str("<p class=\"muted\">The gift-card catalog cannot be reached right now; try again later.</p>"),
        Offer::Products(list) if list.is_empty() => {
            h.push_str("<p class=\"muted\">No gift card is offered in your currency.</p>")
        }
        Offer::Products(list) => {
            h.push_str("<fieldset class=\"options\"><legend>Which card</legend><ul class=\"choices\">");
            for p in list {
                let on = matches!(current, Choice::GiftCard { product } if product == &p.id);
                let picture = if p.picture().is_some() {
                    format!(
                        "<img src=\"/me/giftcards/{}/image\" alt=\"\" width=\"64\" height=\"40\">",
                        esc(&p.id)
                    )
                } else {
                    String::new()
                };
                let _ = write!(
                    h,
                    "<li><label><input type=\"radio\" name=\"product\" value=\"{}\"{}> {picture}<span><b>{}</b><br><span class=\"muted\">{}</span></span></label></li>",
                    esc(&p.id),
                    checked(on),
                    esc(&p.name),
                    esc(&amounts(p, c))
                );
            }
            h.push_str("</ul></fieldset>");
        }
    }
    // Donations.
    let _ = write!(
        h,
        "<label><input type=\"radio\" name=\"choice\" value=\"donation\"{}> A donation to a patient advocacy organization</label>",
        checked(matches!(current, Choice::Donation { .. }))
    );
    if orgs.is_empty() {
        h.push_str("<p class=\"muted\">No organization is registered yet.</p>");
    } else {
        h.push_str(
            "<fieldset class=\"options\"><legend>Which organization</legend><ul class=\"choices\">",
        );
        for o in orgs {
            let on = matches!(current, Choice::Donation { organization } if organization == &o.id);
            let _ = write!(
                h,
                "<li><label><input type=\"radio\" name=\"organization\" value=\"{}\"{}> <span><b>{}</b> ({})<br><span class=\"muted\">{}</span></span></label></li>",
                esc(&o.id),
                checked(on),
                esc(&o.name),
                esc(&o.disease),
                esc(&o.description)
            );
        }
        h.push_str("</ul></fieldset>");
    }
    // Direct payment.
    let ready = connect.is_some_and(|(_, s)| s == "enabled");
    let _ = write!(
        h,
        "<label><input type=\"radio\" name=\"choice\" value=\"direct\"{}{}> Paid to my bank account, through Stripe</label>",
        checked(matches!(current, Choice::Direct { .. })),
        if ready { "" } else { " disabled" }
    );
    let status = match connect.map(|(_, s)| s.as_str()) {
        None if !stripe_configured => "Direct payment is not offered on this server.".to_string(),
        None => "Set up direct payment below: Stripe asks for your bank details on its own secure pages, and Tessera never sees them.".into(),
        Some("enabled") => "Your Stripe account is ready.".into(),
        Some("pending") => "Stripe is checking the details you gave; this can take a day or two.".into(),
        Some("restricted") => "Stripe needs more information before it can pay you: continue the set-up below.".into(),
        Some(_) => "You started setting up direct payment: continue below to finish.".into(),
    };
    let _ = write!(
        h,
        "<p class=\"muted\" id=\"stripe-status\">{}</p>",
        esc(&status)
    );
    let _ = write!(
        h,
        "</fieldset><label for=\"minimum\">Pay me once I have at least ({c})</label><input id=\"minimum\" name=\"minimum\" inputmode=\"decimal\" value=\"{}\" size=\"8\"> <button type=\"submit\">Save</button></form>",
        tessera_payouts::rails::decimal_text(minimum)
    );
    if stripe_configured && !ready {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/me/stripe/onboard\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\" class=\"secondary\">{}</button></form>",
            if connect.is_some() {
                "Continue setting up direct payment with Stripe"
            } else {
                "Set up direct payment with Stripe"
            }
        );
    }
    h
}

async fn image(State(s): State<AppState>, h: HeaderMap, Path(product): Path<String>) -> Response {
    if let Err(r) = me(&s, &h).await {
        return r.page();
    }
    let Some(svc) = s.patients.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match svc.gift_cards.image(&product).await {
        Some((kind, bytes)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Sends the patient to Stripe's onboarding for their account (opened now if they have none).
async fn to_onboarding(s: &AppState, patient: &str) -> Response {
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let stripe = match svc.config.stripe() {
        Ok(Some(st)) => st,
        _ => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Direct payment",
                "Direct payment is not offered on this server.",
            );
        }
    };
    let account = match svc.payouts.connect_account_of(patient).await {
        Ok(Some((a, _))) => a,
        Ok(None) => {
            let opened = match stripe.create_express_account(patient).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "opening a connected account");
                    return stripe_unreachable();
                }
            };
            if let Err(e) = svc.payouts.record_connect_account(patient, &opened).await {
                tracing::error!(error = %e, "recording a connected account");
                return Refusal::Unavailable.page();
            }
            opened
        }
        Err(_) => return Refusal::Unavailable.page(),
    };
    let base = svc.public_url.trim_end_matches('/');
    match stripe
        .onboarding_link(
            &account,
            &format!("{base}/me/stripe/refresh"),
            &format!("{base}/me/stripe/return"),
        )
        .await
    {
        Ok(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Redirect::to(&url).into_response()
        }
        Ok(_) => stripe_unreachable(),
        Err(e) => {
            tracing::warn!(error = %e, "making an onboarding link");
            stripe_unreachable()
        }
    }
}

fn stripe_unreachable() -> Response {
    message_page(
        StatusCode::BAD_GATEWAY,
        "Direct payment",
        "Stripe could not be reached just now: try again in a few minutes. Your balance is safe.",
    )
}

async fn onboard(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    to_onboarding(&s, me.patient()).await
}

/// A provider (Stripe, an identity provider, a patient's hospital) sends the patient back with
/// a cross-site navigation, on which the browser does not send the session cookie (it is
/// `SameSite=Strict`). The first such arrival answers a page that reloads itself from
/// Tessera's own origin, with the cookie and the same query (an authorization `code` and
/// `state`, say) plus `again=1`; a second arrival without a session is a real sign-in request.
fn same_site_again(path: &str, q: &HashMap<String, String>, title: &str) -> Response {
    if q.contains_key("again") {
        return Refusal::SignIn.page();
    }
    let mut query: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    query.sort_unstable();
    query.push(("again", "1"));
    let again = format!(
        "{path}?{}",
        serde_urlencoded::to_string(&query).unwrap_or_else(|_| "again=1".into())
    );
    let mut r = super::me::page(
        StatusCode::OK,
        super::me::layout(
            title,
            None,
            &format!(
                "<p>Taking you back to Tessera… <a href=\"{}\">Continue</a></p>",
                esc(&again)
            ),
        ),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("0; url={again}")) {
        r.headers_mut().insert("refresh", v);
    }
    r
}

/// The session of a patient coming back from a provider at `path`; without one (the browser
/// kept the cookie back on a cross-site arrival), the page that reloads same-site, titled
/// `title`; any other refusal as its page.
pub(crate) async fn returning(
    s: &AppState,
    h: &HeaderMap,
    q: &HashMap<String, String>,
    path: &str,
    title: &str,
) -> Result<super::me::Me, Response> {
    match me(s, h).await {
        Ok(m) => Ok(m),
        Err(Refusal::SignIn) => Err(same_site_again(path, q, title)),
        Err(r) => Err(r.page()),
    }
}

async fn refresh(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match returning(&s, &h, &q, "/me/stripe/refresh", "Back from Stripe").await {
        Ok(m) => m,
        Err(r) => return r,
    };
    to_onboarding(&s, me.patient()).await
}

async fn returned(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match returning(&s, &h, &q, "/me/stripe/return", "Back from Stripe").await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let (Ok(Some(stripe)), Ok(Some((account, _)))) = (
        svc.config.stripe(),
        svc.payouts.connect_account_of(me.patient()).await,
    ) else {
        return Redirect::to("/me").into_response();
    };
    match stripe.connect_account(&account).await {
        Ok(status) => {
            if let Err(e) = svc.payouts.connect_account_updated(&status).await {
                tracing::error!(error = %e, "storing a connected account's status");
                return Refusal::Unavailable.page();
            }
            Redirect::to("/me#stripe-status").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading a connected account");
            stripe_unreachable()
        }
    }
}
