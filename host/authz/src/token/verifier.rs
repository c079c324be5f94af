//! The verifier: parses tokens and checks every block's signature against the root public key,
//! once per distinct token.
//!
//! Invariant: the only way to obtain a [`VerifiedToken`] is through here; unverified bytes
//! never reach an authorizer. The cache of verified tokens is bounded and evicts the least
//! useful entries (quick_cache's scan-resistant policy): a flood of distinct tokens from one
//! client cannot push out the tokens every other client keeps presenting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder;
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey, UnverifiedBiscuit};
use capgate_core::vocab;

use super::error::unreadable;
use super::{MAX_TOKEN_LEN, TokenError, VerifiedToken};

/// The run limits a token's own Datalog is read under when no config says otherwise: those of
/// `[guard]`'s defaults. (biscuit-auth's own default allows 1 ms, which a busy machine can
/// exceed on a legitimate token.)
pub fn default_limits() -> AuthorizerLimits {
    AuthorizerLimits {
        max_facts: 1000,
        max_iterations: 100,
        max_time: Duration::from_millis(20),
    }
}

/// A verified approval.
#[derive(Debug, Clone)]
pub struct Approval {
    /// Who approved (the `approver` fact of the authority block).
    pub by: String,
    /// The approval token's revocation ids, hex; a revoked approval is refused.
    pub revocation_ids: Vec<String>,
}

/// Counters the tests and benchmarks read.
#[derive(Debug, Default)]
pub struct VerifierStats {
    /// Tokens answered from the cache.
    pub hits: AtomicU64,
    /// Tokens that verified and were read (cache misses that succeeded).
    pub verified: AtomicU64,
}

/// Verifies tokens against the root public key.
pub struct Verifier {
    root: PublicKey,
    limits: AuthorizerLimits,
    // Keyed by the token text: a kilobyte of base64 hashed on every request, so a fast hash
    // (foldhash, quick_cache's default); a collision costs a string comparison, never a wrong
    // answer.
    cache: quick_cache::sync::Cache<Arc<str>, Arc<VerifiedToken>>,
    stats: VerifierStats,
}

impl Verifier {
    /// A verifier for `root`, caching up to `capacity` verified tokens.
    pub fn new(root: PublicKey, capacity: usize) -> Self {
        Self::with_limits(root, capacity, default_limits())
    }

    /// A verifier that reads tokens under the given run limits.
    pub fn with_limits(root: PublicKey, capacity: usize, limits: AuthorizerLimits) -> Self {
        Verifier {
            root,
            limits,
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
            stats: VerifierStats::default(),
        }
    }

    /// The root public key.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// Counters.
    pub fn stats(&self) -> &VerifierStats {
        &self.stats
    }

    /// Parses and verifies a base64 token. The signature check runs once per distinct token;
    /// afterwards the verified token comes from the cache. Expiry and revocation are *not*
    /// checked here: they change with time, a signature does not.
    pub fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge(token.len()));
        }
        if let Some(hit) = self.cache.get(token) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        let verified = Arc::new(self.verify_uncached(token)?);
        self.stats.verified.fetch_add(1, Ordering::Relaxed);
        self.cache.insert(Arc::from(token), Arc::clone(&verified));
        Ok(verified)
    }

    /// Verifies without consulting or filling the cache.
    pub fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        VerifiedToken::from_biscuit(self.signed(token)?, &self.limits)
    }

    /// Parses a base64 token and checks every block's signature against the root key.
    fn signed(&self, token: &str) -> Result<Biscuit, TokenError> {
        UnverifiedBiscuit::from_base64(token)
            .map_err(TokenError::Malformed)?
            .verify(self.root)
            .map_err(TokenError::BadSignature)
    }

    /// Reads an approval token (see [`mint_approval`](super::mint_approval)): verified against
    /// the root key, every check of every block passing at `now` (so unexpired), exactly one
    /// approver, and bound to `agent` and `tenant` when it is bound at all. Revocation is the
    /// caller's to check.
    pub fn verify_approval(
        &self,
        token: &str,
        agent: &str,
        tenant: &str,
        now: SystemTime,
    ) -> Result<Approval, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::NotApproval("the approval is empty".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge(token.len()));
        }
        let biscuit = self.signed(token)?;
        let mut authorizer = AuthorizerBuilder::new()
            .set_limits(self.limits.clone())
            .fact(builder::fact(vocab::TIME, &[builder::date(&now)]))
            .and_then(|b| b.code(format!("allow if {}($a);", vocab::APPROVER)))
            .and_then(|b| b.build(&biscuit))
            .map_err(unreadable)?;
        authorizer.authorize().map_err(|e| match e {
            biscuit_auth::error::Token::RunLimit(_) => TokenError::TooComplex(e),
            _ => TokenError::NotApproval(
                "it has expired, or it is not an approval (no `approver` fact)".into(),
            ),
        })?;
        // Queries see the authority block only: a block appended later cannot add an approver.
        let names = |authorizer: &mut biscuit_auth::Authorizer, fact: &str| {
            authorizer
                .query(format!("data($a) <- {fact}($a)").as_str())
                .map(|facts: Vec<(String,)>| facts.into_iter().map(|(n,)| n).collect::<Vec<_>>())
                .map_err(unreadable)
        };
        let by = names(&mut authorizer, vocab::APPROVER)?;
        let [by] = by.as_slice() else {
            return Err(TokenError::NotApproval(format!(
                "it names {} approvers; exactly one is needed",
                by.len()
            )));
        };
        let agents = names(&mut authorizer, vocab::APPROVES_AGENT)?;
        if !agents.is_empty() && !agents.iter().any(|a| a == agent) {
            return Err(TokenError::NotApproval(format!(
                "it approves agent {} only, and `{agent}` asked",
                agents.join(", ")
            )));
        }
        let tenants = names(&mut authorizer, vocab::APPROVES_TENANT)?;
        if !tenants.is_empty() && !tenants.iter().any(|t| t == tenant) {
            return Err(TokenError::NotApproval(format!(
                "it approves tenant {} only, and an agent of `{tenant}` asked",
                tenants.join(", ")
            )));
        }
        Ok(Approval {
            by: by.clone(),
            revocation_ids: biscuit
                .revocation_identifiers()
                .iter()
                .map(hex::encode)
                .collect(),
        })
    }

    /// Forgets every cached token.
    pub fn clear(&self) {
        self.cache.clear();
    }
}
