//! The root key: it signs agent tokens and approvals; its public half verifies every token.
//!
//! Invariant: the private key file is never readable by others, not even for a moment (it is
//! created 0600 under a temporary name and moved into place), and an existing key is never
//! replaced unless asked: every token it signed would stop verifying.

use std::io::Write as _;
use std::path::Path;

use biscuit_auth::{KeyPair, PrivateKey, PublicKey};

use crate::error::Error;

/// The root key pair.
pub struct RootKey {
    keypair: KeyPair,
}

impl RootKey {
    /// A fresh Ed25519 key.
    pub fn generate() -> Self {
        RootKey {
            keypair: KeyPair::new(),
        }
    }

    /// A root key from its text form (`ed25519-private/<hex>`, as `keys init` writes it).
    pub fn from_text(text: &str) -> Result<Self, biscuit_auth::error::Format> {
        let private: PrivateKey = text.trim().parse()?;
        Ok(RootKey {
            keypair: KeyPair::from(&private),
        })
    }

    /// Reads a key file written by [`RootKey::write`] (`ed25519-private/<hex>`).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::KeyIo {
            path: path.to_path_buf(),
            doing: "cannot read it; create one with `capgate keys init`",
            source,
        })?;
        let private: PrivateKey = text.trim().parse().map_err(|source| Error::KeyFormat {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(RootKey {
            keypair: KeyPair::from(&private),
        })
    }

    /// Writes the private key with mode 0600. Refuses to replace an existing file unless `force`.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), Error> {
        let io = |doing: &'static str| {
            move |source: std::io::Error| Error::KeyIo {
                path: path.to_path_buf(),
                doing,
                source,
            }
        };
        if path.exists() && !force {
            return Err(Error::KeyExists {
                path: path.to_path_buf(),
            });
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io("cannot create its directory"))?;
        // tempfile creates the file 0600 with O_EXCL under a random name in the same directory,
        // so the rename below is atomic and no one else can have opened it.
        let mut tmp =
            tempfile::NamedTempFile::new_in(dir).map_err(io("cannot create a temporary file"))?;
        writeln!(tmp, "{}", self.keypair.private().to_prefixed_string())
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(io("cannot write"))?;
        let placed = if force {
            tmp.persist(path).map(|_| ())
        } else {
            // Another `keys init` may have won the race since the check above.
            tmp.persist_noclobber(path).map(|_| ())
        };
        placed.map_err(|e| io("cannot move into place")(e.error))
    }

    /// Loads the key at `path`, creating it when missing. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), Error> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let key = Self::generate();
        key.write(path, false)?;
        Ok((key, true))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.keypair.public()
    }

    /// The public key in Biscuit's text form, `ed25519/<hex>`.
    pub fn public_text(&self) -> String {
        self.keypair.public().to_string()
    }

    /// Signs `data` with the root key (the audit log's checkpoints); `None` for a root key that
    /// is not Ed25519 (biscuit also allows P-256, which capgate does not generate). Anyone
    /// holding the public key checks it with [`verify_signature`].
    pub fn sign(&self, data: &[u8]) -> Option<Vec<u8>> {
        use ed25519_dalek::Signer as _;
        if self.keypair.algorithm() != biscuit_auth::format::schema::public_key::Algorithm::Ed25519
        {
            return None;
        }
        let private = self.keypair.private().to_bytes();
        let seed = <[u8; 32]>::try_from(private.as_slice()).ok()?;
        Some(
            ed25519_dalek::SigningKey::from_bytes(&seed)
                .sign(data)
                .to_bytes()
                .to_vec(),
        )
    }

    pub(crate) fn keypair(&self) -> &KeyPair {
        &self.keypair
    }
}

/// Whether `signature` is the root key's signature of `data` ([`RootKey::sign`]).
pub fn verify_signature(public: &PublicKey, data: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (
        <[u8; 32]>::try_from(public.to_bytes().as_slice()),
        ed25519_dalek::Signature::from_slice(signature),
    ) else {
        return false;
    };
    ed25519_dalek::VerifyingKey::from_bytes(&key).is_ok_and(|k| k.verify_strict(data, &sig).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_private_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/root.key");
        let key = RootKey::generate();
        key.write(&path, false).unwrap();
        assert!(
            key.write(&path, false).is_err(),
            "no overwrite without force"
        );
        let loaded = RootKey::load(&path).unwrap();
        assert_eq!(loaded.public_text(), key.public_text());
        assert!(key.public_text().starts_with("ed25519/"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let signed = key.sign(b"checkpoint").expect("an Ed25519 key signs");
        assert!(verify_signature(&key.public(), b"checkpoint", &signed));
        assert!(!verify_signature(&key.public(), b"checkpoinT", &signed));
        assert!(!verify_signature(
            &RootKey::generate().public(),
            b"checkpoint",
            &signed
        ));
        let other = RootKey::generate();
        other.write(&path, true).unwrap();
        assert_eq!(
            RootKey::load(&path).unwrap().public_text(),
            other.public_text()
        );
    }
}
