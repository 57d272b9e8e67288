//! The catalog's error type. It separates the caller's mistakes (bad input, unknown patient,
//! a missing key) from faults of the store or bugs. Messages never carry identified values:
//! they name files, fields, ids and what to do, not what a field contained.

use std::path::PathBuf;

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The master key is missing, malformed, or does not open a stored value.
    #[error("{message}")]
    Key { message: String },

    /// The caller asked for something invalid (an unknown purpose, a bad date, ...).
    #[error("{message}")]
    InvalidInput { message: String },

    /// Something the caller named does not exist.
    #[error("{what} not found; {hint}")]
    NotFound { what: String, hint: String },

    /// Reading an input or data file failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The database refused or failed.
    #[error("database error while {context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A bug or a broken invariant: please report it.
    #[error("internal error (please report this): {0}")]
    Internal(String),
}

impl CatalogError {
    pub fn internal(message: impl Into<String>) -> Self {
        CatalogError::Internal(message.into())
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        CatalogError::InvalidInput {
            message: message.into(),
        }
    }

    /// Whether the error is the caller's to fix (as opposed to a fault of the system).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            CatalogError::Key { .. }
                | CatalogError::InvalidInput { .. }
                | CatalogError::NotFound { .. }
        )
    }
}

/// Attaches what the store was doing to a sqlx error.
pub(crate) trait StoreContext<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> StoreContext<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| CatalogError::Store { context, source })
    }
}
