//! A gift-card provider speaking a Tremendous-style REST API (`/api/v2`): orders carry an
//! `external_id` (the payout's idempotency key: the provider refuses a second order with the
//! same one), a product from its catalog (gift cards and charities alike: the charity option),
//! and a denomination as a decimal amount, written from minor units without a float. Rewards
//! are delivered as a link (method `LINK`): no patient's name or e-mail leaves Tessera; the
//! recipient is named "Tessera participant".

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    PayoutOrder, ProviderRecord, ProviderState, Rail, RailError, decimal_text, parse_decimal,
};
use crate::PayoutsError;
use crate::money::{Currency, Money};

/// The provider's settings: API base (e.g. `https://…/api/v2`), key, funding source.
#[derive(Clone)]
pub struct GiftCardProvider {
    http: reqwest::Client,
    base: String,
    api_key: String,
    funding_source: String,
}

impl std::fmt::Debug for GiftCardProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GiftCardProvider")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One product of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    /// `merchant_card`, `charity`, ...
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub currency_codes: Vec<String>,
    /// The provider's words about it (may hold HTML: shown escaped).
    #[serde(default)]
    pub description: String,
    /// Pictures of the card and the merchant's logo, where the provider gives them.
    #[serde(default)]
    pub images: Vec<ProductImage>,
    /// The amounts it comes in: each a range (a fixed denomination has min = max).
    #[serde(default)]
    pub skus: Vec<Sku>,
}

/// A picture of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductImage {
    pub src: String,
    /// `card` or `logo`.
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// An amount range of a product, in decimal units of its currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sku {
    pub min: serde_json::Number,
    pub max: serde_json::Number,
    #[serde(default)]
    pub currency_code: Option<String>,
}

impl Product {
    /// The picture to show: the logo, else the card, else none.
    pub fn picture(&self) -> Option<&ProductImage> {
        self.images
            .iter()
            .find(|i| i.kind == "logo")
            .or_else(|| self.images.first())
    }

    /// The amount ranges in `currency` (minor units; min = max for a fixed denomination).
    pub fn denominations(&self, currency: Currency) -> Vec<(Money, Money)> {
        self.skus
            .iter()
            .filter(|s| {
                s.currency_code
                    .as_deref()
                    .is_none_or(|c| c.eq_ignore_ascii_case(currency.as_str()))
            })
            .filter_map(|s| {
                Some((
                    parse_decimal(&s.min.to_string(), currency)?,
                    parse_decimal(&s.max.to_string(), currency)?,
                ))
            })
            .collect()
    }

    /// Whether it can be bought in `currency`.
    pub fn sold_in(&self, currency: Currency) -> bool {
        self.currency_codes.is_empty()
            || self
                .currency_codes
                .iter()
                .any(|c| c.eq_ignore_ascii_case(currency.as_str()))
    }
}

#[derive(Deserialize)]
struct OrderEnvelope {
    order: Order,
}

#[derive(Deserialize)]
struct OrdersEnvelope {
    #[serde(default)]
    orders: Vec<Order>,
}

#[derive(Deserialize)]
struct Order {
    id: String,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    payment: Option<OrderPayment>,
    #[serde(default)]
    rewards: Vec<Reward>,
}

#[derive(Deserialize)]
struct OrderPayment {
    #[serde(default)]
    subtotal: Option<serde_json::Number>,
}

#[derive(Deserialize)]
struct Reward {
    #[serde(default)]
    value: Option<RewardValue>,
    #[serde(default)]
    delivery: Option<Delivery>,
}

#[derive(Deserialize)]
struct RewardValue {
    denomination: serde_json::Number,
    currency_code: String,
}

#[derive(Deserialize)]
struct Delivery {
    #[serde(default)]
    link: Option<String>,
}

impl GiftCardProvider {
    pub fn new(
        base: &str,
        api_key: &str,
        funding_source: &str,
        timeout: Duration,
    ) -> Result<GiftCardProvider, PayoutsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PayoutsError::Rail {
                rail: "giftcard".into(),
                message: format!("cannot make the HTTP client: {e}"),
            })?;
        Ok(GiftCardProvider {
            http,
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            funding_source: funding_source.to_string(),
        })
    }

    /// The product catalog.
    pub async fn products(&self) -> Result<Vec<Product>, RailError> {
        #[derive(Deserialize)]
        struct P {
            products: Vec<Product>,
        }
        let r = self
            .http
            .get(format!("{}/products", self.base))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(transport)?;
        let r = check(r).await?;
        Ok(r.json::<P>()
            .await
            .map_err(|_| RailError::Unknown("unreadable product catalog".into()))?
            .products)
    }

    /// Fetches a product picture (at most 512 KiB of PNG, JPEG, GIF or WebP), so that Tessera
    /// serves it itself: patients' browsers never call the provider or its image host.
    pub async fn image(&self, src: &str) -> Result<(String, Vec<u8>), RailError> {
        const MAX: usize = 512 * 1024;
        if !(src.starts_with("https://") || src.starts_with("http://")) {
            return Err(RailError::Rejected(
                "an image URL that is not http(s)".into(),
            ));
        }
        let r = self.http.get(src).send().await.map_err(transport)?;
        let r = check(r).await?;
        let kind = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !matches!(
            kind.as_str(),
            "image/png" | "image/jpeg" | "image/gif" | "image/webp"
        ) {
            return Err(RailError::Rejected(format!(
                "a product image of type `{kind}` (only PNG, JPEG, GIF and WebP are shown)"
            )));
        }
        let bytes = r.bytes().await.map_err(transport)?;
        if bytes.len() > MAX {
            return Err(RailError::Rejected("a product image over 512 KiB".into()));
        }
        Ok((kind, bytes.to_vec()))
    }

    fn record(o: &Order) -> ProviderRecord {
        let reward = o.rewards.first();
        let amount = reward
            .and_then(|r| r.value.as_ref())
            .and_then(|v| {
                let c = Currency::parse(&v.currency_code).ok()?;
                parse_decimal(&v.denomination.to_string(), c)
            })
            .or_else(|| {
                o.payment
                    .as_ref()
                    .and_then(|p| p.subtotal.as_ref())
                    .and_then(|s| parse_decimal(&s.to_string(), Currency::USD))
            })
            .unwrap_or(Money::usd(0));
        let state = match o.status.as_str() {
            "EXECUTED" | "COMPLETED" => ProviderState::Paid,
            "FAILED" | "CANCELED" | "REJECTED" => ProviderState::Failed,
            _ => ProviderState::Pending,
        };
        ProviderRecord {
            provider_ref: o.id.clone(),
            state,
            amount,
            payout_id: o
                .external_id
                .as_deref()
                .and_then(|e| e.strip_prefix("tessera-payout-"))
                .map(str::to_string),
            claim_url: reward
                .and_then(|r| r.delivery.as_ref())
                .and_then(|d| d.link.clone()),
        }
    }

    /// Orders matching `query` (`external_id`, `limit`).
    async fn list_orders(&self, query: &[(&str, &str)]) -> Result<Vec<Order>, RailError> {
        let r = self
            .http
            .get(format!("{}/orders", self.base))
            .query(query)
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(transport)?;
        let r = check(r).await?;
        let list: OrdersEnvelope = r
            .json()
            .await
            .map_err(|_| RailError::Unknown("unreadable order list".into()))?;
        Ok(list.orders)
    }

    /// The order sent with `external_id`, if any.
    async fn find(&self, external_id: &str) -> Result<Option<ProviderRecord>, RailError> {
        Ok(self
            .list_orders(&[("external_id", external_id)])
            .await?
            .iter()
            .find(|o| o.external_id.as_deref() == Some(external_id))
            .map(Self::record))
    }
}

fn transport(e: reqwest::Error) -> RailError {
    if e.is_timeout() {
        RailError::Unknown("the gift-card provider did not answer in time".into())
    } else {
        RailError::Unknown("connection to the gift-card provider failed".into())
    }
}

async fn check(r: reqwest::Response) -> Result<reqwest::Response, RailError> {
    let s = r.status();
    if s.is_success() {
        Ok(r)
    } else if s.is_client_error() && s.as_u16() != 409 && s.as_u16() != 429 {
        Err(RailError::Rejected(format!(
            "the gift-card provider answered {}",
            s.as_u16()
        )))
    } else {
        Err(RailError::Unknown(format!(
            "the gift-card provider answered {}",
            s.as_u16()
        )))
    }
}

#[async_trait]
impl Rail for GiftCardProvider {
    fn name(&self) -> &'static str {
        "giftcard"
    }

    async fn submit(&self, order: &PayoutOrder) -> Result<ProviderRecord, RailError> {
        // The denomination is written as a JSON number from the exact decimal text.
        let denomination = RawValue::from_string(decimal_text(order.amount))
            .map_err(|_| RailError::Rejected("amount".into()))?;
        let body = serde_json::json!({
            "external_id": order.idempotency_key,
            "payment": {"funding_source_id": self.funding_source},
            "reward": {
                "value": {"denomination": denomination, "currency_code": order.amount.currency.as_str()},
                "delivery": {"method": "LINK"},
                "recipient": {"name": "Tessera participant"},
                "products": [order.destination],
            }
        });
        let r = self
            .http
            .post(format!("{}/orders", self.base))
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        if r.status().as_u16() == 409 {
            // An order with this external id exists already: that one is the payout.
            return self.find(&order.idempotency_key).await?.ok_or_else(|| {
                RailError::Unknown("the provider reports a duplicate it cannot list".into())
            });
        }
        let r = check(r).await?;
        let o: OrderEnvelope = r
            .json()
            .await
            .map_err(|_| RailError::Unknown("unreadable order".into()))?;
        Ok(Self::record(&o.order))
    }

    async fn lookup(&self, order: &PayoutOrder) -> Result<Option<ProviderRecord>, RailError> {
        self.find(&order.idempotency_key).await
    }

    async fn recent(&self) -> Result<Vec<ProviderRecord>, RailError> {
        Ok(self
            .list_orders(&[("limit", "100")])
            .await?
            .iter()
            .map(Self::record)
            .filter(|r| r.payout_id.is_some())
            .collect())
    }
}
