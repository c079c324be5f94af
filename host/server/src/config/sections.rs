//! `[tools.<pack>]`: the config tables tool packs own. capgate-server keeps them as raw TOML and
//! hands each to the pack that claims it, which parses it into its own typed struct
//! ([`capgate_core::Section`]); a table no pack claims is refused at startup.
//!
//! Invariant: a section is parsed with the same rules as the rest of the file: unknown keys are
//! refused and the error names the file and the dotted key (`tools.fs.root`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use capgate_core::Section;
use serde::Deserialize;

use super::load::{explain, key_of};
use crate::error::Error;

/// The `[tools.*]` tables, by pack name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ToolSections {
    tables: BTreeMap<String, toml::Value>,
    /// The file, for messages, and its directory, for relative paths (set by the loader).
    #[serde(skip)]
    origin: (String, PathBuf),
    /// Which tables a pack has taken.
    #[serde(skip)]
    claimed: Arc<Mutex<BTreeSet<String>>>,
}

impl ToolSections {
    pub(super) fn attach(&mut self, file: String, base: PathBuf) {
        self.origin = (file, base);
    }

    /// The directory relative paths in sections are resolved against.
    pub fn base(&self) -> &Path {
        &self.origin.1
    }

    /// Parses `[tools.<name>]` (its defaults when the file has none) and marks it claimed.
    pub fn section<T: Section>(&self, name: &str) -> Result<T, Error> {
        self.claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned());
        match self.tables.get(name) {
            None => finish(T::default(), &self.origin, &format!("tools.{name}")),
            Some(table) => parse(table, &self.origin, &format!("tools.{name}")),
        }
    }

    /// The names of tables no pack has claimed: typos, or packs this binary does not have.
    pub fn unclaimed(&self) -> Vec<String> {
        let claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        self.tables
            .keys()
            .filter(|k| !claimed.contains(*k))
            .cloned()
            .collect()
    }

    /// Refuses tables no pack claimed, naming what is known.
    pub fn check_claimed(&self) -> Result<(), Error> {
        let unclaimed = self.unclaimed();
        if unclaimed.is_empty() {
            return Ok(());
        }
        let known: Vec<String> = self
            .claimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        Err(Error::Config {
            file: self.origin.0.clone(),
            key: format!("tools.{}", unclaimed[0]),
            message: format!(
                "no tool pack of this capgate reads [tools.{}]; known: {}",
                unclaimed.join("], [tools."),
                known.join(", ")
            ),
        })
    }
}

/// Parses one table as a section and finishes it; errors name `prefix.key`.
fn parse<T: Section>(
    table: &toml::Value,
    origin: &(String, PathBuf),
    prefix: &str,
) -> Result<T, Error> {
    let section: T = serde_path_to_error::deserialize(table.clone()).map_err(|e| {
        let inner = key_of(e.path());
        Error::Config {
            file: origin.0.clone(),
            key: if inner.is_empty() {
                prefix.to_owned()
            } else {
                format!("{prefix}.{inner}")
            },
            message: explain(e.inner().message()),
        }
    })?;
    finish(section, origin, prefix)
}

fn finish<T: Section>(
    mut section: T,
    origin: &(String, PathBuf),
    prefix: &str,
) -> Result<T, Error> {
    let mut problems = section.finish(&origin.1);
    if problems.is_empty() {
        return Ok(section);
    }
    let (key, message) = problems.remove(0);
    let more: Vec<String> = problems
        .iter()
        .map(|(k, m)| format!("`{prefix}.{k}`: {m}"))
        .collect();
    Err(Error::Config {
        file: origin.0.clone(),
        key: format!("{prefix}.{key}"),
        message: if more.is_empty() {
            message
        } else {
            format!("{message}; {}", more.join("; "))
        },
    })
}

/// The `[[upstream]]` tables, kept raw for the gateway crate, which parses them into its own
/// typed struct (so capgate-server knows nothing of upstreams but that the key exists).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct UpstreamSections {
    tables: Vec<toml::Value>,
    #[serde(skip)]
    origin: (String, PathBuf),
}

impl UpstreamSections {
    pub(super) fn attach(&mut self, file: String, base: PathBuf) {
        self.origin = (file, base);
    }

    /// How many `[[upstream]]` tables the file has.
    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Whether the file has none.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Parses every table; an error names `upstream[i].key` and the file.
    pub fn entries<T: Section>(&self) -> Result<Vec<T>, Error> {
        self.tables
            .iter()
            .enumerate()
            .map(|(i, table)| parse(table, &self.origin, &format!("upstream[{i}]")))
            .collect()
    }
}
