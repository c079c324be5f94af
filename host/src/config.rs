//! capgate's configuration: one typed struct read from `capgate.toml`, with every key checked.
//!
//! Invariant: a `Config` that exists has been validated. Unknown keys are refused (a typo must
//! not silently fall back to a default), every relative path is resolved against the config
//! file's directory (or the working directory for the embedded default), and an error names the
//! file, the key and what was expected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// The shipped issuance policy, used when the config names none.
pub const DEFAULT_ISSUANCE_POLICY: &str = include_str!("../../policies/issuance.datalog");
/// The shipped invocation policy, used when the config names none.
pub const DEFAULT_INVOCATION_POLICY: &str = include_str!("../../policies/invocation.datalog");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where capgate keeps its root key, task store and audit log. Default `.capgate`.
    pub state_dir: PathBuf,
    /// Network and protocol settings for `serve`.
    pub server: ServerConfig,
    /// The root key.
    pub keys: KeysConfig,
    /// Built-in tools.
    pub tools: ToolsConfig,
    /// Issuance and invocation policy.
    pub policy: PolicyConfig,
    /// The guard's Datalog limits and decision cache.
    pub guard: GuardConfig,
    /// Tenants and the resources each one owns.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The local audit log.
    pub audit: AuditConfig,
    /// OpenTelemetry export.
    pub telemetry: TelemetryConfig,
    /// Development-only switches. Never on by default.
    pub dev: DevConfig,
    /// Where this config came from (set by the loader, not read from the file).
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Where a [`Config`] came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// No file: the embedded default, rooted at the working directory.
    #[default]
    Embedded,
    /// A file on disk.
    File(PathBuf),
}

impl ConfigSource {
    /// A human name for error messages.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Embedded => "the embedded default config".into(),
            ConfigSource::File(p) => p.display().to_string(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address for `serve --http` when the flag gives none.
    pub http: Option<SocketAddr>,
    /// Hostnames (or `host:port`) accepted in the `Host` header. Defaults to loopback names,
    /// which is what protects a local server from DNS rebinding; a server on another interface
    /// must list the names clients use. `["*"]` accepts any Host; an empty list is refused.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted in the `Origin` header (`scheme://host[:port]`). Requests with an
    /// `Origin` outside the list are refused; requests without one pass.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub max_request_bytes: usize,
    /// How long to wait for in-flight requests on shutdown.
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: None,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ],
            max_request_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The root private key file. Default `<state_dir>/root.key`. `CAPGATE_ROOT_KEY_FILE`
    /// overrides it.
    pub root_key_file: Option<PathBuf>,
}

/// `[tools]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// The filesystem tools.
    pub fs: FsToolsConfig,
    /// The HTTP fetch tool.
    pub http_fetch: HttpFetchConfig,
}

/// `[tools.fs]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsToolsConfig {
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
}

impl Default for FsToolsConfig {
    fn default() -> Self {
        FsToolsConfig {
            enabled: true,
            root: PathBuf::from("workspace"),
            max_read_bytes: 1024 * 1024,
            max_write_bytes: 1024 * 1024,
            max_list_entries: 1000,
            max_search_results: 100,
            max_search_files: 10_000,
        }
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
    #[serde(with = "humantime_serde_compat")]
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

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Issuance policy file; default: the shipped `policies/issuance.datalog`.
    pub issuance: Option<PathBuf>,
    /// Invocation policy file; default: the shipped `policies/invocation.datalog`.
    pub invocation: Option<PathBuf>,
    /// The longest task a request may ask for (the `max_ttl` fact, in seconds).
    #[serde(with = "humantime_serde_compat")]
    pub max_task_ttl: Duration,
    /// The task length when a request names none.
    #[serde(with = "humantime_serde_compat")]
    pub default_task_ttl: Duration,
    /// Whether an in-band `task_begin` that needs approval may ask the human through MCP
    /// elicitation. The answer is relayed by the MCP client application, so this trusts that
    /// application's UI to come from a person; turn it off where the client may be the agent
    /// itself, and approvals then come only as approval tokens over HTTP or from the CLI.
    pub elicitation_approval: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            issuance: None,
            invocation: None,
            max_task_ttl: Duration::from_secs(3600),
            default_task_ttl: Duration::from_secs(900),
            elicitation_approval: true,
        }
    }
}

/// `[guard]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Most facts a single authorization may derive.
    pub max_facts: u64,
    /// Most Datalog iterations per authorization.
    pub max_iterations: u64,
    /// Wall-clock limit per authorization. Datalog on a verified 3-block token takes ~40 µs;
    /// the default leaves two orders of magnitude for a loaded machine while still cutting off
    /// a rule explosion long before it matters.
    #[serde(with = "humantime_serde_compat")]
    pub max_time: Duration,
    /// Entries in the verified-token cache.
    pub token_cache_entries: usize,
    /// Entries in the decision cache (0 turns it off).
    pub decision_cache_entries: usize,
    /// Longest a cached allow is trusted before Datalog runs again.
    #[serde(with = "humantime_serde_compat")]
    pub decision_cache_ttl: Duration,
    /// How often to look for revocations and tasks written by other processes (the CLI, other
    /// replicas); `0s` looks on every call. Revocations made through this server apply at once
    /// whatever this says. The 5 ms default keeps the look (a SQLite `PRAGMA data_version`, a
    /// few microseconds under a lock) off most calls under load, while a revocation made
    /// elsewhere still applies before a person could act on the result of `capgate task end`.
    #[serde(with = "humantime_serde_compat")]
    pub store_poll: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_facts: 1000,
            max_iterations: 100,
            max_time: Duration::from_millis(20),
            token_cache_entries: 10_000,
            decision_cache_entries: 100_000,
            decision_cache_ttl: Duration::from_secs(60),
            store_poll: Duration::from_millis(5),
        }
    }
}

/// `[tenants.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    /// Resource prefixes this tenant owns. A resource under another tenant's prefix is out of
    /// bounds for this tenant's agents. File prefixes are relative to the fs root unless
    /// absolute.
    pub resources: Vec<String>,
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The audit log file. Default `<state_dir>/audit.log`.
    pub path: Option<PathBuf>,
    /// Rotate when the file passes this size.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.N`).
    pub keep: usize,
    /// Refuse calls and task issuance when the audit log cannot be written.
    pub fail_closed: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            max_bytes: 16 * 1024 * 1024,
            keep: 5,
            fail_closed: true,
        }
    }
}

/// `[telemetry]`. The standard `OTEL_*` variables override these.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP endpoint. No endpoint (here or in `OTEL_EXPORTER_OTLP_ENDPOINT`): no exporter runs.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub otlp_protocol: Option<String>,
    /// `service.name`.
    pub service_name: Option<String>,
    /// Record tool arguments and results on spans. Off by default: they may hold secrets.
    pub record_payloads: bool,
}

/// `[dev]`: switches for local development only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// On a loopback-only HTTP server, treat a request without `Authorization` as presenting the
    /// token in this file. For test suites that cannot send headers (the MCP conformance suite).
    /// Refused on any non-loopback address.
    pub headerless_token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from(".capgate"),
            server: ServerConfig::default(),
            keys: KeysConfig::default(),
            tools: ToolsConfig::default(),
            policy: PolicyConfig::default(),
            guard: GuardConfig::default(),
            tenants: BTreeMap::new(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            dev: DevConfig::default(),
            source: ConfigSource::Embedded,
        }
    }
}

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
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text that came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let mut config: Config = toml::from_str(text).map_err(|e| Error::Config {
            file: path.display().to_string(),
            key: toml_error_key(text, &e),
            message: e.message().to_owned(),
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
        self.tools.fs.root = abs(&self.tools.fs.root);
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
    }

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
        if self.tools.http_fetch.timeout.is_zero() {
            bad(
                "tools.http_fetch.timeout",
                "expected a positive duration".into(),
            );
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

    /// The root key file: `CAPGATE_ROOT_KEY_FILE`, else `[keys] root_key_file`, else
    /// `<state_dir>/root.key`.
    pub fn root_key_file(&self) -> PathBuf {
        if let Some(p) = std::env::var_os("CAPGATE_ROOT_KEY_FILE").filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        self.keys
            .root_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("root.key"))
    }

    /// The task store database.
    pub fn store_file(&self) -> PathBuf {
        self.state_dir.join("tasks.sqlite3")
    }

    /// The audit log file.
    pub fn audit_file(&self) -> PathBuf {
        self.audit
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.log"))
    }

    /// The issuance policy text and where it came from.
    pub fn issuance_policy(&self) -> Result<(String, String), Error> {
        read_policy(
            &self.policy.issuance,
            DEFAULT_ISSUANCE_POLICY,
            "policies/issuance.datalog",
        )
    }

    /// The invocation policy text and where it came from.
    pub fn invocation_policy(&self) -> Result<(String, String), Error> {
        read_policy(
            &self.policy.invocation,
            DEFAULT_INVOCATION_POLICY,
            "policies/invocation.datalog",
        )
    }
}

fn read_policy(
    path: &Option<PathBuf>,
    embedded: &str,
    embedded_name: &str,
) -> Result<(String, String), Error> {
    match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::Policy {
                file: p.display().to_string(),
                line: 0,
                message: format!("cannot read the policy file: {e}"),
            })?;
            Ok((text, p.display().to_string()))
        }
        None => Ok((embedded.to_owned(), format!("{embedded_name} (shipped)"))),
    }
}

/// Finds the dotted key a TOML error is about, from the error's span.
fn toml_error_key(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return String::new();
    };
    // Walk the document up to the error, tracking the current table header, then take the key
    // at the start of the offending line.
    let before = &text[..span.start.min(text.len())];
    let mut table = String::new();
    for line in before.lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Serde for `Duration` written as humantime strings ("20ms", "1h 30m").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); expected something like \"20ms\", \"15m\" or \"1h\""
            ))
        })
    }
}

/// Parses a human duration such as `15m` or `1h30m`, for CLI flags and task requests.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("`{s}` is not a duration ({e}); expected something like \"90s\", \"15m\" or \"1h\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/etc/capgate/capgate.toml"))
    }

    #[test]
    fn a_typo_is_refused_with_file_and_key() {
        let err = parse("[tools.fs]\nrot = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("/etc/capgate/capgate.toml"), "{err}");
        assert!(err.contains("tools.fs.rot"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(err.contains("root"), "names what was expected: {err}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = parse("[guard]\nmax_facts = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.max_facts"), "{err}");
    }

    #[test]
    fn a_bad_duration_says_what_is_expected() {
        let err = parse("[guard]\nmax_time = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.max_time"), "{err}");
        assert!(err.contains("20ms"), "{err}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let err = parse("[guard]\nmax_facts = 0\nmax_iterations = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guard.max_facts"), "{err}");
        assert!(err.contains("guard.max_iterations"), "{err}");
    }

    #[test]
    fn an_empty_host_list_is_refused_and_star_is_explicit() {
        let err = parse("[server]\nallowed_hosts = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.allowed_hosts"), "{err}");
        assert!(err.contains("DNS-rebinding"), "{err}");
        assert!(parse("[server]\nallowed_hosts = [\"*\"]\n").is_ok());
    }

    /// A config built in code, never parsed, is validated all the same when a host is built.
    #[test]
    fn a_host_built_from_code_validates_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = parse(&format!("state_dir = {:?}\n", dir.path().join("st"))).unwrap();
        c.server.allowed_hosts.clear();
        let err = crate::HostBuilder::new(c)
            .create_key_if_missing(true)
            .build()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("server.allowed_hosts"), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let c = parse("state_dir = \"st\"\n[tools.fs]\nroot = \"ws\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/capgate/st"));
        assert_eq!(c.tools.fs.root, PathBuf::from("/etc/capgate/ws"));
        assert_eq!(
            c.store_file(),
            PathBuf::from("/etc/capgate/st/tasks.sqlite3")
        );
    }

    #[test]
    fn the_reference_config_parses_to_the_defaults() {
        let text = include_str!("../../examples/capgate.toml");
        let c = parse(text).unwrap();
        let d = Config::embedded(Path::new("/etc/capgate")).unwrap();
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.tools.fs.root, d.tools.fs.root);
        assert_eq!(c.server.allowed_hosts, d.server.allowed_hosts);
        assert_eq!(c.server.allowed_origins, d.server.allowed_origins);
        assert_eq!(c.guard.max_time, d.guard.max_time);
        assert_eq!(c.policy.max_task_ttl, d.policy.max_task_ttl);
        assert_eq!(c.policy.elicitation_approval, d.policy.elicitation_approval);
        assert_eq!(c.audit.max_bytes, d.audit.max_bytes);
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::embedded(Path::new("/tmp/x")).unwrap();
        assert_eq!(c.tools.fs.root, PathBuf::from("/tmp/x/workspace"));
        assert_eq!(c.source, ConfigSource::Embedded);
    }
}
