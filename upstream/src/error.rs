//! capgate-upstream's error: an upstream that cannot be configured, started or hosted.

/// Why the gateway cannot host its upstreams.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key of one `[[upstream]]` table is unusable at start (a `${VAR}` not set, say).
    #[error("upstream `{upstream}`, key `{key}`: {message}")]
    Config {
        /// The upstream's name.
        upstream: String,
        /// The key within its table.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Two `[[upstream]]` tables with one name.
    #[error("two [[upstream]] tables are named `{0}`; names must be unique")]
    DuplicateName(String),
    /// A hosted tool cannot be registered.
    #[error("upstream `{upstream}`")]
    Register {
        /// The upstream's name.
        upstream: String,
        /// What the registry refused.
        #[source]
        source: capgate_core::Error,
    },
}
