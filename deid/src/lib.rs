//! `tessera-deid`: de-identification of tables by generalization over hierarchies.
//!
//! Hierarchies (ARX CSV or generated), dictionary-encoded quasi-identifiers, the lattice of
//! full-domain generalizations with record suppression, ARX's information-loss metrics, the
//! globally optimal search (Flash-style pruning and roll-up), Mondrian local recoding,
//! l-diversity and t-closeness, re-identification risk, the TOML policy with Safe Harbor
//! transforms, and the pipeline over Polars frames and CSV/Parquet files behind `tessera deid`.
//!
//! Must not: do I/O beyond the frames and files it is handed, or know about databases, HTTP or
//! licenses.

pub mod dataset;
pub mod error;
pub mod events;
pub mod flash;
pub mod frame;
pub mod generate;
pub mod hierarchy;
pub mod io;
pub mod lattice;
pub mod metrics;
pub mod mondrian;
pub mod policy;
pub mod risk;
pub mod rollup;
pub mod safe_harbor;
pub mod search;
pub mod sensitive;

#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod property_tests;

pub use dataset::{Dataset, Quasi};
pub use error::{DeidError, Result};
pub use hierarchy::Hierarchy;
pub use lattice::{Evaluation, Privacy};
pub use metrics::{Losses, Metric};
