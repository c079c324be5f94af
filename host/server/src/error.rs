//! capgate-server's error: what keeps the server from starting or serving. Decisions are not
//! errors (see capgate-authz); this is configuration, stores, logs and sockets.

use std::path::PathBuf;

/// Everything that can go wrong in capgate-server outside of a single call's decision.
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
    /// The configuration file cannot be read.
    #[error("{file}: cannot read the file")]
    ConfigIo {
        /// The file.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root key or a policy is unusable.
    #[error(transparent)]
    Authz(#[from] capgate_authz::Error),
    /// A tool cannot be hosted.
    #[error("tool registry")]
    Registry(#[from] capgate_core::Error),
    /// A token could not be built or read.
    #[error(transparent)]
    Token(#[from] capgate_authz::TokenError),
    /// A task request was refused, or could not be served.
    #[error(transparent)]
    Issuance(#[from] capgate_authz::IssuanceError),
    /// The task store failed.
    #[error("task store {}: {doing}", path.display())]
    Store {
        /// The database.
        path: PathBuf,
        /// What capgate was doing.
        doing: &'static str,
        /// The database error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored record does not parse (written by a newer capgate, or damaged).
    #[error("task store {}: a stored {what} does not parse", path.display())]
    Record {
        /// The database.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The shared (PostgreSQL) store failed, or did not answer within `[store] timeout`.
    #[error("task store {store}: {doing}")]
    Shared {
        /// The database, without its password.
        store: String,
        /// What capgate was doing.
        doing: &'static str,
        /// The database error, or the timeout.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Nothing was heard from the shared store for longer than `[store] max_staleness`:
    /// revocations made by other replicas may have been missed.
    #[error(
        "task store {store}: not heard from for {} (more than [store] max_staleness = {}); revocations made elsewhere may have been missed",
        humantime::format_duration(*silent),
        humantime::format_duration(*max)
    )]
    Stale {
        /// The database, without its password.
        store: String,
        /// How long since the store last answered (rounded to milliseconds).
        silent: std::time::Duration,
        /// `[store] max_staleness`.
        max: std::time::Duration,
    },
    /// The store's schema is newer than this capgate.
    #[error(
        "task store {store}: schema version {found} is newer than this capgate understands ({known}); upgrade capgate"
    )]
    SchemaTooNew {
        /// The database.
        store: String,
        /// The version found.
        found: i64,
        /// The newest version known here.
        known: i64,
    },
    /// The audit log cannot be opened or written.
    #[error("audit log {}: {doing}", path.display())]
    Audit {
        /// The audit file.
        path: PathBuf,
        /// What capgate was doing.
        doing: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Telemetry could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// An OTLP exporter could not be built.
    #[error("telemetry: cannot build the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The MCP service failed.
    #[error("{context}")]
    Mcp {
        /// What capgate was doing.
        context: &'static str,
        /// The rmcp error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A socket, pipe or file operation failed.
    #[error("{context}")]
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
