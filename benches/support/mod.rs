//! Fixtures shared by the benchmarks: a scratch capgate installation (config, root key, agent
//! token) and the tools the benchmarks call.
//!
//! Both benches build their installation the way an operator would (a `capgate.toml`, a root
//! key file, tokens minted with capgate's own functions), so what they measure is the code path
//! `capgate serve` runs, not a shortcut through it.

// Each bench binary uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use capgate_authz::Channel;
use capgate_authz::token::{AgentGrant, RootKey, VerifiedToken, mint_agent_token};
use capgate_core::task::{Intent, Ttl};
use capgate_core::{
    Arguments, DynamicTool, Operation, Resource, ToolError, ToolOutput, ToolSpec, str_arg,
};
use capgate_server::{Config, Host, HostBuilder};
use serde_json::{Value, json};

/// The trivial tool of the load benchmark: returns its `text` argument.
pub const ECHO: &str = "echo";

/// The input schema both the guarded and the unguarded echo publish.
pub fn echo_schema() -> serde_json::Map<String, Value> {
    object(json!({
        "type": "object",
        "properties": {"text": {"type": "string", "description": "Text to send back."}},
        "required": ["text"],
        "additionalProperties": false
    }))
}

/// The echo tool on capgate's tool API. Its resource is `tool:echo`: it touches nothing else.
pub fn echo_tool() -> DynamicTool {
    DynamicTool::new(
        ToolSpec::new(
            ECHO,
            "Returns its text argument.",
            Operation::Read,
            echo_schema(),
        ),
        |args, _resource, _ctx| async move {
            let text = str_arg(&args, "text")?.to_owned();
            Ok(ToolOutput::text(text))
        },
    )
}

/// A read tool whose resource comes from its argument (`/docs/<path>`), so that resource
/// prefixes in tokens and policies have something to match.
pub fn doc_read_tool() -> DynamicTool {
    let schema = object(json!({
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
        "additionalProperties": false
    }));
    DynamicTool::new(
        ToolSpec::new("doc_read", "Reads a document.", Operation::Read, schema),
        |args, resource, _ctx| async move { doc_read_body(&args, &resource) },
    )
    .resource(|args| Ok(Resource::new(format!("/docs/{}", str_arg(args, "path")?))))
}

/// What `doc_read` does once capgate has let the call through.
pub fn doc_read_body(_args: &Arguments, resource: &Resource) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text(resource.to_string()))
}

/// A filler tool (same shape as echo), to grow the number of granted tools.
pub fn filler_tool(name: &str) -> DynamicTool {
    DynamicTool::new(
        ToolSpec::new(name, "Filler.", Operation::Read, echo_schema()),
        |_args, _resource, _ctx| async move { Ok(ToolOutput::text("")) },
    )
}

/// A JSON object literal as a map.
pub fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected a JSON object, got {other}"),
    }
}

/// Arguments from a JSON object literal.
pub fn args(v: Value) -> Arguments {
    object(v)
}

/// The `capgate.toml` of a benchmark installation. The built-in tools are off so that both the
/// guarded and the unguarded server host exactly one tool; two tenants own resource prefixes so
/// the shipped cross-tenant rule has facts to work on, as in a real deployment.
pub fn config_text(extra_guard: &str, invocation_policy: Option<&str>) -> String {
    let policy = match invocation_policy {
        Some(file) => format!("[policy]\ninvocation = \"{file}\"\n"),
        None => String::new(),
    };
    format!(
        r#"state_dir = "state"

[tools.fs]
enabled = false

[tools.http_fetch]
enabled = false

[tenants.acme]
resources = ["/tenants/acme/"]

[tenants.globex]
resources = ["/tenants/globex/"]

[guard]
{extra_guard}

{policy}"#
    )
}

/// A scratch installation: `capgate.toml` and a root key in `dir`.
pub struct Installation {
    /// The config file.
    pub config_path: PathBuf,
    /// The parsed config.
    pub config: Config,
    /// The root key (the benchmarks mint tokens with it).
    pub root: RootKey,
}

impl Installation {
    /// Writes the config (and the invocation policy, when given) and a fresh root key.
    pub fn create(dir: &Path, extra_guard: &str, invocation_policy: Option<&str>) -> Self {
        if let Some(text) = invocation_policy {
            std::fs::write(dir.join("invocation.datalog"), text).expect("write policy");
        }
        let text = config_text(extra_guard, invocation_policy.map(|_| "invocation.datalog"));
        let config_path = dir.join("capgate.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::parse(&text, &config_path).expect("benchmark config is valid");
        let root = RootKey::generate();
        root.write(&config.root_key_file(), false)
            .expect("write root key");
        Installation {
            config_path,
            config,
            root,
        }
    }

    /// Builds a host over this installation with the given tools.
    pub fn host(&self, tools: Vec<DynamicTool>) -> Host {
        let mut builder = HostBuilder::new(self.config.clone());
        for t in tools {
            builder = builder.tool(t).expect("register tool");
        }
        builder.build().expect("build host")
    }

    /// Mints an agent token for `tools`, each limited to `prefixes[tool]` when given.
    pub fn agent_token(&self, tools: &[String], prefixes: &[(String, Vec<String>)]) -> String {
        let grant = AgentGrant {
            agent: "bench-agent".into(),
            tenant: "acme".into(),
            rights: tools.to_vec(),
            prefixes: prefixes.iter().cloned().collect(),
            ttl: Some(Duration::from_secs(24 * 3600)),
            workload: None,
        };
        mint_agent_token(&self.root, &grant)
            .and_then(|b| b.to_base64().map_err(capgate_authz::TokenError::Build))
            .expect("mint agent token")
    }
}

/// Issues a task through the host's issuer, exactly as `POST /v1/tasks` does.
pub fn issue_task(
    host: &Host,
    agent: &Arc<VerifiedToken>,
    tools: &[String],
    resources: &[(String, Vec<String>)],
) -> String {
    let intent = Intent {
        purpose: "benchmark".into(),
        tools: tools.to_vec(),
        resources: resources.iter().cloned().collect(),
        ttl: Some(Ttl::Text("50m".into())),
        ..Intent::default()
    };
    host.issuer()
        .issue(agent, intent, Channel::Cli)
        .expect("issue task")
        .token
}
