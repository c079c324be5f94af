//! The built-in tools' config sections, `[tools.fs]` and `[tools.http_fetch]`: typed here, where
//! the tools live, and parsed by capgate with the rest of `capgate.toml`.
//!
//! Invariant: a section that exists has its paths absolute (relative to the config file) and
//! its limits positive.

use std::path::{Path, PathBuf};
use std::time::Duration;

use capgate_core::Section;
use serde::Deserialize;

/// `[tools.fs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Host the filesystem tools at all.
    pub enabled: bool,
    /// The directory the tools are confined to. Created if missing.
    pub root: PathBuf,
    /// Largest file `fs_read` returns, in bytes.
    pub max_read_bytes: u64,
    /// Largest content `fs_write` accepts, in bytes.
    pub max_write_bytes: u64,
    /// Most entries `fs_list` returns.
    pub max_list_entries: usize,
    /// Most matches `fs_search` returns.
    pub max_search_results: usize,
    /// Most files `fs_search` opens.
    pub max_search_files: usize,
    /// Paths the tools must never reach even when they lie under the root: capgate's own
    /// state (root key, task store, audit log). Set by the binary from the rest of the config,
    /// not read from the file.
    #[serde(skip)]
    pub hidden: Vec<PathBuf>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            enabled: true,
            root: PathBuf::from("workspace"),
            max_read_bytes: 1024 * 1024,
            max_write_bytes: 1024 * 1024,
            max_list_entries: 1000,
            max_search_results: 100,
            max_search_files: 10_000,
            hidden: Vec::new(),
        }
    }
}

impl Section for FsConfig {
    fn finish(&mut self, base: &Path) -> Vec<(String, String)> {
        if self.root.is_relative() {
            self.root = base.join(&self.root);
        }
        let mut problems = Vec::new();
        for (key, value) in [
            ("max_read_bytes", self.max_read_bytes),
            ("max_write_bytes", self.max_write_bytes),
            ("max_list_entries", self.max_list_entries as u64),
            ("max_search_results", self.max_search_results as u64),
            ("max_search_files", self.max_search_files as u64),
        ] {
            if value == 0 {
                problems.push((key.to_owned(), "expected a positive number".to_owned()));
            }
        }
        problems
    }
}

/// `[tools.http_fetch]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpFetchConfig {
    /// Host the `http_fetch` tool at all.
    pub enabled: bool,
    /// Largest response body returned, in bytes; the rest is cut off and said so.
    pub max_bytes: u64,
    /// Whole-request time limit.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HttpFetchConfig {
    fn default() -> Self {
        HttpFetchConfig {
            enabled: true,
            max_bytes: 1024 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Section for HttpFetchConfig {
    fn finish(&mut self, _base: &Path) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.timeout.is_zero() {
            problems.push((
                "timeout".to_owned(),
                "expected a positive duration".to_owned(),
            ));
        }
        if self.max_bytes == 0 {
            problems.push((
                "max_bytes".to_owned(),
                "expected a positive number".to_owned(),
            ));
        }
        problems
    }
}

/// The sections of every built-in tool.
#[derive(Debug, Clone, Default)]
pub struct BuiltinConfig {
    /// `[tools.fs]`.
    pub fs: FsConfig,
    /// `[tools.http_fetch]`.
    pub http_fetch: HttpFetchConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `examples/capgate.toml` spells out every key with its default: the built-in sections of
    /// it must parse to exactly the defaults here.
    #[test]
    fn the_reference_config_holds_the_defaults() {
        let text = include_str!("../../examples/capgate.toml");
        let doc: toml::Table = toml::from_str(text).unwrap();
        let tools = doc["tools"].as_table().unwrap();
        let mut fs: FsConfig = tools["fs"].clone().try_into().unwrap();
        let http: HttpFetchConfig = tools["http_fetch"].clone().try_into().unwrap();
        assert!(fs.finish(Path::new("/etc/capgate")).is_empty());
        let mut default = FsConfig::default();
        default.finish(Path::new("/etc/capgate"));
        assert_eq!(fs.root, PathBuf::from("/etc/capgate/workspace"));
        assert_eq!(fs.root, default.root);
        assert_eq!(fs.max_read_bytes, default.max_read_bytes);
        assert_eq!(fs.max_search_files, default.max_search_files);
        assert_eq!(http.timeout, HttpFetchConfig::default().timeout);
        assert_eq!(http.max_bytes, HttpFetchConfig::default().max_bytes);
    }

    #[test]
    fn limits_must_be_positive() {
        let mut http = HttpFetchConfig {
            timeout: Duration::ZERO,
            ..HttpFetchConfig::default()
        };
        let problems = http.finish(Path::new("/"));
        assert_eq!(problems[0].0, "timeout");
        let mut fs = FsConfig {
            max_read_bytes: 0,
            ..FsConfig::default()
        };
        assert_eq!(fs.finish(Path::new("/"))[0].0, "max_read_bytes");
    }
}
