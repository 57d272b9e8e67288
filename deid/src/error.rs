//! The deid error type. Messages name columns, rows, files and lines; never cell values, which
//! may be identifying.

use std::path::PathBuf;

pub type Result<T, E = DeidError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    /// A hierarchy file or definition is malformed.
    #[error("hierarchy {name}: {message}")]
    Hierarchy { name: String, message: String },

    /// The input does not fit the policy (a missing column, a value outside its hierarchy).
    #[error("{message}")]
    Input { message: String },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A bug or broken invariant: please report it.
    #[error("internal error (please report this): {0}")]
    Internal(String),
}
