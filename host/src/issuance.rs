//! Issuance: turning an agent's declared intent into a task token, or refusing to.
//!
//! Invariant: no task token exists unless the issuance policy allowed *every* requested
//! (tool, resource prefix) pair, evaluated together with the presenting token's own checks; and
//! a token is only handed out after its task record is stored, so every live token has a record
//! to end and revoke.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use biscuit_auth::AuthorizerLimits;
use biscuit_auth::builder::{date, fact, int, string};

use crate::capability::{self, TaskGrant, TokenError, VerifiedToken};
use crate::error::Error;
use crate::ledger::TaskLedger;
use crate::policy::{Policy, Refusal};
use crate::registry::Registry;
use crate::store::{EndReason, TaskRecord};

/// What an agent declares when it asks for a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Why the task exists, in words. Shown beside what the task did.
    pub purpose: String,
    /// Tools the task needs.
    pub tools: Vec<String>,
    /// Resource prefixes per tool, as written by the requester (canonicalized at issuance).
    /// A tool without an entry asks for everything its agent may touch with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, Vec<String>>,
    /// Lifetime: seconds, or a duration such as `"15m"`. Default `[policy] default_task_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// The person or system the task acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Who approved the task's side effects, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The tenant the task acts for; default: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A lifetime as seconds or as a human duration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    /// Whole seconds.
    Seconds(u64),
    /// `"90s"`, `"15m"`, `"1h"`.
    Text(String),
}

impl Ttl {
    fn duration(&self) -> Result<Duration, String> {
        match self {
            Ttl::Seconds(s) => Ok(Duration::from_secs(*s)),
            Ttl::Text(t) => crate::config::parse_duration(t),
        }
    }
}

/// Why a task was not issued.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IssuanceError {
    /// The request is malformed (unknown tool, bad duration, ...). Nothing was evaluated.
    #[error("invalid task request: {0}")]
    Invalid(String),
    /// The presenting token is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The issuance policy refused.
    #[error("task refused for tool `{tool}` on `{resource}`: {}", refusal.message)]
    Denied {
        /// The tool whose evaluation failed.
        tool: String,
        /// The resource prefix evaluated (`""` = all of the tool's resources).
        resource: String,
        /// The failed rule(s).
        refusal: Refusal,
    },
    /// Storage or signing failed; no token was handed out.
    #[error("task could not be issued: {0}")]
    Internal(String),
}

impl IssuanceError {
    /// A stable short name for the decision record.
    pub fn reason(&self) -> String {
        match self {
            IssuanceError::Invalid(_) => "invalid_request".into(),
            IssuanceError::Token(t) => t.kind().into(),
            IssuanceError::Denied { refusal, .. } => refusal.reason.clone(),
            IssuanceError::Internal(_) => "internal_error".into(),
        }
    }
}

/// Where a task request came from (the `transport($kind)` fact at issuance).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `POST /v1/tasks`.
    Http,
    /// In-band `task_begin` over stdio.
    Stdio,
    /// In-band `task_begin` over streamable HTTP.
    McpHttp,
    /// `capgate task begin`.
    Cli,
}

impl Channel {
    /// The fact value.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Http | Channel::McpHttp => "http",
            Channel::Stdio => "stdio",
            Channel::Cli => "cli",
        }
    }
}

/// A freshly issued task.
#[derive(Debug, Clone)]
pub struct IssuedTask {
    /// The stored record.
    pub record: TaskRecord,
    /// The task token: the agent's token with the task block appended. Shown once.
    pub token: String,
}

/// Told about every issuance decision (telemetry and the audit log listen here).
pub trait IssuanceObserver: Send + Sync {
    /// A task was issued, and its token is about to be handed out. An `Err` says the issuance
    /// could not be recorded and must not stand (the audit log's `fail_closed`): the task is
    /// then ended and its token never leaves capgate.
    fn issued(
        &self,
        token: &VerifiedToken,
        task: &TaskRecord,
        channel: Channel,
    ) -> Result<(), String>;
    /// A task request was refused.
    fn refused(
        &self,
        token: Option<&VerifiedToken>,
        intent: &Intent,
        error: &IssuanceError,
        channel: Channel,
    );
}

/// Issues tasks.
pub struct Issuer {
    policy: Policy,
    registry: Arc<Registry>,
    ledger: Arc<TaskLedger>,
    limits: AuthorizerLimits,
    max_ttl: Duration,
    default_ttl: Duration,
    tenant_prefixes: Arc<Vec<(String, String)>>,
    observers: Vec<Arc<dyn IssuanceObserver>>,
}

/// Settings of an [`Issuer`].
pub struct IssuerSettings {
    /// Datalog limits per evaluation.
    pub limits: AuthorizerLimits,
    /// `[policy] max_task_ttl`.
    pub max_ttl: Duration,
    /// `[policy] default_task_ttl`.
    pub default_ttl: Duration,
    /// `(tenant, canonical prefix)` pairs.
    pub tenant_prefixes: Arc<Vec<(String, String)>>,
}

impl Issuer {
    /// An issuer over the given policy.
    pub fn new(
        policy: Policy,
        registry: Arc<Registry>,
        ledger: Arc<TaskLedger>,
        settings: IssuerSettings,
    ) -> Self {
        Issuer {
            policy,
            registry,
            ledger,
            limits: settings.limits,
            max_ttl: settings.max_ttl,
            default_ttl: settings.default_ttl,
            tenant_prefixes: settings.tenant_prefixes,
            observers: Vec::new(),
        }
    }

    /// Adds an observer of issuance decisions.
    pub fn observe(&mut self, observer: Arc<dyn IssuanceObserver>) {
        self.observers.push(observer);
    }

    /// The ledger tasks are recorded in.
    pub fn ledger(&self) -> &Arc<TaskLedger> {
        &self.ledger
    }

    /// Decides on a task request and, when allowed, mints the task token and stores the task.
    pub fn issue(
        &self,
        token: &VerifiedToken,
        intent: Intent,
        channel: Channel,
    ) -> Result<IssuedTask, IssuanceError> {
        let result = self.decide_and_mint(token, &intent, channel);
        match &result {
            Ok(task) => {
                let unrecorded = self
                    .observers
                    .iter()
                    .filter_map(|o| o.issued(token, &task.record, channel).err())
                    .next();
                if let Some(why) = unrecorded {
                    // Revoked before anyone has seen the token: an issuance nobody can account
                    // for does not stand.
                    let _ = self.ledger.end_task(&task.record.id, EndReason::Revoked);
                    return Err(IssuanceError::Internal(format!(
                        "{why}; no task was issued ([audit] fail_closed)"
                    )));
                }
            }
            Err(e) => self
                .observers
                .iter()
                .for_each(|o| o.refused(Some(token), &intent, e, channel)),
        }
        result
    }

    /// Reports a request refused before a token could even be read (for the audit log).
    pub fn refuse_unauthenticated(&self, intent: &Intent, error: &IssuanceError, channel: Channel) {
        self.observers
            .iter()
            .for_each(|o| o.refused(None, intent, error, channel));
    }

    fn decide_and_mint(
        &self,
        token: &VerifiedToken,
        intent: &Intent,
        channel: Channel,
    ) -> Result<IssuedTask, IssuanceError> {
        let now = SystemTime::now();
        self.ledger
            .sync()
            .map_err(|e| IssuanceError::Internal(e.to_string()))?;
        self.ledger.check_revocation(token)?;
        token.check_expiry(now)?;

        let ttl = match &intent.ttl {
            Some(t) => t.duration().map_err(IssuanceError::Invalid)?,
            None => self.default_ttl,
        };
        if ttl.is_zero() {
            return Err(IssuanceError::Invalid("ttl must be positive".into()));
        }
        let pairs = self.requested_pairs(token, intent)?;

        let identity = token.identity();
        let request_tenant = intent
            .tenant
            .clone()
            .unwrap_or_else(|| identity.tenant.clone());
        for (tool, prefix) in &pairs {
            let operation = self
                .registry
                .spec(tool)
                .map(|s| s.operation)
                .ok_or_else(|| IssuanceError::Invalid(format!("unknown tool `{tool}`")))?;
            let mut b = self
                .policy
                .builder()
                .set_limits(self.limits.clone())
                .fact(fact("time", &[date(&now)]))
                .and_then(|b| b.fact(fact("tool", &[string(tool)])))
                .and_then(|b| b.fact(fact("operation", &[string(operation.as_str())])))
                .and_then(|b| b.fact(fact("resource", &[string(prefix)])))
                .and_then(|b| b.fact(fact("transport", &[string(channel.as_str())])))
                .and_then(|b| b.fact(fact("request_tenant", &[string(&request_tenant)])))
                .and_then(|b| {
                    b.fact(fact(
                        "request_ttl",
                        &[int(ttl.as_secs().min(i64::MAX as u64) as i64)],
                    ))
                })
                .and_then(|b| b.fact(fact("max_ttl", &[int(self.max_ttl.as_secs() as i64)])))
                .and_then(|b| b.fact(fact("purpose", &[string(&intent.purpose)])))
                .map_err(|e| IssuanceError::Internal(e.to_string()))?;
            if let Some(who) = &intent.on_behalf_of {
                b = b
                    .fact(fact("on_behalf_of", &[string(who)]))
                    .map_err(|e| IssuanceError::Internal(e.to_string()))?;
            }
            if let Some(who) = intent
                .approved_by
                .as_deref()
                .filter(|w| !w.trim().is_empty())
            {
                b = b
                    .fact(fact("approved_by", &[string(who)]))
                    .map_err(|e| IssuanceError::Internal(e.to_string()))?;
            }
            for (tenant, p) in self.tenant_prefixes.iter() {
                b = b
                    .fact(fact("tenant_prefix", &[string(tenant), string(p)]))
                    .map_err(|e| IssuanceError::Internal(e.to_string()))?;
            }
            let outcome = b.build(&token.biscuit).and_then(|mut a| a.authorize());
            if let Err(e) = outcome {
                return Err(IssuanceError::Denied {
                    tool: tool.clone(),
                    resource: prefix.clone(),
                    refusal: self.policy.explain(&e),
                });
            }
        }

        // Allowed: build the grant. A task never outlives the token it was issued from, nor
        // `max_task_ttl`, whatever a custom policy let through.
        let mut expires_at = now
            .checked_add(ttl.min(self.max_ttl))
            .unwrap_or_else(|| crate::capability::date_time(u64::MAX));
        if let Some(limit) = token.expires_at() {
            expires_at = expires_at.min(limit);
        }
        let mut tools: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tool, prefix) in pairs {
            let list = tools.entry(tool).or_default();
            if !list.contains(&prefix) {
                list.push(prefix);
            }
        }
        let task_id = uuid::Uuid::new_v4().to_string();
        let grant = TaskGrant {
            task_id: task_id.clone(),
            tools,
            expires_at,
        };
        let biscuit = capability::append_task_block(token, &grant)?;
        let revocation_id = biscuit
            .revocation_identifiers()
            .last()
            .map(hex::encode)
            .ok_or_else(|| IssuanceError::Internal("appended token has no blocks".into()))?;
        let encoded = biscuit
            .to_base64()
            .map_err(|e| IssuanceError::Internal(e.to_string()))?;
        let (trace_id, span_id) = new_trace_ids();
        let record = TaskRecord {
            id: task_id,
            agent: identity.agent.clone(),
            tenant: identity.tenant.clone(),
            revocation_id,
            intent: intent.clone(),
            grant,
            created_at: now,
            expires_at,
            ended_at: None,
            end_reason: None,
            trace_id,
            span_id,
        };
        self.ledger
            .insert(record.clone())
            .map_err(|e: Error| IssuanceError::Internal(e.to_string()))?;
        Ok(IssuedTask {
            record,
            token: encoded,
        })
    }

    /// Expands the intent into (tool, canonical prefix) pairs, validating its shape.
    fn requested_pairs(
        &self,
        token: &VerifiedToken,
        intent: &Intent,
    ) -> Result<Vec<(String, String)>, IssuanceError> {
        if intent.tools.is_empty() {
            return Err(IssuanceError::Invalid(
                "`tools` is empty; name the tools the task needs".into(),
            ));
        }
        for tool in intent.resources.keys() {
            if !intent.tools.contains(tool) {
                return Err(IssuanceError::Invalid(format!(
                    "`resources` names `{tool}`, which is not in `tools`"
                )));
            }
        }
        let mut pairs = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for tool in &intent.tools {
            if !seen.insert(tool) {
                continue;
            }
            if self.registry.spec(tool).is_none() {
                return Err(IssuanceError::Invalid(format!(
                    "unknown tool `{tool}`; hosted tools: {}",
                    self.registry
                        .specs()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            match intent.resources.get(tool).filter(|r| !r.is_empty()) {
                Some(requested) => {
                    for raw in requested {
                        let p = self
                            .registry
                            .canonical_prefix(tool, raw)
                            .map_err(|e| IssuanceError::Invalid(e.to_string()))?;
                        pairs.push((tool.clone(), p));
                    }
                }
                None => {
                    let own = token
                        .identity()
                        .prefixes
                        .get(tool)
                        .cloned()
                        .unwrap_or_else(|| vec![String::new()]);
                    for p in own {
                        pairs.push((tool.clone(), p));
                    }
                }
            }
        }
        Ok(pairs)
    }
}

/// A fresh W3C trace id (32 hex) and span id (16 hex), never all zero.
pub fn new_trace_ids() -> (String, String) {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let trace = hex::encode(a.as_bytes());
    let span = hex::encode(&b.as_bytes()[..8]);
    (trace, span)
}
