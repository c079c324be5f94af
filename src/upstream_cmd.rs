//! `capgate upstream list|pin`, and the pin book `serve` hands the gateway: the task store.
//!
//! Pins live in the task store (SQLite by default, PostgreSQL with `[store] url`), so every
//! replica and the CLI see the same ones. The CLI starts no upstream: `pin` accepts what a
//! running capgate last saw, which is what it held back.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::bail;
use capgate_core::time::rfc3339;
use capgate_server::config::Config;
use capgate_server::store::{self, PinRecord, TaskStore};
use capgate_upstream::{PinBook, PinError};

use crate::cli::UpstreamCommand;

/// The task store as the gateway's pin book.
pub(crate) struct StorePins(pub(crate) Arc<dyn TaskStore>);

impl PinBook for StorePins {
    fn observe(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        definition: &str,
    ) -> Result<String, PinError> {
        let rec =
            self.0
                .observe_definition(upstream, tool, digest, definition, SystemTime::now())?;
        Ok(rec.pinned_digest)
    }

    fn pinned(&self, upstream: &str) -> Result<HashMap<String, String>, PinError> {
        Ok(self
            .0
            .pins(Some(upstream))?
            .into_iter()
            .map(|p| (p.tool, p.pinned_digest))
            .collect())
    }
}

pub(crate) fn command(config: &Config, cmd: &UpstreamCommand) -> anyhow::Result<ExitCode> {
    let gateway = crate::offline_gateway(config)?;
    let configured = gateway.status();
    let store = store::open(config)?;
    match cmd {
        UpstreamCommand::List { json } => {
            let pins = store.pins(None)?;
            if *json {
                let ups: Vec<_> = configured
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "name": u.name,
                            "target": u.target,
                            "hosted": u.hosted,
                            "pins": pins.iter().filter(|p| p.upstream == u.name).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                let orphans: Vec<_> = pins
                    .iter()
                    .filter(|p| !configured.iter().any(|u| u.name == p.upstream))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"upstreams": ups, "unconfigured_pins": orphans})
                    )?
                );
            } else {
                print!("{}", render(&configured, &pins));
            }
        }
        UpstreamCommand::Pin { name, tool } => {
            if !configured.iter().any(|u| &u.name == name) {
                let names: Vec<_> = configured.iter().map(|u| u.name.as_str()).collect();
                bail!(
                    "no upstream `{name}` in {}; configured: {}",
                    config.source.describe(),
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            }
            let known = store.pins(Some(name))?;
            if let Some(t) = tool
                && !known.iter().any(|p| &p.tool == t)
            {
                bail!(
                    "upstream `{name}` has no tool `{t}` that capgate has seen; `capgate upstream list` shows its tools"
                );
            }
            let changed = store.pin_seen(name, tool.as_deref(), SystemTime::now())?;
            if changed.is_empty() {
                println!("upstream `{name}`: nothing to pin; every definition seen is pinned");
            }
            for p in &changed {
                let was = known
                    .iter()
                    .find(|k| k.tool == p.tool)
                    .map_or("?", |k| short(&k.pinned_digest));
                println!(
                    "upstream `{name}`: pinned `{}` at {} (was {was}); a capgate that started before the change hosts it after a restart",
                    p.tool,
                    short(&p.pinned_digest),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn short(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

fn at(ms: i64) -> String {
    rfc3339(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

fn render(configured: &[capgate_upstream::UpstreamStatus], pins: &[PinRecord]) -> String {
    let mut out = String::new();
    if configured.is_empty() {
        out.push_str("no [[upstream]] is configured\n");
    }
    for u in configured {
        let mine: Vec<&PinRecord> = pins.iter().filter(|p| p.upstream == u.name).collect();
        let state = match mine.iter().map(|p| p.seen_at).max() {
            Some(ms) => format!("last listed {}", at(ms)),
            None => "never listed by a capgate yet".to_owned(),
        };
        let _ = writeln!(out, "{} ({}): {state}", u.name, u.target);
        let _ = writeln!(out, "  hosts: {}", u.hosted.join(", "));
        for p in mine {
            if p.matches() {
                let _ = writeln!(
                    out,
                    "  {:<24} pinned   {} since {}",
                    p.tool,
                    short(&p.pinned_digest),
                    at(p.pinned_at)
                );
            } else {
                let _ = writeln!(
                    out,
                    "  {:<24} CHANGED  pinned {}, listed {} at {}: held back until `capgate upstream pin {}`",
                    p.tool,
                    short(&p.pinned_digest),
                    short(&p.seen_digest),
                    at(p.seen_at),
                    u.name
                );
            }
        }
    }
    for p in pins
        .iter()
        .filter(|p| !configured.iter().any(|u| u.name == p.upstream))
    {
        let _ = writeln!(
            out,
            "(not configured) {}__{}: pinned {}",
            p.upstream,
            p.tool,
            short(&p.pinned_digest)
        );
    }
    out
}
