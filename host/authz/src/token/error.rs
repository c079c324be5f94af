//! Why a token was refused or could not be built.

/// Largest token accepted, in characters of base64. Real task tokens are well under 4 KiB;
/// anything near this size is an attack or a mistake, refused before parsing.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token was refused or could not be built. Every variant is the token's (or its
/// presenter's) fault: a fault of capgate's own is never one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was presented.
    #[error(
        "no token presented: send `Authorization: Bearer <token>` (HTTP) or set CAPGATE_TOKEN (stdio)"
    )]
    Missing,
    /// The token is larger than [`MAX_TOKEN_LEN`].
    #[error("token is {0} bytes, over the {MAX_TOKEN_LEN}-byte limit")]
    TooLarge(usize),
    /// Not base64, not a Biscuit, or truncated.
    #[error("malformed token")]
    Malformed(#[source] biscuit_auth::error::Token),
    /// Presented the wrong way (two Authorization headers, another scheme, a `_meta` token that
    /// is not a string or does not derive from the session's).
    #[error("{0}")]
    Presentation(String),
    /// A signature does not verify against capgate's root key (forged, altered, or issued by
    /// another root key).
    #[error("token signature does not verify against this server's root key")]
    BadSignature(#[source] biscuit_auth::error::Format),
    /// The token verifies but lacks the facts capgate needs.
    #[error("token lacks {0}; mint agent tokens with `capgate token mint`")]
    MissingFact(&'static str),
    /// Evaluating the token's own Datalog exceeds the run limits: it can never be authorized.
    #[error("token's Datalog exceeds the run limits ([guard] max_facts, max_iterations, max_time)")]
    TooComplex(#[source] biscuit_auth::error::Token),
    /// The token's expiry has passed.
    #[error("token expired at {0}")]
    Expired(String),
    /// One of the token's blocks has been revoked (its task ended or expired).
    #[error("token revoked: block {block} (revocation id {id}) was revoked{}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Revoked {
        /// Index of the revoked block.
        block: usize,
        /// Its revocation id, hex.
        id: String,
        /// Why it was revoked.
        reason: Option<String>,
    },
    /// What was asked for cannot be a token (no agent, no right, a date past 9999, ...).
    #[error("cannot build token: {0}")]
    Invalid(String),
    /// The Biscuit library refused to build or encode it.
    #[error("cannot build token")]
    Build(#[source] biscuit_auth::error::Token),
    /// Presented as an approval, the token is not a valid one for this request.
    #[error(
        "not a valid approval: {0}; the operator mints approvals with `capgate token approval --by NAME [--agent ID]`"
    )]
    NotApproval(String),
}

impl TokenError {
    /// A short, stable name for telemetry (`capgate.deny.reason`).
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::TooLarge(_) => "token_too_large",
            TokenError::Malformed(_) | TokenError::Presentation(_) => "token_malformed",
            TokenError::BadSignature(_) => "token_bad_signature",
            TokenError::MissingFact(_) => "token_missing_fact",
            TokenError::TooComplex(_) => "run_limit",
            TokenError::Expired(_) => "token_expired",
            TokenError::Revoked { .. } => "token_revoked",
            TokenError::Invalid(_) | TokenError::Build(_) => "token_build",
            TokenError::NotApproval(_) => "approval_invalid",
        }
    }
}

/// A token-library error as one of ours, run limits told apart.
pub(crate) fn unreadable(e: biscuit_auth::error::Token) -> TokenError {
    match e {
        biscuit_auth::error::Token::RunLimit(_) => TokenError::TooComplex(e),
        other => TokenError::Malformed(other),
    }
}
