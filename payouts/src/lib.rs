//! `tessera-payouts`: money returned to patients.
//!
//! A double-entry ledger in the same SQL store as the rest of Tessera ([`ledger`]), license
//! revenue recognized when the payment provider says an invoice is paid and its patient share
//! allocated to the contributing patients to the cent ([`revenue`], [`allocate`]), survey
//! incentives credited once per survey ([`incentives`]), payouts through rails behind one trait
//! with idempotency keys derived from the payout row ([`payout`], [`rails`]), verified webhooks
//! ([`webhook`]) and reconciliation against the providers' records ([`reconcile`]).
//!
//! The crate depends on no other Tessera crate: the binary tells it of events (a fee paid, a
//! survey completed, a release's contributors). Amounts are `i64` minor units with a currency
//! ([`money`]); no float touches money.

pub mod allocate;
pub mod closure;
pub mod earnings;
pub mod fault;
pub mod incentives;
pub mod ledger;
pub mod money;
pub mod payout;
pub mod rails;
pub mod reconcile;
pub mod revenue;
mod store;
pub mod tax;
pub mod webhook;

use sqlx::{AnyPool, Row};

pub use ledger::{Account, AccountKind, Balance, Entry, NewTransaction, Posted, Side, Source};
pub use money::{Currency, Money};
pub use store::Backend;

/// What can go wrong, in words that say what to do. No message carries a patient's identified
/// data: patients appear by internal id only.
#[derive(Debug, thiserror::Error)]
pub enum PayoutsError {
    #[error("payouts store: {what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(
        "transaction `{key}` does not balance in {currency}: debits {debits}, credits {credits}"
    )]
    Unbalanced {
        key: String,
        currency: String,
        debits: i64,
        credits: i64,
    },
    #[error(
        "transaction `{0}` was refused: an account's balance would go below zero (nothing was posted)"
    )]
    InsufficientFunds(String),
    #[error(
        "idempotency key `{0}` was used before for a different transaction: use a new key for a new movement"
    )]
    KeyReused(String),
    /// Another writer won a race; the operation may be tried again.
    #[error("the ledger was busy with another writer; try again")]
    Contended,
    #[error("webhook refused: {0}")]
    Webhook(String),
    #[error("{rail}: {message}")]
    Rail { rail: String, message: String },
}

/// The payouts store: ledger, studies, invoices, payouts and their holds.
#[derive(Debug, Clone)]
pub struct Payouts {
    pool: AnyPool,
    backend: Backend,
}

impl Payouts {
    /// Connects to the database the catalog uses and brings the payouts tables up to date.
    pub async fn connect(url: &str) -> Result<Payouts, PayoutsError> {
        let (pool, backend) = store::connect(url).await?;
        Ok(Payouts { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Posts one transaction in its own database transaction.
    pub async fn post(&self, t: &NewTransaction) -> Result<Posted, PayoutsError> {
        let mut out = self.post_batch(std::slice::from_ref(t)).await?;
        Ok(out.remove(0))
    }

    /// Posts several transactions in one database transaction: all or none.
    pub async fn post_batch(&self, ts: &[NewTransaction]) -> Result<Vec<Posted>, PayoutsError> {
        retry(|| async {
            let mut tx = self.begin().await?;
            let mut out = Vec::with_capacity(ts.len());
            for t in ts {
                out.push(ledger::post_in(&mut tx, t).await?);
            }
            tx.commit()
                .await
                .map_err(store::sql_err("committing ledger transactions"))?;
            Ok(out)
        })
        .await
    }

    pub(crate) async fn begin(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, PayoutsError> {
        self.pool
            .begin()
            .await
            .map_err(store::sql_err("starting a database transaction"))
    }

    /// Posts the reversal of transaction `id` (every entry on the other side), once: a second
    /// reversal of the same transaction is a replay of the first.
    pub async fn reverse(&self, id: &str) -> Result<Posted, PayoutsError> {
        let original = self
            .transaction(id)
            .await?
            .ok_or_else(|| PayoutsError::NotFound(format!("no ledger transaction `{id}`")))?;
        if original.reverses.is_some() {
            return Err(PayoutsError::Invalid(format!(
                "transaction `{id}` is itself a reversal: post a new transaction instead"
            )));
        }
        let accounts = self.accounts_of(&original).await?;
        let entries = original
            .entries
            .iter()
            .zip(accounts)
            .map(|(e, account)| Entry {
                account,
                side: e.side.opposite(),
                amount: e.amount,
            })
            .collect();
        self.post(&NewTransaction {
            key: format!("reversal:{id}"),
            kind: "reversal".into(),
            source: original.source.clone(),
            entries,
            reverses: Some(id.to_string()),
        })
        .await
    }

    async fn accounts_of(
        &self,
        t: &ledger::PostedTransaction,
    ) -> Result<Vec<Account>, PayoutsError> {
        let mut out = Vec::with_capacity(t.entries.len());
        for e in &t.entries {
            let row =
                sqlx::query("SELECT kind, owner, currency FROM ledger_accounts WHERE id = $1")
                    .bind(&e.account_id)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(store::sql_err("reading an account"))?;
            let kind: String = row
                .try_get("kind")
                .map_err(store::sql_err("reading an account"))?;
            let owner: String = row
                .try_get("owner")
                .map_err(store::sql_err("reading an account"))?;
            let currency: String = row
                .try_get("currency")
                .map_err(store::sql_err("reading an account"))?;
            out.push(Account::new(
                kind_from_code(&kind)?,
                owner,
                Currency::parse(&currency)?,
            ));
        }
        Ok(out)
    }

    /// One transaction with its entries.
    pub async fn transaction(
        &self,
        id: &str,
    ) -> Result<Option<ledger::PostedTransaction>, PayoutsError> {
        let Some(row) = sqlx::query("SELECT id, idempotency_key, kind, source, reverses, created_at FROM ledger_transactions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store::sql_err("reading a transaction"))?
        else {
            return Ok(None);
        };
        let entries = sqlx::query("SELECT account_id, side, amount, currency FROM ledger_entries WHERE transaction_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(store::sql_err("reading entries"))?
            .iter()
            .map(|r| {
                let c = store::sql_err("reading an entry");
                Ok(ledger::PostedEntry {
                    account_id: r.try_get("account_id").map_err(c)?,
                    side: ledger::entry_side(&r.try_get::<String, _>("side").map_err(store::sql_err("reading an entry"))?),
                    amount: r.try_get("amount").map_err(store::sql_err("reading an entry"))?,
                    currency: r.try_get("currency").map_err(store::sql_err("reading an entry"))?,
                })
            })
            .collect::<Result<Vec<_>, PayoutsError>>()?;
        transaction_from(&row, entries).map(Some)
    }

    /// The balance of one account (zero when it was never used).
    pub async fn balance(&self, account: &Account) -> Result<i64, PayoutsError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT balance FROM ledger_accounts WHERE id = $1")
                .bind(account.id())
                .fetch_optional(&self.pool)
                .await
                .map_err(store::sql_err("reading a balance"))?;
        Ok(v.unwrap_or(0))
    }

    /// Every account with its balance, in id order.
    pub async fn balances(&self) -> Result<Vec<Balance>, PayoutsError> {
        sqlx::query("SELECT id, kind, owner, currency, balance FROM ledger_accounts ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(store::sql_err("reading balances"))?
            .iter()
            .map(ledger::balance_from)
            .collect()
    }

    /// Checks the ledger's invariants from the entries themselves: every transaction balances
    /// per currency, every stored balance equals the sum of its entries, no account that may
    /// not go negative is negative. Returns the problems found (empty when sound).
    pub async fn verify_ledger(&self) -> Result<Vec<String>, PayoutsError> {
        let mut problems = Vec::new();
        let rows = sqlx::query(
            "SELECT transaction_id, currency, CAST(SUM(CASE WHEN side = 'D' THEN amount ELSE 0 END) AS BIGINT) AS d, CAST(SUM(CASE WHEN side = 'C' THEN amount ELSE 0 END) AS BIGINT) AS c FROM ledger_entries GROUP BY transaction_id, currency",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store::sql_err("summing entries"))?;
        for r in rows {
            let d: i64 = r.try_get("d").map_err(store::sql_err("summing entries"))?;
            let c: i64 = r.try_get("c").map_err(store::sql_err("summing entries"))?;
            if d != c {
                let id: String = r
                    .try_get("transaction_id")
                    .map_err(store::sql_err("summing entries"))?;
                problems.push(format!(
                    "transaction {id} does not balance: debits {d}, credits {c}"
                ));
            }
        }
        let rows = sqlx::query(
            "SELECT a.id, a.balance, a.allow_negative, a.normal, CAST(COALESCE(SUM(CASE WHEN e.side = a.normal THEN e.amount ELSE -e.amount END), 0) AS BIGINT) AS computed FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id GROUP BY a.id, a.balance, a.allow_negative, a.normal",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store::sql_err("recomputing balances"))?;
        for r in rows {
            let c = || store::sql_err("recomputing balances");
            let id: String = r.try_get("id").map_err(c())?;
            let stored: i64 = r.try_get("balance").map_err(c())?;
            let computed: i64 = r.try_get("computed").map_err(c())?;
            let negative_ok: i64 = r.try_get("allow_negative").map_err(c())?;
            if stored != computed {
                problems.push(format!(
                    "account {id}: stored balance {stored}, entries sum to {computed}"
                ));
            }
            if negative_ok == 0 && stored < 0 {
                problems.push(format!("account {id} is negative ({stored})"));
            }
        }
        Ok(problems)
    }

    /// The id of the transaction posted under `key`, if any.
    pub async fn transaction_by_key(&self, key: &str) -> Result<Option<String>, PayoutsError> {
        sqlx::query_scalar("SELECT id FROM ledger_transactions WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(store::sql_err("reading a transaction"))
    }

    /// Number of ledger transactions.
    pub async fn transaction_count(&self) -> Result<i64, PayoutsError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM ledger_transactions")
            .fetch_one(&self.pool)
            .await
            .map_err(store::sql_err("counting transactions"))
    }
}

fn transaction_from(
    row: &sqlx::any::AnyRow,
    entries: Vec<ledger::PostedEntry>,
) -> Result<ledger::PostedTransaction, PayoutsError> {
    let c = || store::sql_err("reading a transaction");
    let source: String = row.try_get("source").map_err(c())?;
    Ok(ledger::PostedTransaction {
        id: row.try_get("id").map_err(c())?,
        key: row.try_get("idempotency_key").map_err(c())?,
        kind: row.try_get("kind").map_err(c())?,
        source: serde_json::from_str(&source).unwrap_or_default(),
        reverses: row.try_get("reverses").map_err(c())?,
        created_at: row.try_get("created_at").map_err(c())?,
        entries,
    })
}

pub(crate) fn kind_from_code(code: &str) -> Result<AccountKind, PayoutsError> {
    AccountKind::ALL
        .into_iter()
        .find(|k| k.code() == code)
        .ok_or_else(|| PayoutsError::Invalid(format!("unknown account kind `{code}`")))
}

/// Runs `f` again (up to 20 times, with a short pause) while it reports a lost race.
pub(crate) async fn retry<T, F, Fut>(mut f: F) -> Result<T, PayoutsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PayoutsError>>,
{
    let mut attempt = 0u32;
    loop {
        match f().await {
            Err(PayoutsError::Contended) if attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
            }
            Err(PayoutsError::Sql { source, .. }) if store::contended(&source) && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}
