//! Workload identity: an agent's platform vouches for it with a JWT, and capgate mints the
//! authority block for that workload itself; and DPoP proofs, which bind a task token to a key
//! its holder keeps.
//!
//! * this file: the trusted issuers (`[[identity.jwt]]`) and what a verified JWT becomes;
//! * [`jwks`]: each issuer's keys, fetched from a URL or read from a file, cached, refreshed
//!   once on an unknown `kid` (at most once a second);
//! * [`dpop`]: RFC 9449 proofs.
//!
//! Invariant: a workload JWT is accepted only from a configured issuer, signed with an
//! asymmetric algorithm by a key of that issuer's set (never `none`, never HMAC, never a key the
//! token names itself through `jwk`/`jku`/`x5u`/`x5c`), for capgate's audience, within its
//! lifetime; its rights are the issuer's configured `tools`/`resources`, never the token's
//! claims; and the authority block capgate mints for it expires no later than the JWT. A JWT or
//! a proof is never written anywhere in full: issuer, subject, `jti` and thumbprint only.

pub mod dpop;
pub mod jwks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use capgate_authz::token::{AgentGrant, RootKey, mint_agent_token};
use capgate_authz::{VerifiedToken, Verifier};
use capgate_core::door::Catalog;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::JwtIssuerConfig;
use jwks::KeySet;

/// Leeway on `exp` and `nbf`: clocks of a platform and of capgate differ by a little.
const LEEWAY: Duration = Duration::from_secs(30);
/// Longest an authority block minted for a workload lives.
const MAX_MINTED_TTL: Duration = Duration::from_secs(24 * 3600);
/// Verified JWTs remembered (their minted agent tokens), so that a session presenting the same
/// JWT on every request does not mint on every request.
const CACHE_ENTRIES: usize = 10_000;

/// Why a workload credential was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// The presenter's credential is not acceptable (401).
    #[error("workload token refused: {0}")]
    Refused(String),
    /// The issuer's keys cannot be had right now (capgate cannot check: 503).
    #[error("the keys of issuer `{issuer}` are unavailable: {message}")]
    KeysUnavailable {
        /// The issuer.
        issuer: String,
        /// What went wrong.
        message: String,
    },
    /// capgate could not mint the workload's authority block (its own fault).
    #[error("capgate could not mint a token for the workload: {0}")]
    Internal(String),
}

impl IdentityError {
    /// True when the refusal is capgate's (or the issuer's infrastructure's), not the
    /// presenter's.
    pub fn is_fault(&self) -> bool {
        !matches!(self, IdentityError::Refused(_))
    }
}

fn refused(m: impl Into<String>) -> IdentityError {
    IdentityError::Refused(m.into())
}

/// Who a verified workload JWT says the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The agent id (the issuer's `agent` template over the claims).
    pub agent: String,
    /// The tenant (the `tenant` template).
    pub tenant: String,
    /// `exp`.
    pub expires_at: SystemTime,
}

/// One trusted issuer.
struct Issuer {
    config: JwtIssuerConfig,
    /// The tenants it may vouch for; empty: any.
    tenants: Vec<String>,
    keys: KeySet,
    /// The issuer's `resources`, canonical per tool.
    prefixes: BTreeMap<String, Vec<String>>,
}

/// The trusted issuers of workload JWTs, and the agent tokens minted for verified ones.
pub struct Workloads {
    issuers: Vec<Issuer>,
    root: Arc<RootKey>,
    verifier: Arc<Verifier>,
    minted: quick_cache::sync::Cache<[u8; 32], (Arc<VerifiedToken>, SystemTime)>,
}

impl Workloads {
    /// The issuers of `configs`, whose `resources` are canonicalized by the hosted tools.
    pub(crate) fn new(
        configs: &[JwtIssuerConfig],
        known_tenants: &[String],
        catalog: &Catalog,
        root: Arc<RootKey>,
        verifier: Arc<Verifier>,
    ) -> Result<Self, String> {
        let mut issuers = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let mut prefixes = BTreeMap::new();
            for (tool, list) in &c.resources {
                let mut out = Vec::new();
                for raw in list {
                    out.push(catalog.canonical_prefix(tool, raw).map_err(|e| {
                        format!(
                            "identity.jwt[{i}].resources.{tool}: {}",
                            capgate_core::error::chain(&e)
                        )
                    })?);
                }
                prefixes.insert(tool.clone(), out);
            }
            for tool in &c.tools {
                if catalog.spec(tool).is_none() {
                    return Err(format!(
                        "identity.jwt[{i}].tools: `{tool}` is not hosted ({})",
                        catalog.names()
                    ));
                }
            }
            let tenants = if c.tenants.is_empty() {
                known_tenants.to_vec()
            } else {
                c.tenants.clone()
            };
            issuers.push(Issuer {
                tenants,
                keys: KeySet::new(&c.issuer, &c.jwks),
                config: c.clone(),
                prefixes,
            });
        }
        Ok(Workloads {
            issuers,
            root,
            verifier,
            minted: quick_cache::sync::Cache::new(CACHE_ENTRIES),
        })
    }

    /// True when no issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies a workload JWT and returns the agent token capgate mints for it: an authority
    /// block with the workload's agent and tenant, the issuer's rights, `workload($issuer,
    /// $subject)`, expiring with the JWT.
    pub async fn agent_token(
        &self,
        jwt: &str,
    ) -> Result<(Arc<VerifiedToken>, Workload), IdentityError> {
        let (workload, issuer) = self.verify(jwt).await?;
        let key: [u8; 32] = Sha256::digest(jwt.as_bytes()).into();
        if let Some((token, exp)) = self.minted.get(&key)
            && SystemTime::now() < exp
        {
            return Ok((token, workload));
        }
        let ttl = workload
            .expires_at
            .duration_since(SystemTime::now())
            .map_err(|_| refused("the token has expired"))?;
        let grant = AgentGrant {
            agent: workload.agent.clone(),
            tenant: workload.tenant.clone(),
            rights: issuer.config.tools.clone(),
            prefixes: issuer.prefixes.clone(),
            // Whole seconds, rounded down: never a moment past the JWT's own expiry, and never
            // longer than an agent token's default day, however far off the JWT's `exp` is.
            ttl: Some(Duration::from_secs(ttl.as_secs()).min(MAX_MINTED_TTL)),
            workload: Some((workload.issuer.clone(), workload.subject.clone())),
        };
        let biscuit = mint_agent_token(&self.root, &grant)
            .map_err(|e| IdentityError::Internal(capgate_core::error::chain(&e)))?;
        let encoded = biscuit
            .to_base64()
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let token = self
            .verifier
            .verify(&encoded)
            .map_err(|e| IdentityError::Internal(capgate_core::error::chain(&e)))?;
        self.minted
            .insert(key, (Arc::clone(&token), workload.expires_at));
        Ok((token, workload))
    }

    /// Verifies a workload JWT: its issuer, signature, audience and lifetime, and maps its
    /// claims to an agent and a tenant.
    async fn verify(&self, jwt: &str) -> Result<(Workload, &Issuer), IdentityError> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| {
            refused(format!(
                "its header cannot be read ({e}); `alg: none` and HMAC are never accepted"
            ))
        })?;
        // Extensions capgate does not understand must not be ignored (RFC 7515 §4.1.11).
        if raw_header(jwt)?.contains_key("crit") {
            return Err(refused(
                "its header has `crit` extensions, which capgate does not implement",
            ));
        }
        // A key the token names itself proves nothing: only the issuer's set counts.
        if header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return Err(refused(
                "it names its own key (`jwk`, `jku`, `x5u` or `x5c` header); only the issuer's configured key set is trusted",
            ));
        }
        if !asymmetric(header.alg) {
            return Err(refused(format!(
                "algorithm {:?} is not accepted; workload tokens must be signed with an asymmetric algorithm (RS*, PS*, ES*, EdDSA)",
                header.alg
            )));
        }
        let claims = unverified_claims(jwt)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("it has no `iss` claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or_else(|| refused(format!("issuer `{iss}` is not trusted here")))?;
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| refused("its header names no `kid`"))?;
        let key = issuer.keys.key(kid, header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&issuer.config.issuer]);
        v.set_audience(&[&issuer.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(jwt, &key, &v)
            .map_err(|e| refused(describe(&e)))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("its `sub` claim is missing or empty"))?
            .to_owned();
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| refused("its `exp` claim is not a number"))?;
        let agent = fill(&issuer.config.agent, &claims, "agent")?;
        let tenant = fill(&issuer.config.tenant, &claims, "tenant")?;
        if !issuer.tenants.is_empty() && !issuer.tenants.contains(&tenant) {
            return Err(refused(format!(
                "issuer `{}` may not vouch for tenant `{tenant}`",
                issuer.config.issuer
            )));
        }
        Ok((
            Workload {
                issuer: issuer.config.issuer.clone(),
                subject,
                agent,
                tenant,
                expires_at: UNIX_EPOCH
                    .checked_add(Duration::from_secs(exp))
                    .ok_or_else(|| refused("its `exp` is not a time"))?,
            },
            issuer,
        ))
    }
}

/// Whether a token could be a JWT (three dot-separated base64url parts) rather than a Biscuit
/// (base64url without dots).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

fn asymmetric(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(
        alg,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
    )
}

/// A JOSE header as JSON, for what jsonwebtoken's typed header leaves out (`crit`, private key
/// members of an embedded `jwk`).
pub(crate) fn raw_header(jwt: &str) -> Result<serde_json::Map<String, Value>, IdentityError> {
    use base64::Engine as _;
    let head = jwt.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| refused("its header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| refused("its header is not a JSON object"))
}

/// The claims before the signature is checked: only to find the issuer whose keys check it.
fn unverified_claims(jwt: &str) -> Result<serde_json::Map<String, Value>, IdentityError> {
    use base64::Engine as _;
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| refused("it is not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| refused("its payload is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| refused("its payload is not a JSON object"))
}

/// A template such as `"{sub}"` or `"tenant-{team}"` filled from string claims (a dotted name
/// reaches into objects: `{kubernetes.io.namespace}` tries the key as written first). A missing
/// or non-string claim refuses: an agent is never named by a guess.
fn fill(
    template: &str,
    claims: &serde_json::Map<String, Value>,
    what: &str,
) -> Result<String, IdentityError> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| IdentityError::Internal(format!("the {what} template is malformed")))?;
        let name = &rest[start + 1..start + end];
        let value = lookup(claims, name).ok_or_else(|| {
            refused(format!(
                "the claim `{name}` its {what} is taken from is missing or not a string"
            ))
        })?;
        out.push_str(value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    if out.trim().is_empty() {
        return Err(refused(format!("its {what} would be empty")));
    }
    Ok(out)
}

fn lookup<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    if let Some(v) = claims.get(name) {
        return v.as_str().filter(|s| !s.is_empty());
    }
    // Dotted path: the longest key prefix that names an object, then the rest inside it.
    let mut split = name.len();
    while let Some(dot) = name[..split].rfind('.') {
        if let Some(Value::Object(inner)) = claims.get(&name[..dot]) {
            return lookup(inner, &name[dot + 1..]);
        }
        split = dot;
    }
    None
}

/// A JWT library error in words a client can act on (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    match e.kind() {
        ExpiredSignature => "it has expired".into(),
        ImmatureSignature => "it is not valid yet (`nbf`)".into(),
        InvalidAudience => "its `aud` does not name this capgate".into(),
        InvalidIssuer => "its `iss` is not the configured issuer".into(),
        InvalidSignature => "its signature does not verify with the issuer's key".into(),
        InvalidAlgorithm => "its algorithm does not match the issuer's key".into(),
        MissingRequiredClaim(c) => format!("it has no `{c}` claim"),
        other => format!("it cannot be verified ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_from_string_claims_only() {
        let claims: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "system:serviceaccount:ci:builder",
            "team": "acme",
            "n": 3,
            "kubernetes.io": {"namespace": "ci"}
        }))
        .unwrap();
        assert_eq!(
            fill("{sub}", &claims, "agent").unwrap(),
            "system:serviceaccount:ci:builder"
        );
        assert_eq!(fill("t-{team}", &claims, "tenant").unwrap(), "t-acme");
        assert_eq!(
            fill("{kubernetes.io.namespace}", &claims, "tenant").unwrap(),
            "ci"
        );
        assert!(fill("{missing}", &claims, "tenant").is_err());
        assert!(
            fill("{n}", &claims, "tenant").is_err(),
            "numbers are not names"
        );
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.e30.sig"));
        assert!(!looks_like_jwt("En0KEwoEdGVzdBgDIgkKBwgKEgMYgAg"));
    }
}
