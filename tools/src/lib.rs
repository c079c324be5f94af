//! capgate-tools: the tools capgate hosts out of the box, built on capgate-core's Tool API and
//! nothing else of capgate's.
//!
//! * `fs_read`, `fs_list`, `fs_write`, `fs_search`: confined to one root directory ([`fs`]);
//! * `http_fetch`: one bounded GET, redirects not followed ([`http`]);
//! * [`config`]: their `[tools.fs]` and `[tools.http_fetch]` sections.
//!
//! Invariant: the tools are handed to a registry and never kept: nothing outside the door can
//! call them.

pub mod config;
pub mod fs;
pub mod http;

use std::path::PathBuf;
use std::sync::Arc;

use capgate_core::Registry;

pub use config::{BuiltinConfig, FsConfig, HttpFetchConfig};

/// Why the built-in tools could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The fs tools' root cannot be created or opened.
    #[error("opening the fs tools' root {}", path.display())]
    FsRoot {
        /// The configured root.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `http_fetch`'s HTTP client cannot be built.
    #[error("building the HTTP client of http_fetch")]
    HttpClient(#[source] reqwest::Error),
    /// A tool was refused by the registry.
    #[error(transparent)]
    Registry(#[from] capgate_core::Error),
}

/// Registers the built-in tools the config enables.
pub fn register_builtin(registry: &mut Registry, config: &BuiltinConfig) -> Result<(), Error> {
    if config.fs.enabled {
        let root = fs::FsRoot::open(&config.fs).map_err(|source| Error::FsRoot {
            path: config.fs.root.clone(),
            source,
        })?;
        let root = Arc::new(root);
        registry.register(fs::fs_read(Arc::clone(&root)))?;
        registry.register(fs::fs_list(Arc::clone(&root)))?;
        registry.register(fs::fs_write(Arc::clone(&root)))?;
        registry.register(fs::fs_search(root))?;
    }
    if config.http_fetch.enabled {
        registry.register(http::http_fetch(&config.http_fetch).map_err(Error::HttpClient)?)?;
    }
    Ok(())
}
