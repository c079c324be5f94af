//! capgate's configuration: one typed struct read from `capgate.toml`, with every key checked.
//!
//! * this file: the tree of sections and their defaults;
//! * [`load`]: reading a file (or the embedded default), with errors that name the key;
//! * [`validate`]: what serde cannot check;
//! * [`sections`]: the `[tools.*]` tables, which the tool packs own and parse themselves.
//!
//! Invariant: a `Config` that exists has been validated. Unknown keys are refused (a typo must
//! not silently fall back to a default), every relative path is resolved against the config
//! file's directory (or the working directory for the embedded default), and an error names the
//! file, the key and what was expected.

mod load;
mod sections;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use sections::{ToolSections, UpstreamSections};

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
    /// `[tools.<pack>]` tables, each owned and parsed by the tool pack of that name.
    pub tools: ToolSections,
    /// `[[upstream]]` tables: the MCP servers capgate fronts, parsed by capgate-upstream.
    pub upstream: UpstreamSections,
    /// Issuance and invocation policy.
    pub policy: PolicyConfig,
    /// The guard's Datalog limits and decision cache.
    pub guard: GuardConfig,
    /// Tenants and the resources each one owns.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// When a task's behaviour revokes it.
    pub anomaly: AnomalyConfig,
    /// Who may vouch for agents instead of an operator-minted agent token.
    pub identity: IdentityConfig,
    /// Where tasks and revocations live: the embedded SQLite file, or a shared PostgreSQL.
    pub store: StoreConfig,
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
    #[serde(with = "humantime_serde")]
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

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Issuance policy file; default: the shipped `policies/issuance.datalog`.
    pub issuance: Option<PathBuf>,
    /// Invocation policy file; default: the shipped `policies/invocation.datalog`.
    pub invocation: Option<PathBuf>,
    /// The longest task a request may ask for (the `max_ttl` fact, in seconds).
    #[serde(with = "humantime_serde")]
    pub max_task_ttl: Duration,
    /// The task length when a request names none.
    #[serde(with = "humantime_serde")]
    pub default_task_ttl: Duration,
    /// Whether an in-band `task_begin` that needs approval may ask the human through MCP
    /// elicitation. The answer is relayed by the MCP client application, so this trusts that
    /// application's UI to come from a person. Off by default: the client may be the agent
    /// itself, which would then approve its own side effects; approvals then come only as
    /// approval tokens over HTTP or from the CLI.
    pub elicitation_approval: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            issuance: None,
            invocation: None,
            max_task_ttl: Duration::from_secs(3600),
            default_task_ttl: Duration::from_secs(900),
            elicitation_approval: false,
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
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
    /// Entries in the verified-token cache.
    pub token_cache_entries: usize,
    /// Entries in the decision cache (0 turns it off).
    pub decision_cache_entries: usize,
    /// Longest a cached allow is trusted before Datalog runs again.
    #[serde(with = "humantime_serde")]
    pub decision_cache_ttl: Duration,
    /// How often to look for revocations and tasks written by other processes (the CLI, other
    /// replicas); `0s` looks on every call. Revocations made through this server apply at once
    /// whatever this says. The 5 ms default keeps the look (a SQLite `PRAGMA data_version`, a
    /// few microseconds under a lock) off most calls under load, while a revocation made
    /// elsewhere still applies before a person could act on the result of `capgate task end`.
    #[serde(with = "humantime_serde")]
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

/// `[anomaly]`: rules over a task's behaviour that revoke it at once (and every token derived
/// from it). The defaults are meant to be left on: an agent that works inside its task is never
/// refused five times in ten minutes, nor three times outside what it declared, while a
/// prompt-injected one probing for what it was not granted is, within seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Denied attempts within `window` that revoke the task (0: never).
    pub revoke_after_denials: u32,
    /// Calls outside the task's declared intent (a tool it did not name, a resource outside the
    /// prefixes it asked for) within `window` that revoke it (0: never).
    pub revoke_after_out_of_intent: u32,
    /// Tool names or resource prefixes (as `[tenants]` writes them: relative to the fs root, or
    /// URLs) one denied attempt on which revokes the task.
    pub sensitive: Vec<String>,
    /// The window the counts are taken over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            revoke_after_denials: 5,
            revoke_after_out_of_intent: 3,
            sensitive: Vec::new(),
            window: Duration::from_secs(600),
        }
    }
}

/// `[identity]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// `[[identity.jwt]]`: the issuers of workload JWTs capgate trusts.
    pub jwt: Vec<JwtIssuerConfig>,
}

/// One `[[identity.jwt]]` table: an issuer of workload JWTs (a Kubernetes service-account
/// issuer, a SPIFFE JWT-SVID trust domain, a CI or cloud OIDC issuer).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The issuer's keys: an `https://` URL (or `http://` on loopback), or a JWKS file.
    pub jwks: String,
    /// Must be in the token's `aud`.
    pub audience: String,
    /// The agent id, a template over the claims.
    #[serde(default = "default_agent_template")]
    pub agent: String,
    /// The tenant, a template over the claims (a missing claim refuses).
    pub tenant: String,
    /// What such a workload may ever ask for (its rights).
    pub tools: Vec<String>,
    /// Resource prefixes per tool (as `[tenants]` writes them); a tool without any may touch
    /// all of its resources.
    #[serde(default)]
    pub resources: BTreeMap<String, Vec<String>>,
    /// The tenants this issuer may vouch for. Empty: the tenants of `[tenants]` (any tenant,
    /// when none is configured). A token whose `tenant` template names another is refused, so
    /// one issuer's workloads cannot claim to work for a tenant another issuer serves.
    #[serde(default)]
    pub tenants: Vec<String>,
}

fn default_agent_template() -> String {
    "{sub}".into()
}

/// `[store]`: without `url`, tasks live in `<state_dir>/tasks.sqlite3` (one host); with it, in
/// PostgreSQL, shared by every replica and the CLI that name the same database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user[:password]@host[:port]/database[?options]`; `${VAR}` is replaced by the
    /// environment variable `VAR`, so that a password need not sit in the file.
    pub url: Option<String>,
    /// Longest a replica goes on deciding calls on what it last heard from the store; past it,
    /// calls are refused (a revocation made elsewhere may have been missed).
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// How often the store is asked for revocations even when no notification came (a lost
    /// notification or a reconnect never leaves a revocation unseen for longer).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// Longest any one store operation may take before the request gets a 503.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Connections per replica.
    pub pool_size: usize,
    /// Listen for revocation notifications (`LISTEN`/`NOTIFY`); off, revocations propagate by
    /// polling only.
    pub notify: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            max_staleness: Duration::from_secs(2),
            poll: Duration::from_millis(250),
            timeout: Duration::from_secs(1),
            pool_size: 8,
            notify: true,
        }
    }
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
            tools: ToolSections::default(),
            upstream: UpstreamSections::default(),
            policy: PolicyConfig::default(),
            guard: GuardConfig::default(),
            tenants: BTreeMap::new(),
            anomaly: AnomalyConfig::default(),
            identity: IdentityConfig::default(),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            telemetry: TelemetryConfig::default(),
            dev: DevConfig::default(),
            source: ConfigSource::Embedded,
        }
    }
}

impl Config {
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
    pub fn issuance_policy(&self) -> Result<(String, String), capgate_authz::Error> {
        read_policy(
            &self.policy.issuance,
            capgate_authz::policy::DEFAULT_ISSUANCE_POLICY,
            "policies/issuance.datalog",
        )
    }

    /// The invocation policy text and where it came from.
    pub fn invocation_policy(&self) -> Result<(String, String), capgate_authz::Error> {
        read_policy(
            &self.policy.invocation,
            capgate_authz::policy::DEFAULT_INVOCATION_POLICY,
            "policies/invocation.datalog",
        )
    }
}

fn read_policy(
    path: &Option<PathBuf>,
    embedded: &str,
    embedded_name: &str,
) -> Result<(String, String), capgate_authz::Error> {
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|source| capgate_authz::Error::PolicyIo {
                    file: p.display().to_string(),
                    source,
                })?;
            Ok((text, p.display().to_string()))
        }
        None => Ok((embedded.to_owned(), format!("{embedded_name} (shipped)"))),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::error::Error;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/etc/capgate/capgate.toml"))
    }

    /// A tool pack's section, as a pack would type it.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Pack {
        root: PathBuf,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
    }

    impl capgate_core::Section for Pack {
        fn finish(&mut self, base: &Path) -> Vec<(String, String)> {
            self.root = base.join(&self.root);
            if self.timeout.is_zero() {
                return vec![("timeout".into(), "expected a positive duration".into())];
            }
            Vec::new()
        }
    }

    #[test]
    fn a_typo_is_refused_with_file_and_key() {
        let err = parse("[server]\nallowd_hosts = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/capgate/capgate.toml"), "{err}");
        assert!(err.contains("server.allowd_hosts"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(
            err.contains("allowed_hosts"),
            "names what was expected: {err}"
        );
        // In a tool pack's section, the same rules and the same naming.
        let c = parse("[tools.fs]\nrot = \"x\"\n").unwrap();
        let err = c.tools.section::<Pack>("fs").unwrap_err().to_string();
        assert!(err.contains("/etc/capgate/capgate.toml"), "{err}");
        assert!(err.contains("tools.fs.rot"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(err.contains("root"), "names what was expected: {err}");
        let c = parse("[tools.fs]\ntimeout = \"0s\"\n").unwrap();
        let err = c.tools.section::<Pack>("fs").unwrap_err().to_string();
        assert!(err.contains("tools.fs.timeout"), "{err}");
    }

    #[test]
    fn a_section_no_pack_reads_is_refused() {
        let c = parse("[tools.fs]\ntimeout = \"1s\"\n[tools.fz]\nroot = \"x\"\n").unwrap();
        c.tools.section::<Pack>("fs").unwrap();
        let err = c.tools.check_claimed().unwrap_err().to_string();
        assert!(err.contains("tools.fz"), "{err}");
        assert!(err.contains("known: fs"), "{err}");
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
        let c = parse("state_dir = \"st\"\n[tools.fs]\nroot = \"ws\"\ntimeout = \"1s\"\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/capgate/st"));
        let fs: Pack = c.tools.section("fs").unwrap();
        assert_eq!(fs.root, PathBuf::from("/etc/capgate/ws"));
        assert_eq!(
            c.store_file(),
            PathBuf::from("/etc/capgate/st/tasks.sqlite3")
        );
    }

    #[test]
    fn the_reference_config_parses_to_the_defaults() {
        let text = include_str!("../../../../examples/capgate.toml");
        let c = parse(text).unwrap();
        let d = Config::embedded(Path::new("/etc/capgate")).unwrap();
        assert_eq!(c.state_dir, d.state_dir);
        assert_eq!(c.server.allowed_hosts, d.server.allowed_hosts);
        assert_eq!(c.server.allowed_origins, d.server.allowed_origins);
        assert_eq!(c.guard.max_time, d.guard.max_time);
        assert_eq!(c.policy.max_task_ttl, d.policy.max_task_ttl);
        assert_eq!(c.policy.elicitation_approval, d.policy.elicitation_approval);
        assert_eq!(c.audit.max_bytes, d.audit.max_bytes);
        assert_eq!(
            c.anomaly.revoke_after_denials,
            d.anomaly.revoke_after_denials
        );
        assert_eq!(
            c.anomaly.revoke_after_out_of_intent,
            d.anomaly.revoke_after_out_of_intent
        );
        assert_eq!(c.anomaly.sensitive, d.anomaly.sensitive);
        assert_eq!(c.anomaly.window, d.anomaly.window);
    }

    #[test]
    fn the_embedded_default_is_valid() {
        let c = Config::embedded(Path::new("/tmp/x")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x/.capgate"));
        assert_eq!(c.source, ConfigSource::Embedded);
    }
}
