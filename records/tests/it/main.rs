#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Integration tests of `tessera-records` against a real SQLite file, with local HTTP servers
//! standing in for the providers (identity proofing, FHIR servers, authorization servers).

mod support;

mod access;
mod helios;
mod identity;
mod postgres;
mod smart;
