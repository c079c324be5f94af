//! What serde cannot check: ranges, relations between keys, overlapping tenants.

use super::Config;
use crate::error::Error;

/// `{name}` groups, closed and not nested, with non-empty names.
fn well_formed_template(t: &str) -> bool {
    let mut open = None;
    for (i, c) in t.char_indices() {
        match (c, open) {
            ('{', None) => open = Some(i),
            ('}', Some(start)) if i > start + 1 => open = None,
            ('{', Some(_)) | ('}', _) => return false,
            _ => {}
        }
    }
    open.is_none()
}

impl Config {
    /// Checks what serde cannot: ranges, relations between keys, non-overlapping tenants.
    /// Reports every problem at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut bad = |key: &str, msg: String| problems.push((key.to_owned(), msg));
        if self.server.max_request_bytes < 1024 {
            bad(
                "server.max_request_bytes",
                "expected at least 1024 bytes".into(),
            );
        }
        if self.server.allowed_hosts.is_empty() {
            bad(
                "server.allowed_hosts",
                "expected at least one host name; [\"*\"] accepts any Host, which turns DNS-rebinding protection off".into(),
            );
        }
        if self
            .server
            .allowed_hosts
            .iter()
            .any(|h| h.trim().is_empty())
        {
            bad(
                "server.allowed_hosts",
                "expected non-empty host names".into(),
            );
        }
        for origin in &self.server.allowed_origins {
            if origin != "null" && !origin.contains("://") {
                bad(
                    "server.allowed_origins",
                    format!("`{origin}`: expected scheme://host[:port], or \"null\""),
                );
            }
        }
        let store = &self.store;
        if let Some(url) = &store.url
            && let Err(msg) = crate::store::PostgresTarget::parse(url)
        {
            bad("store.url", msg);
        }
        // Bounded above too: a store that may stay silent for hours is not one replicas share.
        let hour = std::time::Duration::from_secs(3600);
        if store.poll.is_zero() || store.poll > hour {
            bad(
                "store.poll",
                "expected a positive duration up to an hour, such as \"250ms\"".into(),
            );
        }
        if store.timeout.is_zero() || store.timeout > std::time::Duration::from_secs(60) {
            bad(
                "store.timeout",
                "expected a positive duration up to a minute, such as \"1s\"".into(),
            );
        }
        if store.max_staleness > hour {
            bad("store.max_staleness", "expected at most an hour".into());
        } else if store.max_staleness < store.poll.saturating_mul(2) {
            bad(
                "store.max_staleness",
                format!(
                    "expected at least twice store.poll ({}), or every missed poll would refuse calls",
                    humantime::format_duration(store.poll)
                ),
            );
        }
        if store.pool_size == 0 || store.pool_size > 256 {
            bad("store.pool_size", "expected 1 to 256 connections".into());
        }
        if self.policy.max_task_ttl.is_zero() {
            bad(
                "policy.max_task_ttl",
                "expected a positive duration such as \"1h\"".into(),
            );
        }
        if self.policy.default_task_ttl.is_zero() {
            bad(
                "policy.default_task_ttl",
                "expected a positive duration such as \"15m\"".into(),
            );
        }
        if self.guard.max_facts == 0 {
            bad("guard.max_facts", "expected a positive number".into());
        }
        if self.guard.max_iterations == 0 {
            bad("guard.max_iterations", "expected a positive number".into());
        }
        if self.guard.max_time.is_zero() {
            bad(
                "guard.max_time",
                "expected a positive duration such as \"20ms\"".into(),
            );
        }
        if self.guard.token_cache_entries == 0 {
            bad(
                "guard.token_cache_entries",
                "expected a positive number".into(),
            );
        }
        if self.audit.max_bytes < 4096 {
            bad("audit.max_bytes", "expected at least 4096 bytes".into());
        }
        if let Some(p) = &self.telemetry.otlp_protocol
            && !matches!(p.as_str(), "grpc" | "http/protobuf")
        {
            bad(
                "telemetry.otlp_protocol",
                format!("`{p}`: expected \"grpc\" or \"http/protobuf\""),
            );
        }
        for (name, tenant) in &self.tenants {
            if name.is_empty() {
                bad("tenants", "expected non-empty tenant names".into());
            }
            if tenant.resources.iter().any(String::is_empty) {
                bad(
                    &format!("tenants.{name}.resources"),
                    "an empty prefix would claim every resource; name the tenant's resources"
                        .into(),
                );
            }
        }
        let mut issuers = std::collections::BTreeSet::new();
        for (i, j) in self.identity.jwt.iter().enumerate() {
            let key = |k: &str| format!("identity.jwt[{i}].{k}");
            if j.issuer.trim().is_empty() {
                bad(&key("issuer"), "expected the issuer's `iss`".into());
            } else if !issuers.insert(j.issuer.clone()) {
                bad(
                    &key("issuer"),
                    format!("`{}` is configured twice", j.issuer),
                );
            }
            if j.audience.trim().is_empty() {
                bad(
                    &key("audience"),
                    "expected the audience tokens must name".into(),
                );
            }
            for (name, t) in [("agent", &j.agent), ("tenant", &j.tenant)] {
                if t.trim().is_empty() {
                    bad(&key(name), "expected a non-empty template".into());
                } else if !well_formed_template(t) {
                    bad(
                        &key(name),
                        format!(
                            "`{t}`: expected text and `{{claim}}` names, braces paired and not nested"
                        ),
                    );
                }
            }
            if j.tools.is_empty() {
                bad(
                    &key("tools"),
                    "expected at least one tool such a workload may use".into(),
                );
            }
            if let Some(tool) = j.resources.keys().find(|t| !j.tools.contains(t)) {
                bad(
                    &key("resources"),
                    format!("names `{tool}`, which is not in `tools`"),
                );
            }
            if let Some(rest) = j.jwks.strip_prefix("http://") {
                let host = rest.split(['/', ':']).next().unwrap_or_default();
                if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                    bad(
                        &key("jwks"),
                        "keys are fetched over https (plain http only from a loopback address): an attacker on the path could swap them".into(),
                    );
                }
            } else if !j.jwks.starts_with("https://") && j.jwks.contains("://") {
                bad(
                    &key("jwks"),
                    "expected an https:// URL or a file path".into(),
                );
            }
        }
        let a = &self.anomaly;
        if a.window.is_zero() || a.window > std::time::Duration::from_secs(7 * 24 * 3600) {
            bad(
                "anomaly.window",
                format!(
                    "expected a window between 1s and 7 days, not {}",
                    humantime::format_duration(a.window)
                ),
            );
        }
        for (i, entry) in a.sensitive.iter().enumerate() {
            if entry.trim().is_empty() {
                bad(
                    &format!("anomaly.sensitive[{i}]"),
                    "an empty entry would mark every resource sensitive; name a tool or a resource prefix".into(),
                );
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let file = self.source.describe();
        if problems.len() == 1 {
            let (key, message) = problems.remove(0);
            return Err(Error::Config { file, key, message });
        }
        let message = problems
            .iter()
            .map(|(k, m)| format!("`{k}`: {m}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Config {
            file,
            key: problems[0].0.clone(),
            message,
        })
    }
}
