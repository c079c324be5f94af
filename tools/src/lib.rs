//! capgate-tools: the tools capgate hosts out of the box, built on the host's [`Tool`] API.
//!
//! * `fs_read`, `fs_list`, `fs_write`, `fs_search`: confined to one root directory;
//! * `http_fetch`: one bounded GET, redirects not followed.
//!
//! [`Tool`]: capgate_host::Tool

pub mod fs;
pub mod http;

use std::sync::Arc;

use capgate_host::config::ToolsConfig;
use capgate_host::{Error, Registry};

/// Registers the built-in tools the config enables.
pub fn register_builtin(registry: &mut Registry, config: &ToolsConfig) -> Result<(), Error> {
    if config.fs.enabled {
        let root = fs::FsRoot::open(&config.fs).map_err(|e| {
            Error::io(
                format!("opening the fs tools' root {}", config.fs.root.display()),
                e,
            )
        })?;
        let root = Arc::new(root);
        registry.register(fs::fs_read(Arc::clone(&root)))?;
        registry.register(fs::fs_list(Arc::clone(&root)))?;
        registry.register(fs::fs_write(Arc::clone(&root)))?;
        registry.register(fs::fs_search(root))?;
    }
    if config.http_fetch.enabled {
        registry.register(http::http_fetch(&config.http_fetch).map_err(Error::Registry)?)?;
    }
    Ok(())
}
