//! The `tessera` binary's library half: the HTTP API (axum), so that the binary, the
//! benchmarks and the tests serve the same router. The command line lives in `main.rs`.
//! Domain logic stays in the crates: handlers parse, call `tessera-catalog` and
//! `tessera-licensing`, and shape JSON.

pub mod api;
pub mod mail;
pub mod payouts;
pub mod records;
