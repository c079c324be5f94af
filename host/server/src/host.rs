//! The host: every part of capgate wired together from one validated [`Config`].
//!
//! Invariant: a built [`Host`] has a root key, parsed policies, an open store and audit log,
//! and exactly one [door](capgate_core::door) whose stages are the guard and the audit log; the
//! registry is sealed into it, so every session the host serves sees the same tools and the
//! same rules for its whole life, and no tool is reachable except through that door.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use biscuit_auth::{AuthorizerLimits, PublicKey};
use capgate_authz::issuance::ToolTenantPrefix;
use capgate_authz::policy::LintWarning;
use capgate_authz::{
    AnomalyRules, CallEnv, CredentialError, Denial, Guard, GuardSettings, Issuer, IssuerSettings,
    Policy, PolicyKind, RootKey, Transport, Verifier,
};
use capgate_core::door::{Action, CallError, Catalog, Door, Registry};
use capgate_core::task::{EndReason, TaskRecord};
use capgate_core::{Arguments, Tool, ToolError, ToolOutput};

use crate::config::{Config, ConfigSource};
use crate::error::Error;
use crate::identity::Workloads;
use crate::ledger::TaskLedger;
use crate::pipeline::{CallOutcome, CallRequest, Caller, Delivery, HostStages, Pipeline, run_call};
use crate::session::Session;
use crate::shared::Shared;
use crate::store::TaskStore;
use crate::telemetry::{AuditLog, Providers, Telemetry, TelemetrySettings};

/// A running capgate host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<Shared>,
}

/// Builds a [`Host`].
pub struct HostBuilder {
    config: Config,
    registry: Registry,
    providers: Option<Providers>,
    create_key: Option<bool>,
    store: Option<Arc<dyn TaskStore>>,
}

impl HostBuilder {
    /// A builder over a validated config.
    pub fn new(config: Config) -> Self {
        HostBuilder {
            config,
            registry: Registry::new(),
            providers: None,
            create_key: None,
            store: None,
        }
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool) -> Result<Self, Error> {
        self.registry.register(tool)?;
        Ok(self)
    }

    /// The registry, to add tools.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The config being built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Exports through these providers (default: none).
    pub fn providers(mut self, providers: Providers) -> Self {
        self.providers = Some(providers);
        self
    }

    /// Creates the root key when missing (default: only for the embedded config).
    pub fn create_key_if_missing(mut self, create: bool) -> Self {
        self.create_key = Some(create);
        self
    }

    /// Keeps tasks and revocations in `store` instead of the SQLite file under `state_dir`.
    pub fn store(mut self, store: Arc<dyn TaskStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Loads the key, opens the store and audit log, parses the policies, seals the door.
    pub fn build(self) -> Result<Host, Error> {
        let config = self.config;
        // A config built in code gets the same checks as one read from a file (an empty
        // `allowed_hosts`, for one, would otherwise switch the Host check off).
        config.validate()?;
        let mut notes = Vec::new();
        let key_path = config.root_key_file();
        let create = self
            .create_key
            .unwrap_or(config.source == ConfigSource::Embedded);
        let root_key = if create {
            let (key, created) = RootKey::load_or_create(&key_path)?;
            if created {
                notes.push(format!(
                    "created a new root key at {} (public key {})",
                    key_path.display(),
                    key.public_text()
                ));
            }
            key
        } else {
            RootKey::load(&key_path)?
        };
        let root_public = root_key.public();
        // The audit log signs its checkpoints with the root key: refuse one it cannot sign with
        // now, rather than at the first decision.
        if root_key.sign(b"").is_none() {
            return Err(Error::Audit {
                path: key_path,
                doing: "cannot sign the audit log's checkpoints with it: the root key must be Ed25519",
                source: std::io::Error::other("unsupported key algorithm"),
            });
        }
        let root_key = Arc::new(root_key);

        let (invocation, issuance) = policies(&config)?;
        for (origin, w) in invocation
            .lint()
            .iter()
            .map(|w| (invocation.origin(), w))
            .chain(issuance.lint().iter().map(|w| (issuance.origin(), w)))
        {
            notes.push(format!("warning: {origin}:{}: {}", w.line, w.message));
        }

        let store: Arc<dyn TaskStore> = match self.store {
            Some(s) => s,
            None => crate::store::open(&config)?,
        };
        let ledger = Arc::new(TaskLedger::open(
            Arc::clone(&store),
            config.guard.store_poll,
        )?);
        let limits = AuthorizerLimits {
            max_facts: config.guard.max_facts,
            max_iterations: config.guard.max_iterations,
            max_time: config.guard.max_time,
        };
        let tenant_prefixes = Arc::new(tenant_prefixes(&config, self.registry.catalog()));
        let anomaly = anomaly_rules(&config, self.registry.catalog())?;
        let verifier = Arc::new(Verifier::with_limits(
            root_public,
            config.guard.token_cache_entries,
            limits.clone(),
        ));
        let guard = Arc::new(Guard::new(
            ledger.clone(),
            invocation,
            GuardSettings {
                limits: limits.clone(),
                cache_entries: config.guard.decision_cache_entries,
                cache_ttl: config.guard.decision_cache_ttl,
                tenant_prefixes: Arc::clone(&tenant_prefixes),
                anomaly,
            },
        ));
        let audit = AuditLog::open(
            &config.audit_file(),
            config.audit.max_bytes,
            config.audit.keep,
            Some(Arc::clone(&root_key)),
        )?;
        let telemetry = Arc::new(Telemetry::new(
            audit,
            Arc::clone(&store),
            self.providers.unwrap_or_else(Providers::none),
            TelemetrySettings {
                fail_closed: config.audit.fail_closed,
                record_payloads: config.telemetry.record_payloads,
            },
        ));
        ledger.observe(telemetry.clone());
        let door = Arc::new(Door::new(
            self.registry,
            HostStages {
                guard,
                telemetry: Arc::clone(&telemetry),
            },
        ));
        let mut issuer = Issuer::new(
            issuance,
            Arc::clone(door.catalog()),
            ledger.clone(),
            Arc::clone(&verifier),
            IssuerSettings {
                limits,
                max_ttl: config.policy.max_task_ttl,
                default_ttl: config.policy.default_task_ttl,
                tenant_prefixes,
                tool_tenant_prefixes: Arc::new(tool_tenant_prefixes(&config, door.catalog())),
            },
        );
        issuer.observe(telemetry.clone());
        let issuer = Arc::new(issuer);
        let workloads = Workloads::new(
            &config.identity.jwt,
            &config.tenants.keys().cloned().collect::<Vec<_>>(),
            door.catalog(),
            root_key,
            Arc::clone(&verifier),
        )
        .map_err(|m| {
            let (key, message) = m.split_once(": ").unwrap_or(("identity.jwt", &m));
            Error::Config {
                file: config.source.describe(),
                key: key.to_owned(),
                message: message.to_owned(),
            }
        })?;
        Ok(Host {
            inner: Arc::new(Shared {
                config,
                verifier,
                issuer: Arc::clone(&issuer),
                pipeline: Arc::new(Pipeline {
                    door,
                    telemetry,
                    ledger,
                    issuer,
                }),
                notes,
                approvals: Default::default(),
                workloads,
                proofs: Default::default(),
                listeners: Default::default(),
            }),
        })
    }
}

fn policies(config: &Config) -> Result<(Policy, Policy), Error> {
    let (text, origin) = config.invocation_policy()?;
    let invocation = Policy::parse(PolicyKind::Invocation, &origin, &text)?;
    let (text, origin) = config.issuance_policy()?;
    let issuance = Policy::parse(PolicyKind::Issuance, &origin, &text)?;
    Ok((invocation, issuance))
}

/// Tenant prefixes in every canonical spelling a hosted tool gives them: a relative path as the
/// fs tools resolve it against their root, a URL as each network tool normalizes it
/// (`https://API.example.com:443/x` claims what the tools spell `https://api.example.com/x`),
/// plus the prefix as written when it is absolute or a URL. An extra spelling can only widen
/// what *other* tenants are refused, never what this one may reach.
fn tenant_prefixes(config: &Config, catalog: &Catalog) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut push = |tenant: &str, p: String| {
        let pair = (tenant.to_owned(), p);
        if !pair.1.is_empty() && !out.contains(&pair) {
            out.push(pair);
        }
    };
    for (tenant, t) in &config.tenants {
        for raw in &t.resources {
            for spec in catalog.specs() {
                if let Ok(c) = catalog.canonical_prefix(&spec.name, raw) {
                    push(tenant, c);
                }
            }
            if raw.contains("://") || raw.starts_with("tool:") {
                push(tenant, raw.clone());
            } else if Path::new(raw).is_absolute() {
                let path = Path::new(raw);
                let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                let mut s = canonical.to_string_lossy().into_owned();
                // A directory prefix ends in `/`, so `/ws/acme` does not also claim `/ws/acme-other`.
                if (raw.ends_with('/') || canonical.is_dir()) && !s.ends_with('/') {
                    s.push('/');
                }
                push(tenant, s);
            }
        }
    }
    out
}

/// `[anomaly]` resolved against what is hosted: each `sensitive` entry is a tool name or a
/// resource prefix, the latter in every spelling a hosted tool gives it (as for `[tenants]`).
/// An entry that is neither is refused at startup, naming it.
fn anomaly_rules(config: &Config, catalog: &Catalog) -> Result<AnomalyRules, Error> {
    let a = &config.anomaly;
    let mut rules = AnomalyRules {
        denials: a.revoke_after_denials,
        out_of_intent: a.revoke_after_out_of_intent,
        window: a.window,
        ..Default::default()
    };
    for (i, raw) in a.sensitive.iter().enumerate() {
        if catalog.spec(raw).is_some() {
            rules.sensitive_tools.push(raw.clone());
            continue;
        }
        let before = rules.sensitive_prefixes.len();
        for spec in catalog.specs() {
            if let Ok(p) = catalog.canonical_prefix(&spec.name, raw)
                && !p.is_empty()
            {
                let pair = (spec.name.clone(), p);
                if !rules.sensitive_prefixes.contains(&pair) {
                    rules.sensitive_prefixes.push(pair);
                }
            }
        }
        if rules.sensitive_prefixes.len() == before {
            return Err(Error::Config {
                file: config.source.describe(),
                key: format!("anomaly.sensitive[{i}]"),
                message: format!(
                    "`{raw}` is neither a hosted tool ({}) nor a resource prefix any of them accepts",
                    catalog.names()
                ),
            });
        }
    }
    Ok(rules)
}

/// Each tenant's prefixes as each tool that canonicalizes prefixes spells them: what a task
/// request must not cover for that tool (the shipped `covers-other-tenant` rule).
fn tool_tenant_prefixes(config: &Config, catalog: &Catalog) -> Vec<ToolTenantPrefix> {
    let mut out = Vec::new();
    for (tenant, t) in &config.tenants {
        for raw in &t.resources {
            for spec in catalog.specs() {
                if let Some(prefix) = catalog
                    .spelled_prefix(&spec.name, raw)
                    .filter(|p| !p.is_empty())
                {
                    out.push(ToolTenantPrefix {
                        tool: spec.name.clone(),
                        tenant: tenant.clone(),
                        prefix,
                    });
                }
            }
        }
    }
    out
}

impl Host {
    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What is hosted (descriptions only; nothing here runs a tool).
    pub fn catalog(&self) -> &Arc<Catalog> {
        self.inner.door().catalog()
    }

    /// The trusted issuers of workload JWTs.
    pub fn workloads(&self) -> &crate::identity::Workloads {
        &self.inner.workloads
    }

    /// DPoP proofs seen.
    pub fn proofs(&self) -> &crate::identity::dpop::Proofs {
        &self.inner.proofs
    }

    /// The guard.
    pub fn guard(&self) -> &Arc<Guard> {
        self.inner.guard()
    }

    /// The issuer.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.inner.issuer
    }

    /// The ledger of tasks and revocations.
    pub fn ledger(&self) -> &Arc<TaskLedger> {
        self.inner.ledger()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.inner.verifier
    }

    /// The root public key.
    pub fn root_public_key(&self) -> PublicKey {
        self.inner.verifier.root()
    }

    /// Telemetry and audit.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        self.inner.telemetry()
    }

    /// Things worth telling the operator at startup (a created key, policy warnings).
    pub fn notes(&self) -> &[String] {
        &self.inner.notes
    }

    /// Policy warnings, for `capgate policy check`.
    pub fn policy_warnings(config: &Config) -> Result<Vec<(String, LintWarning)>, Error> {
        let (invocation, issuance) = policies(config)?;
        Ok([invocation, issuance]
            .iter()
            .flat_map(|p| p.lint().iter().cloned().map(|w| (p.origin().to_owned(), w)))
            .collect())
    }

    /// An MCP session handler for one connection.
    pub fn session(&self, transport: Transport, stdio_token: Option<String>) -> Session {
        Session::new(Arc::clone(&self.inner), transport, stdio_token)
    }

    /// Calls a tool in-process through the full pipeline (verify, guard, audit, dispatch), as a
    /// client call would. For tests, benchmarks and embedding.
    pub async fn call(
        &self,
        token: &str,
        tool: &str,
        args: Arguments,
    ) -> Result<ToolOutput, InProcessError> {
        let verified = self
            .inner
            .verifier
            .verify(token)
            .map_err(|e| InProcessError::Credential(e.into()))?;
        self.guard()
            .check_token(&verified)
            .map_err(InProcessError::Credential)?;
        let caller = Caller {
            token: verified,
            env: CallEnv {
                transport: Transport::InProcess,
                session: Arc::from("in-process"),
                holder: None,
            },
            rpc_id: None,
        };
        let call = CallRequest {
            action: Action::Call,
            name: tool.to_owned(),
            args: Some(args),
            request_id: "in-process".into(),
            protocol: None,
            traceparent: None,
            tool_call_id: None,
            progress_token: None,
            depth: 0,
        };
        match run_call(&self.inner.pipeline, &caller, call, Delivery::default()).await {
            CallOutcome::Ran(Ok(out)) => Ok(out),
            CallOutcome::Ran(Err(e)) => Err(InProcessError::Tool(e)),
            CallOutcome::Denied(d) => Err(InProcessError::Denied(d)),
            CallOutcome::Invalid(e) => Err(InProcessError::Invalid(e)),
        }
    }

    /// Ends a task and revokes its access.
    pub fn end_task(&self, id: &str, reason: EndReason) -> Result<Option<TaskRecord>, Error> {
        self.ledger().end_task(id, reason)
    }

    /// Ends expired tasks every `every`, until the returned handle is aborted.
    pub fn spawn_reaper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let ledger = Arc::clone(self.ledger());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let l = Arc::clone(&ledger);
                match tokio::task::spawn_blocking(move || l.reap_expired()).await {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!(target: "capgate", ended = n, "expired tasks ended and revoked")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(target: "capgate", error = %capgate_core::error::chain(&e), "could not end expired tasks")
                    }
                    _ => {}
                }
            }
        })
    }
}

/// Why an in-process call did not return output.
#[derive(Debug, thiserror::Error)]
pub enum InProcessError {
    /// The token is unusable, or capgate cannot tell.
    #[error(transparent)]
    Credential(CredentialError),
    /// The guard refused.
    #[error("denied: {}", .0.message)]
    Denied(Box<Denial>),
    /// Unknown tool or invalid arguments.
    #[error(transparent)]
    Invalid(CallError),
    /// The tool failed.
    #[error(transparent)]
    Tool(ToolError),
}
