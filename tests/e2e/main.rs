//! End-to-end tests: the real `tessera` binary on the real shared test data, checked against
//! counts computed here, independently, from the raw JSON. One test binary, one module per
//! capability.

mod support;

mod audit;
mod broken_input;
mod cohorts;
mod consent;
mod consoles;
mod corpus;
mod deid;
mod dp;
mod flight;
mod formats;
mod http;
mod licenses;
mod me;
mod notebooks;
mod payouts;
mod postgres;
mod privacy;
mod providers;
mod query;
mod refusals;
mod reingest;
mod release;
mod summary;
