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
/// Keys older than this are looked at again (an issuer that drops a compromised key stops
/// being trusted with it within minutes, not at the next restart).
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// Longest keys are kept in use while every look at the issuer fails.
pub const MAX_STALE: Duration = Duration::from_secs(3600);
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

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// An issuer's keys.
pub struct KeySet {
    issuer: String,
    source: Source,
    /// Built only for a URL source (loading the TLS roots costs start-up time).
    client: Option<reqwest::Client>,
    keys: std::sync::RwLock<Option<Keys>>,
    /// Held by the one refresh in progress (nobody waits on it); when the last one ended.
    refresh: Mutex<Option<Instant>>,
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
            keys: std::sync::RwLock::new(None),
            refresh: Mutex::new(None),
        }
    }

    /// `(the key, whether keys are held at all, whether they are due a fresh look)`.
    fn cached(&self, kid: &str) -> (Option<Jwk>, bool, bool) {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        match keys.as_ref() {
            Some(k) => (
                k.set.find(kid).cloned(),
                true,
                k.fetched.elapsed() >= MAX_AGE,
            ),
            None => (None, false, true),
        }
    }

    fn unknown(&self, kid: &str) -> IdentityError {
        IdentityError::Refused(format!(
            "key `{kid}` is not in the key set of issuer `{}`",
            self.issuer
        ))
    }

    fn unavailable(&self, why: &str) -> IdentityError {
        IdentityError::KeysUnavailable {
            issuer: self.issuer.clone(),
            message: why.to_owned(),
        }
    }

    /// The key `kid` for a signature made with `alg`.
    ///
    /// Known and fresh: used at once. Unknown, or the set older than [`MAX_AGE`]: one request
    /// looks again (at most once per [`MIN_REFRESH`]) while the others go on with what is held,
    /// never waiting on the issuer. A failed look keeps the held keys for at most
    /// [`MAX_STALE`]; without any, capgate cannot check (503), which is not the presenter's
    /// fault.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, IdentityError> {
        let (mut found, mut held, due) = self.cached(kid);
        if found.is_none() || due {
            match self.refresh.try_lock() {
                Ok(mut last) if last.is_none_or(|t| t.elapsed() >= MIN_REFRESH) => {
                    let fetched = self.fetch().await;
                    *last = Some(Instant::now());
                    let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
                    match fetched {
                        Ok(set) => {
                            *keys = Some(Keys {
                                set,
                                fetched: Instant::now(),
                            })
                        }
                        Err(message) => {
                            tracing::warn!(
                                target: "capgate",
                                issuer = %self.issuer,
                                "could not fetch the issuer's keys: {message}"
                            );
                            if keys
                                .as_ref()
                                .is_some_and(|k| k.fetched.elapsed() > MAX_STALE)
                            {
                                *keys = None;
                            }
                        }
                    }
                    drop(keys);
                    (found, held, _) = self.cached(kid);
                }
                // Another request is looking, or one just did: go on with what is held.
                _ => {}
            }
        }
        let jwk = match found {
            Some(j) => j,
            None if held => return Err(self.unknown(kid)),
            None => {
                return Err(self.unavailable("no keys could be fetched yet; retry in a moment"));
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
                let Some(client) = &self.client else {
                    return Err("capgate could not build its HTTP client".into());
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
