//! Reading a config: a file, or the embedded default; paths resolved; errors that name the key.

use std::path::{Path, PathBuf};

use super::{Config, ConfigSource};
use crate::error::Error;

impl Config {
    /// The embedded default, resolved against `base` (the working directory).
    pub fn embedded(base: &Path) -> Result<Self, Error> {
        let mut config = Config::default();
        config.resolve_paths(base);
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigIo {
            file: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text that came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let file = path.display().to_string();
        let syntax = |e: toml::de::Error| Error::Config {
            file: file.clone(),
            key: String::new(),
            message: e.to_string().trim_end().to_owned(),
        };
        let de = toml::Deserializer::parse(text).map_err(syntax)?;
        let mut config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| Error::Config {
                file: file.clone(),
                key: key_of(e.path()),
                message: explain(e.inner().message()),
            })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.source = ConfigSource::File(path.to_path_buf());
        config.resolve_paths(&base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        self.state_dir = abs(&self.state_dir);
        for p in [
            &mut self.keys.root_key_file,
            &mut self.policy.issuance,
            &mut self.policy.invocation,
            &mut self.audit.path,
            &mut self.dev.headerless_token_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = abs(p);
        }
        for issuer in &mut self.identity.jwt {
            if !issuer.jwks.contains("://") && !Path::new(&issuer.jwks).is_absolute() {
                issuer.jwks = base.join(&issuer.jwks).display().to_string();
            }
        }
        // The tool packs resolve their own paths, against the same directory.
        self.tools
            .attach(self.source.describe(), base.to_path_buf());
        self.upstream
            .attach(self.source.describe(), base.to_path_buf());
    }
}

/// The dotted key of a serde path (`.` is the document itself).
pub(super) fn key_of(path: &serde_path_to_error::Path) -> String {
    let key = path.to_string();
    if key == "." { String::new() } else { key }
}

/// serde's message, with what a duration looks like when a duration was expected.
pub(super) fn explain(message: &str) -> String {
    if message.ends_with("expected a duration") {
        format!("{message} such as \"20ms\", \"15m\" or \"1h\"")
    } else {
        message.to_owned()
    }
}
