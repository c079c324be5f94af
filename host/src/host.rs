//! The host: every part of capgate wired together from one validated [`Config`].
//!
//! Invariant: a built [`Host`] has a root key, parsed policies, an open store and audit log, and
//! a registry that can no longer change, so every session it serves sees the same tools and the
//! same rules for its whole life.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use biscuit_auth::{AuthorizerLimits, PublicKey};

use crate::capability::{RootKey, TokenError, Verifier};
use crate::config::{Config, ConfigSource};
use crate::error::Error;
use crate::guard::{CallEnv, Guard, GuardSettings, Transport};
use crate::issuance::{Issuer, IssuerSettings};
use crate::ledger::TaskLedger;
use crate::policy::{LintWarning, Policy, PolicyKind};
use crate::registry::Registry;
use crate::session::{CallRequest, PipelineResult, Session, run_call};
use crate::store::{EndReason, SqliteStore, TaskRecord, TaskStore};
use crate::telemetry::{AuditLog, Providers, Telemetry, TelemetrySettings};
use crate::tool::{Arguments, Tool, ToolError, ToolOutput};

/// Shared state of a running host.
pub(crate) struct HostInner {
    pub(crate) config: Config,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) notes: Vec<String>,
}

/// A running capgate host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

/// Builds a [`Host`].
pub struct HostBuilder {
    config: Config,
    registry: Registry,
    providers: Option<Providers>,
    create_key: Option<bool>,
}

impl HostBuilder {
    /// A builder over a validated config.
    pub fn new(config: Config) -> Self {
        HostBuilder {
            config,
            registry: Registry::new(),
            providers: None,
            create_key: None,
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

    /// Loads the key, opens the store and audit log, parses the policies.
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
        let root_public = if create {
            let (key, created) = RootKey::load_or_create(&key_path)?;
            if created {
                notes.push(format!(
                    "created a new root key at {} (public key {})",
                    key_path.display(),
                    key.public_text()
                ));
            }
            key.public()
        } else {
            RootKey::load(&key_path)?.public()
        };

        let registry = Arc::new(self.registry);
        let (inv_text, inv_origin) = config.invocation_policy()?;
        let invocation = Policy::parse(PolicyKind::Invocation, &inv_origin, &inv_text)?;
        let (iss_text, iss_origin) = config.issuance_policy()?;
        let issuance = Policy::parse(PolicyKind::Issuance, &iss_origin, &iss_text)?;
        for (origin, w) in invocation
            .lint()
            .iter()
            .map(|w| (invocation.origin(), w))
            .chain(issuance.lint().iter().map(|w| (issuance.origin(), w)))
        {
            notes.push(format!("warning: {origin}:{}: {}", w.line, w.message));
        }

        let store: Arc<dyn TaskStore> = Arc::new(SqliteStore::open(&config.store_file())?);
        let ledger = Arc::new(TaskLedger::open(
            Arc::clone(&store),
            config.guard.store_poll,
        )?);
        let limits = AuthorizerLimits {
            max_facts: config.guard.max_facts,
            max_iterations: config.guard.max_iterations,
            max_time: config.guard.max_time,
        };
        let tenant_prefixes = Arc::new(tenant_prefixes(&config, &registry));
        let verifier = Arc::new(Verifier::with_limits(
            root_public,
            config.guard.token_cache_entries,
            limits.clone(),
        ));
        let guard = Arc::new(Guard::new(
            Arc::clone(&ledger),
            invocation,
            GuardSettings {
                limits: limits.clone(),
                cache_entries: config.guard.decision_cache_entries,
                cache_ttl: config.guard.decision_cache_ttl,
                tenant_prefixes: Arc::clone(&tenant_prefixes),
            },
        ));
        let audit = AuditLog::open(
            &config.audit_file(),
            config.audit.max_bytes,
            config.audit.keep,
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
        let mut issuer = Issuer::new(
            issuance,
            Arc::clone(&registry),
            Arc::clone(&ledger),
            IssuerSettings {
                limits,
                max_ttl: config.policy.max_task_ttl,
                default_ttl: config.policy.default_task_ttl,
                tenant_prefixes,
            },
        );
        issuer.observe(telemetry.clone());
        Ok(Host {
            inner: Arc::new(HostInner {
                config,
                verifier,
                registry,
                guard,
                issuer: Arc::new(issuer),
                telemetry,
                notes,
            }),
        })
    }
}

/// Tenant prefixes in canonical form: URLs as written *and* as each network tool canonicalizes
/// them (so `https://API.example.com:443/x` claims what the tools' resources spell
/// `https://api.example.com/x`), absolute paths canonicalized when they exist, relative paths
/// resolved against the fs tools' root. An extra spelling can only widen what other tenants are
/// refused, never what this one may reach.
fn tenant_prefixes(config: &Config, registry: &Registry) -> Vec<(String, String)> {
    let root = std::fs::canonicalize(&config.tools.fs.root)
        .unwrap_or_else(|_| config.tools.fs.root.clone());
    let mut out = Vec::new();
    for (tenant, t) in &config.tenants {
        for raw in &t.resources {
            let p = if raw.contains("://") || raw.starts_with("tool:") {
                raw.clone()
            } else {
                let path = if Path::new(raw).is_absolute() {
                    Path::new(raw).to_path_buf()
                } else {
                    root.join(raw)
                };
                let canonical = std::fs::canonicalize(&path).unwrap_or(path);
                let mut s = canonical.to_string_lossy().into_owned();
                // A directory prefix ends in `/`, so `/ws/acme` does not also claim `/ws/acme-other`.
                if (raw.ends_with('/') || canonical.is_dir()) && !s.ends_with('/') {
                    s.push('/');
                }
                s
            };
            if raw.contains("://") {
                for spec in registry
                    .specs()
                    .filter(|s| s.operation == crate::tool::Operation::Network)
                {
                    if let Ok(c) = registry.canonical_prefix(&spec.name, raw)
                        && !c.is_empty()
                        && c != p
                        && !out.contains(&(tenant.clone(), c.clone()))
                    {
                        out.push((tenant.clone(), c));
                    }
                }
            }
            out.push((tenant.clone(), p));
        }
    }
    out
}

impl Host {
    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The hosted tools.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The guard.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.inner.guard
    }

    /// The issuer.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.inner.issuer
    }

    /// The ledger of tasks and revocations.
    pub fn ledger(&self) -> &Arc<TaskLedger> {
        self.inner.guard.ledger()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.inner.verifier
    }

    /// Spends an approval token presented with `agent`'s task request and says who approved:
    /// verified against the root key, unexpired, bound to `agent` (and its tenant) if bound at
    /// all, not revoked, and not spent before. An approval is one human yes for one request: it
    /// is spent here, before the request is evaluated, whatever the outcome — two requests
    /// racing with one approval cannot both use it.
    pub fn spend_approval(
        &self,
        token: &str,
        agent: &str,
        tenant: &str,
    ) -> Result<String, TokenError> {
        let approval =
            self.inner
                .verifier
                .verify_approval(token, agent, tenant, SystemTime::now())?;
        let ledger = self.ledger();
        let store_failed =
            |e: Error| TokenError::NotApproval(format!("the revocation store failed: {e}"));
        ledger.sync().map_err(store_failed)?;
        ledger.check_revocation_ids(&approval.revocation_ids)?;
        // The authority block's id: the one every copy of this approval shares, whatever was
        // appended to it.
        let first = approval
            .revocation_ids
            .first()
            .ok_or_else(|| TokenError::NotApproval("it has no blocks".into()))?;
        if !ledger
            .revoke(first, &format!("approval by {} spent", approval.by))
            .map_err(store_failed)?
        {
            return Err(TokenError::NotApproval(
                "it was already spent on an earlier request; an approval serves one request".into(),
            ));
        }
        Ok(approval.by)
    }

    /// The root public key.
    pub fn root_public_key(&self) -> PublicKey {
        self.inner.verifier.root()
    }

    /// Telemetry and audit.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.inner.telemetry
    }

    /// Things worth telling the operator at startup (a created key, policy warnings).
    pub fn notes(&self) -> &[String] {
        &self.inner.notes
    }

    /// Policy warnings, for `capgate policy check`.
    pub fn policy_warnings(config: &Config) -> Result<Vec<(String, LintWarning)>, Error> {
        let mut out = Vec::new();
        let (t, o) = config.invocation_policy()?;
        let p = Policy::parse(PolicyKind::Invocation, &o, &t)?;
        out.extend(p.lint().iter().cloned().map(|w| (o.clone(), w)));
        let (t, o) = config.issuance_policy()?;
        let p = Policy::parse(PolicyKind::Issuance, &o, &t)?;
        out.extend(p.lint().iter().cloned().map(|w| (o.clone(), w)));
        Ok(out)
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
            .map_err(InProcessError::Token)?;
        self.inner
            .guard
            .check_token(&verified)
            .map_err(InProcessError::Token)?;
        let session = Session::new(Arc::clone(&self.inner), Transport::InProcess, None);
        let env = CallEnv {
            transport: Transport::InProcess,
            session: Arc::from("in-process"),
        };
        let call = CallRequest {
            name: tool.to_owned(),
            args: Some(args),
            request_id: "in-process".into(),
            protocol: None,
            traceparent: None,
            progress_token: None,
            depth: 0,
        };
        let state = session.state();
        match run_call(&state, &verified, &env, call, None, Default::default()).await {
            PipelineResult::Ran(Ok(out)) => Ok(out),
            PipelineResult::Ran(Err(e)) => Err(InProcessError::Tool(e)),
            PipelineResult::Denied(d) => Err(InProcessError::Denied(d)),
            PipelineResult::Invalid(e) => Err(InProcessError::Invalid(e)),
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
                        tracing::warn!(target: "capgate", error = %e, "could not end expired tasks")
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
    /// The token is unusable.
    #[error(transparent)]
    Token(TokenError),
    /// The guard refused.
    #[error("denied: {}", .0.message)]
    Denied(Box<crate::guard::Denial>),
    /// Unknown tool or invalid arguments.
    #[error(transparent)]
    Invalid(crate::registry::CallError),
    /// The tool failed.
    #[error(transparent)]
    Tool(ToolError),
}
