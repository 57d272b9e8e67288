#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Integration tests of `tessera-payouts` against a real SQLite file (and PostgreSQL where a
//! server answers): the ledger's invariants under random operations, the payout state machine
//! with failing providers, webhooks, and the Stripe and gift-card rails against local HTTP
//! servers that check what the real APIs require.

mod support;

mod flows;
mod http_rails;
mod postgres;
mod properties;
mod webhooks;
