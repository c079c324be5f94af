//! The host crate's error type: one enum, each message naming the thing that is wrong and the fix.

use std::path::PathBuf;

/// Everything that can go wrong in capgate-host outside of a single call's decision.
///
/// A call that the guard refuses is not an error but a [`Denial`](crate::guard::Denial); a tool
/// that fails returns a [`ToolError`](crate::tool::ToolError).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("{file}: {}{message}", if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
    Config {
        /// The file (or "the embedded default config").
        file: String,
        /// The dotted key, when one is to blame.
        key: String,
        /// What was expected.
        message: String,
    },
    /// A policy file does not parse or cannot be read.
    #[error("{file}:{line}: {message}")]
    Policy {
        /// The policy file.
        file: String,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The root key is missing, unreadable or malformed.
    #[error("root key {}: {message}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A token could not be built, parsed or verified.
    #[error(transparent)]
    Token(#[from] crate::capability::TokenError),
    /// A task request was refused by the issuance policy or is malformed.
    #[error(transparent)]
    Issuance(#[from] crate::issuance::IssuanceError),
    /// The task store failed.
    #[error("task store {}: {message}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A tool could not be registered.
    #[error("tool registry: {0}")]
    Registry(String),
    /// The audit log cannot be opened or written.
    #[error("audit log {}: {message}", path.display())]
    Audit {
        /// The audit file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Telemetry could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A socket, pipe or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What capgate was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An I/O error with what capgate was doing at the time.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
