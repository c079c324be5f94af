//! An in-process host over a scratch state directory: the real guard, issuer, store and audit
//! log, without a process or a socket in between.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use capgate_authz::token::{AgentGrant, RootKey, mint_agent_token};
use capgate_authz::{Channel, IssuanceError, IssuedTask, Transport};
use capgate_core::task::{Intent, TaskGrant, TaskRecord};
use capgate_server::telemetry::Providers;
use capgate_server::{Config, Host, HostBuilder};
use rmcp::service::ServiceExt;

use crate::client::Client;

/// A config for a scratch host: state under `<dir>/state`, plus `extra` TOML.
pub fn config(dir: &Path, extra: &str) -> Config {
    Config::parse(
        &format!("state_dir = \"state\"\n{extra}\n"),
        &dir.join("capgate.toml"),
    )
    .expect("scratch config parses")
}

/// A host in a temporary directory, with its root key at hand for minting.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub host: Host,
    pub root: RootKey,
}

impl Scratch {
    /// A host over `extra` TOML whose tools `register` adds to the builder.
    pub fn new(extra: &str, register: impl FnOnce(HostBuilder) -> HostBuilder) -> Self {
        Self::with_providers(extra, Providers::none(), register)
    }

    /// The same, exporting telemetry through `providers`.
    pub fn with_providers(
        extra: &str,
        providers: Providers,
        register: impl FnOnce(HostBuilder) -> HostBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = build(dir.path(), extra, providers, register);
        let root = RootKey::load(&host.config().root_key_file()).expect("root key");
        Scratch { dir, host, root }
    }

    /// A second host over the same state (tasks, keys) with other settings, as after a restart
    /// with a changed config.
    pub fn reopen(
        &self,
        extra: &str,
        providers: Providers,
        register: impl FnOnce(HostBuilder) -> HostBuilder,
    ) -> Host {
        build(self.dir.path(), extra, providers, register)
    }

    /// An agent token of `tenant` with `rights`, valid for an hour, no resource limits.
    pub fn agent(&self, agent: &str, tenant: &str, rights: &[&str]) -> String {
        mint_agent_token(
            &self.root,
            &AgentGrant {
                agent: agent.into(),
                tenant: tenant.into(),
                rights: rights.iter().map(|r| (*r).to_owned()).collect(),
                ttl: Some(Duration::from_secs(3600)),
                ..AgentGrant::default()
            },
        )
        .expect("mint")
        .to_base64()
        .expect("encode")
    }

    /// Issues a task for `agent_token` as the CLI would.
    pub fn issue(&self, agent_token: &str, intent: Intent) -> Result<IssuedTask, IssuanceError> {
        let verified = self
            .host
            .verifier()
            .verify(agent_token)
            .expect("agent token");
        self.host.issuer().issue(&verified, intent, Channel::Cli)
    }
}

fn build(
    dir: &Path,
    extra: &str,
    providers: Providers,
    register: impl FnOnce(HostBuilder) -> HostBuilder,
) -> Host {
    let builder = HostBuilder::new(config(dir, extra))
        .providers(providers)
        .create_key_if_missing(true);
    register(builder).build().expect("host builds")
}

/// An approved intent for `tools`, with no resource limits.
pub fn intent(purpose: &str, tools: &[&str]) -> Intent {
    Intent {
        purpose: purpose.into(),
        tools: tools.iter().map(|t| (*t).to_owned()).collect(),
        approved_by: Some("tester".into()),
        ..Intent::default()
    }
}

/// A task record as issuance stores it, for tests of the stores: agent `agent-1` of tenant
/// `acme`, `fs_read` on `/ws/`, expiring `expires_in` seconds from now (negative: already).
pub fn task_record(id: &str, revocation_id: &str, expires_in: i64) -> TaskRecord {
    let now = SystemTime::now();
    let expires_at = if expires_in >= 0 {
        now + Duration::from_secs(expires_in as u64)
    } else {
        now - Duration::from_secs(expires_in.unsigned_abs())
    };
    let tools = BTreeMap::from([("fs_read".to_owned(), vec!["/ws/".to_owned()])]);
    TaskRecord {
        id: id.into(),
        agent: "agent-1".into(),
        tenant: "acme".into(),
        revocation_id: revocation_id.into(),
        intent: Intent {
            purpose: "read the docs".into(),
            tools: vec!["fs_read".into()],
            ..Intent::default()
        },
        grant: TaskGrant {
            task_id: id.into(),
            tools,
            expires_at,
            budget: None,
            workload: None,
            holder: None,
        },
        created_at: now,
        expires_at,
        ended_at: None,
        end_reason: None,
        revoked_by: None,
        trace_id: "0".repeat(32),
        span_id: "1".repeat(16),
    }
}

/// An rmcp client talking to a stdio session of `host` over an in-memory pipe, with `token` as
/// the session's `CAPGATE_TOKEN`.
pub async fn stdio_client(host: &Host, token: &str) -> Client {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let session = host.session(Transport::Stdio, Some(token.to_owned()));
    tokio::spawn(async move {
        if let Ok(server) = session.serve(server_io).await {
            let _ = server.waiting().await;
        }
    });
    ().serve(client_io).await.expect("MCP initialize")
}
