//! One issuer's signing keys: a JWKS fetched from a URL or read from a file, cached, and looked
//! at again when a token names a `kid` the cache does not hold (key rotation, no restart).
//!
//! Invariant: a refresh happens at most once per [`MIN_REFRESH`] per issuer, whatever the tokens
//! presented say, so a flood of made-up `kid`s costs the issuer one request a second; a fetch
//! is bounded in time and size; a key is used only with the algorithm it declares (when it
//! declares one) and only for signatures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;

use super::IdentityError;

/// Least time between two looks at an issuer's keys.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Longest a fetch of the keys may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Url(String),
    File(PathBuf),
}

struct Cached {
    set: Option<JwkSet>,
    looked: Option<Instant>,
}

/// An issuer's keys.
pub struct KeySet {
    issuer: String,
    source: Source,
    /// Built only for a URL source (loading the TLS roots costs start-up time).
    client: Option<reqwest::Client>,
    cached: Mutex<Cached>,
}

impl KeySet {
    /// The keys of `issuer` at `jwks` (an `http(s)://` URL, or a file path).
    pub fn new(issuer: &str, jwks: &str) -> Self {
        let source = if jwks.starts_with("https://") || jwks.starts_with("http://") {
            Source::Url(jwks.to_owned())
        } else {
            Source::File(PathBuf::from(jwks))
        };
        let client = matches!(source, Source::Url(_))
            .then(|| {
                crate::install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("capgate/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .ok()
            })
            .flatten();
        KeySet {
            issuer: issuer.to_owned(),
            source,
            client,
            cached: Mutex::new(Cached {
                set: None,
                looked: None,
            }),
        }
    }

    /// The key `kid` for a signature made with `alg`.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, IdentityError> {
        let mut cached = self.cached.lock().await;
        let known = cached.set.as_ref().and_then(|s| s.find(kid)).cloned();
        let jwk = match known {
            Some(j) => j,
            None => {
                let due = cached.looked.is_none_or(|t| t.elapsed() >= MIN_REFRESH);
                if !due {
                    return Err(IdentityError::Refused(format!(
                        "key `{kid}` is not in the key set of issuer `{}`",
                        self.issuer
                    )));
                }
                cached.looked = Some(Instant::now());
                match self.fetch().await {
                    Ok(set) => cached.set = Some(set),
                    // Keys held from before stay in use; without any, capgate cannot check.
                    Err(message) if cached.set.is_none() => {
                        return Err(IdentityError::KeysUnavailable {
                            issuer: self.issuer.clone(),
                            message,
                        });
                    }
                    Err(message) => tracing::warn!(
                        target: "capgate",
                        issuer = %self.issuer,
                        "could not refresh the issuer's keys: {message}"
                    ),
                }
                cached
                    .set
                    .as_ref()
                    .and_then(|s| s.find(kid))
                    .cloned()
                    .ok_or_else(|| {
                        IdentityError::Refused(format!(
                            "key `{kid}` is not in the key set of issuer `{}`",
                            self.issuer
                        ))
                    })?
            }
        };
        usable(&jwk, kid, alg)?;
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| IdentityError::Refused(format!("key `{kid}` cannot be used: {e}")))
    }

    async fn fetch(&self) -> Result<JwkSet, String> {
        let bytes = match &self.source {
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || std::fs::read(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("reading the key file: {e}"))?
            }
            Source::Url(url) => {
                let client = match &self.client {
                    Some(c) => c.clone(),
                    None => return Err("capgate could not build its HTTP client".into()),
                };
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("fetching {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("fetching {url}: HTTP {}", resp.status()));
                }
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| format!("reading {url}: {e}"))?;
                body.to_vec()
            }
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("the key set is not a JWKS: {e}"))
    }
}

/// A key serves a signature only when it is a signing key and, if it names its algorithm, that
/// is the token's.
fn usable(jwk: &Jwk, kid: &str, alg: Algorithm) -> Result<(), IdentityError> {
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err(IdentityError::Refused(format!(
            "key `{kid}` is not a signing key"
        )));
    }
    if let Some(declared) = jwk.common.key_algorithm {
        let same = format!("{declared:?}") == format!("{alg:?}");
        if !same {
            return Err(IdentityError::Refused(format!(
                "key `{kid}` is for {declared:?}, not {alg:?}"
            )));
        }
    }
    Ok(())
}
