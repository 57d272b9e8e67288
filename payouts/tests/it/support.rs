//! Shared helpers: a fresh store, an in-memory rail whose failures a test scripts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tessera_payouts::Payouts;
use tessera_payouts::rails::{PayoutOrder, ProviderRecord, ProviderState, Rail, RailError, Rails};

pub async fn fresh() -> (Payouts, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (Payouts::connect(&url).await.expect("open the store"), dir)
}

/// What the fake provider does with the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pays and answers.
    Ok,
    /// Pays, then the answer is lost (a timeout after the provider acted).
    LostAnswer,
    /// Never reaches the provider (a timeout before it acted).
    Unreachable,
    /// Refuses (a 4xx): nothing paid.
    Refuse,
    /// Accepts and leaves it pending (settled later by a webhook or lookup).
    Pending,
}

#[derive(Debug, Default)]
pub struct FakeState {
    /// Provider records by idempotency key: one per key, as a real idempotent API keeps.
    pub records: BTreeMap<String, ProviderRecord>,
    pub script: VecDeque<Mode>,
    pub submits: usize,
}

/// A provider kept in memory. Idempotent like the real ones: a second submit with a key it
/// has seen answers the first record.
#[derive(Debug, Clone)]
pub struct FakeRail {
    pub name: &'static str,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeRail {
    pub fn new(name: &'static str) -> FakeRail {
        FakeRail {
            name,
            state: Arc::default(),
        }
    }
    pub fn script(&self, modes: &[Mode]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(modes.iter().copied());
    }
    pub fn clear_script(&self) {
        self.state.lock().unwrap().script.clear();
    }
    pub fn settle_all(&self) {
        for r in self.state.lock().unwrap().records.values_mut() {
            if r.state == ProviderState::Pending {
                r.state = ProviderState::Paid;
            }
        }
    }
    /// Records per payout id (a payout paid twice would show two).
    pub fn paid_per_payout(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in self.state.lock().unwrap().records.values() {
            if r.state != ProviderState::Failed {
                *m.entry(r.payout_id.clone().unwrap_or_default())
                    .or_insert(0) += 1;
            }
        }
        m
    }
}

#[async_trait]
impl Rail for FakeRail {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn submit(&self, o: &PayoutOrder) -> Result<ProviderRecord, RailError> {
        let mut s = self.state.lock().unwrap();
        s.submits += 1;
        let mode = s.script.pop_front().unwrap_or(Mode::Ok);
        if let Some(r) = s.records.get(&o.idempotency_key) {
            return Ok(r.clone());
        }
        let rec = |state| ProviderRecord {
            provider_ref: format!("{}-{}", self.name, s.records.len() + 1),
            state,
            amount: o.amount,
            payout_id: Some(o.payout_id.clone()),
            claim_url: None,
        };
        match mode {
            Mode::Ok => {
                let r = rec(ProviderState::Paid);
                s.records.insert(o.idempotency_key.clone(), r.clone());
                Ok(r)
            }
            Mode::Pending => {
                let r = rec(ProviderState::Pending);
                s.records.insert(o.idempotency_key.clone(), r.clone());
                Ok(r)
            }
            Mode::LostAnswer => {
                let r = rec(ProviderState::Paid);
                s.records.insert(o.idempotency_key.clone(), r);
                Err(RailError::Unknown("timed out".into()))
            }
            Mode::Unreachable => Err(RailError::Unknown("connection refused".into())),
            Mode::Refuse => Err(RailError::Rejected("400".into())),
        }
    }
    async fn lookup(&self, o: &PayoutOrder) -> Result<Option<ProviderRecord>, RailError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .records
            .get(&o.idempotency_key)
            .cloned())
    }
    async fn recent(&self) -> Result<Vec<ProviderRecord>, RailError> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .records
            .values()
            .cloned()
            .collect())
    }
}

pub fn rails(gift: &FakeRail, stripe: &FakeRail) -> Rails {
    Rails::new()
        .with(Arc::new(gift.clone()))
        .with(Arc::new(stripe.clone()))
}

pub fn fakes() -> (FakeRail, FakeRail) {
    (FakeRail::new("giftcard"), FakeRail::new("stripe_connect"))
}
