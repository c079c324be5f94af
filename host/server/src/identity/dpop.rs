//! DPoP proofs (RFC 9449): a JWT the client signs for each request with a key it keeps, naming
//! the method and URL of that request and, with a bound token, the token's hash.
//!
//! Invariant: a proof is accepted once (its `jti`, per key, is remembered for as long as its
//! `iat` is acceptable), only for the request it names, only within [`IAT_PAST`] /
//! [`IAT_FUTURE`] of now, only signed by the key in its own header with an asymmetric algorithm;
//! and what identifies the key afterwards is its RFC 7638 thumbprint, nothing else.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How old a proof may be.
pub const IAT_PAST: Duration = Duration::from_secs(60);
/// How far ahead of capgate's clock a proof may be.
pub const IAT_FUTURE: Duration = Duration::from_secs(10);
/// Proofs remembered at once; past it (after forgetting the stale ones) a proof is refused
/// rather than a replay let through.
const MAX_REMEMBERED: usize = 200_000;

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The key's RFC 7638 SHA-256 thumbprint (base64url).
    pub jkt: String,
    /// The proof's `jti`.
    pub jti: String,
}

/// What the proof is checked against: the request it came with.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `POST`, `GET`, ...
    pub method: &'a str,
    /// The `Host` the request was sent to.
    pub host: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The access token presented with it, when one is bound (then `ath` must be its hash).
    pub token: Option<&'a str>,
}

/// Why a proof was refused, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DPoP proof refused: {0}")]
pub struct ProofError(pub String);

fn bad(m: impl Into<String>) -> ProofError {
    ProofError(m.into())
}

/// Checks proofs and remembers the ones used.
#[derive(Default)]
pub struct Proofs {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_key: HashMap<[u8; 32], SystemTime>,
    order: VecDeque<(SystemTime, [u8; 32])>,
}

impl Proofs {
    /// Checks `proof` against `req`; once accepted, the same proof is refused.
    pub fn verify(&self, proof: &str, req: Request<'_>) -> Result<Proof, ProofError> {
        let header = jsonwebtoken::decode_header(proof)
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        let raw = super::raw_header(proof).map_err(|e| bad(e.to_string()))?;
        if raw.contains_key("crit") {
            return Err(bad(
                "its header has `crit` extensions, which capgate does not implement",
            ));
        }
        // The proof carries the public key; a private one in it is a client leaking its secret
        // (RFC 9449 §4.3 forbids it), and nothing to build on.
        if raw.get("jwk").and_then(Value::as_object).is_some_and(|k| {
            ["d", "p", "q", "dp", "dq", "qi", "k"]
                .iter()
                .any(|m| k.contains_key(*m))
        }) {
            return Err(bad("its `jwk` holds private key material"));
        }
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(bad("its `typ` must be `dpop+jwt`"));
        }
        if !super::asymmetric(header.alg) {
            return Err(bad(format!(
                "algorithm {:?} is not accepted; sign with an asymmetric key",
                header.alg
            )));
        }
        let jwk = header
            .jwk
            .as_ref()
            .ok_or_else(|| bad("its header carries no `jwk`"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("its `jwk`: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(proof, &key, &v)
            .map_err(|e| {
                bad(format!(
                    "its signature does not verify with its own key ({e})"
                ))
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| bad("it has no usable `jti`"))?
            .to_owned();
        let htm = text("htm").ok_or_else(|| bad("it has no `htm`"))?;
        if htm != req.method {
            return Err(bad(format!(
                "it was made for {htm}, not for this {} request",
                req.method
            )));
        }
        let htu = text("htu").ok_or_else(|| bad("it has no `htu`"))?;
        if !same_target(htu, req.host, req.path) {
            return Err(bad(format!(
                "it was made for `{htu}`, not for this request's URL"
            )));
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("it has no numeric `iat`"))?;
        let issued = UNIX_EPOCH
            .checked_add(Duration::from_secs(iat))
            .ok_or_else(|| bad("its `iat` is not a time"))?;
        let now = SystemTime::now();
        if issued + IAT_PAST < now || issued > now + IAT_FUTURE {
            return Err(bad(format!(
                "its `iat` is outside the accepted window ({}s before to {}s after now); make a fresh proof for each request",
                IAT_PAST.as_secs(),
                IAT_FUTURE.as_secs()
            )));
        }
        if let Some(token) = req.token {
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(token.as_bytes()));
            match text("ath") {
                Some(ath) if ath == want => {}
                Some(_) => return Err(bad("its `ath` is not the hash of the token presented")),
                None => {
                    return Err(bad(
                        "it has no `ath`; a proof for a bound token must carry the token's hash",
                    ));
                }
            }
        }
        let jkt = thumbprint(jwk)?;
        self.remember(&jkt, &jti, issued + IAT_PAST + IAT_FUTURE)?;
        Ok(Proof { jkt, jti })
    }

    fn remember(&self, jkt: &str, jti: &str, until: SystemTime) -> Result<(), ProofError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        while let Some((t, _)) = seen.order.front() {
            if *t > now {
                break;
            }
            if let Some((_, k)) = seen.order.pop_front() {
                seen.by_key.remove(&k);
            }
        }
        let key: [u8; 32] = Sha256::digest(format!("{jkt}:{jti}").as_bytes()).into();
        if seen.by_key.contains_key(&key) {
            return Err(bad("it was used before; a proof serves one request"));
        }
        if seen.by_key.len() >= MAX_REMEMBERED {
            return Err(bad(
                "capgate is remembering too many recent proofs to check this one is new; retry in a minute",
            ));
        }
        seen.by_key.insert(key, until);
        // Entries expire in the order they were added give or take the iat spread; a later
        // one stuck behind an earlier one is dropped a little late, never early.
        seen.order.push_back((until, key));
        Ok(())
    }
}

/// The RFC 7638 SHA-256 thumbprint of a public key: the hash of its required members, in
/// lexicographic order, as compact JSON (jsonwebtoken 9 has no such function). A symmetric key
/// has no business in a proof.
fn thumbprint(jwk: &Jwk) -> Result<String, ProofError> {
    // Members in lexicographic order, no whitespace. The values are base64url and curve
    // names, which JSON needs no escapes for; anything else is refused rather than guessed.
    let plain = |v: &str| -> Result<String, ProofError> {
        if v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Ok(v.to_owned())
        } else {
            Err(bad("its `jwk` has a member that is not base64url"))
        }
    };
    let curve = |c: &jsonwebtoken::jwk::EllipticCurve| {
        serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .ok_or_else(|| bad("its `jwk` names no known curve"))
    };
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            curve(&p.curve)?,
            plain(&p.x)?,
            plain(&p.y)?
        ),
        AlgorithmParameters::RSA(p) => {
            format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                plain(&p.e)?,
                plain(&p.n)?
            )
        }
        AlgorithmParameters::OctetKeyPair(p) => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            curve(&p.curve)?,
            plain(&p.x)?
        ),
        AlgorithmParameters::OctetKey(_) => return Err(bad("its `jwk` is a symmetric key")),
    };
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(canonical.as_bytes())))
}

/// Whether `htu` names this request's target: the same host (case-insensitively, default
/// ports ignored) and path; `http` or `https`, since a TLS-terminating proxy may sit in front.
fn same_target(htu: &str, host: &str, path: &str) -> bool {
    let Ok(u) = url::Url::parse(htu) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") || u.query().is_some() || u.fragment().is_some() {
        return false;
    }
    let Some(h) = u.host_str() else {
        return false;
    };
    let authority = match u.port() {
        Some(p) => format!("{h}:{p}"),
        None => h.to_owned(),
    };
    let want = host
        .trim()
        .trim_end_matches(":80")
        .trim_end_matches(":443")
        .to_ascii_lowercase();
    authority.eq_ignore_ascii_case(&want) && u.path() == path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_host_and_path() {
        assert!(same_target(
            "http://127.0.0.1:8080/mcp",
            "127.0.0.1:8080",
            "/mcp"
        ));
        assert!(same_target(
            "https://API.example/mcp",
            "api.example:443",
            "/mcp"
        ));
        assert!(!same_target(
            "http://127.0.0.1:8080/v1/tasks",
            "127.0.0.1:8080",
            "/mcp"
        ));
        assert!(!same_target(
            "http://127.0.0.1:8081/mcp",
            "127.0.0.1:8080",
            "/mcp"
        ));
        assert!(!same_target(
            "http://127.0.0.1:8080/mcp?x=1",
            "127.0.0.1:8080",
            "/mcp"
        ));
        assert!(!same_target(
            "ftp://127.0.0.1:8080/mcp",
            "127.0.0.1:8080",
            "/mcp"
        ));
    }
}
