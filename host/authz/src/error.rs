//! capgate-authz's error: what keeps the authorization layer from starting (the root key, the
//! policies). Decisions are not errors: a refused call is a [`Denial`](crate::guard::Denial), a
//! refused task an [`IssuanceError`](crate::issuance::IssuanceError).

use std::path::PathBuf;

/// Why the root key or a policy is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key file cannot be read or written.
    #[error("root key {}: {doing}", path.display())]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// What failed, and what to do.
        doing: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a Biscuit private key.
    #[error("root key {}: not a Biscuit private key (expected `ed25519-private/<hex>`)", path.display())]
    KeyFormat {
        /// The key file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: biscuit_auth::error::Format,
    },
    /// A key is already there.
    #[error(
        "root key {}: already exists; refusing to overwrite a root key (every token it signed would stop verifying). Pass --force to replace it",
        path.display()
    )]
    KeyExists {
        /// The key file.
        path: PathBuf,
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
    /// A policy file cannot be read.
    #[error("{file}: cannot read the policy file")]
    PolicyIo {
        /// The policy file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
