//! `tessera-deid`: de-identification of tables by generalization over hierarchies.
//!
//! Status: the core of issue 3. Hierarchies (ARX CSV), dictionary-encoded quasi-identifiers,
//! lattice evaluation with k-anonymity and record suppression, ARX's information-loss metrics,
//! and an exact exhaustive search that reproduces ARX's published optima on Adult. Still to come:
//! the policy file, Flash-style pruning, Mondrian, l-diversity, t-closeness, risk, Polars frames
//! and Parquet/CSV I/O, and the `tessera deid` command.
//!
//! Must not: do I/O beyond the frames and files it is handed, or know about databases, HTTP or
//! licenses.

pub mod dataset;
pub mod error;
pub mod flash;
pub mod frame;
pub mod generate;
pub mod hierarchy;
pub mod io;
pub mod lattice;
pub mod metrics;
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
