//! Issuance: turning an agent's declared intent into a task token, or refusing to; and
//! spending the approvals that let side effects through.
//!
//! Invariant: no task token exists unless the issuance policy allowed *every* requested
//! (tool, resource prefix) pair, evaluated together with the presenting token's own checks; and
//! a token is only handed out after its task record is stored and its issuance recorded, so
//! every live token has a record to end and revoke.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{date, fact, int, string};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits};
use capgate_core::door::Catalog;
use capgate_core::task::{Budget, EndReason, Intent, TaskGrant, TaskRecord, WorkloadName};
use capgate_core::{time, vocab};

use crate::book::{StoreFault, TaskBook};
use crate::guard::CredentialError;
use crate::policy::{Policy, Refusal};
use crate::token::{self, Identity, TokenError, VerifiedToken, Verifier};

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
    /// The task store is unavailable; nothing was issued. capgate's fault, answered 503.
    #[error("task could not be issued")]
    Unavailable(#[source] StoreFault),
    /// The issuance could not be recorded (`[audit] fail_closed`); the task was ended before
    /// its token left capgate. capgate's fault, answered 503.
    #[error(
        "task could not be issued: the audit log cannot record it, so it does not stand ([audit] fail_closed)"
    )]
    Unrecorded(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Building the token failed; nothing was issued. capgate's fault.
    #[error("task could not be issued")]
    Internal(#[source] TokenError),
}

impl IssuanceError {
    /// A stable short name for the decision record.
    pub fn reason(&self) -> String {
        match self {
            IssuanceError::Invalid(_) => "invalid_request".into(),
            IssuanceError::Token(t) => t.kind().into(),
            IssuanceError::Denied { refusal, .. } => refusal.reason.clone(),
            IssuanceError::Unavailable(_) => "store_unavailable".into(),
            IssuanceError::Unrecorded(_) => "audit_unavailable".into(),
            IssuanceError::Internal(_) => "internal_error".into(),
        }
    }

    /// True when the refusal is capgate's own fault (store, audit log, signing), not the
    /// request's.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            IssuanceError::Unavailable(_)
                | IssuanceError::Unrecorded(_)
                | IssuanceError::Internal(_)
        )
    }
}

impl From<StoreFault> for IssuanceError {
    fn from(e: StoreFault) -> Self {
        IssuanceError::Unavailable(e)
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
    /// Where an in-band `task_begin` over this transport comes from.
    pub fn in_band(transport: crate::guard::Transport) -> Self {
        match transport {
            crate::guard::Transport::Http => Channel::McpHttp,
            crate::guard::Transport::Stdio | crate::guard::Transport::InProcess => Channel::Stdio,
        }
    }

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
    ) -> Result<(), Arc<dyn std::error::Error + Send + Sync>>;
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
    catalog: Arc<Catalog>,
    book: Arc<dyn TaskBook>,
    verifier: Arc<Verifier>,
    limits: AuthorizerLimits,
    max_ttl: Duration,
    default_ttl: Duration,
    tenant_prefixes: Arc<Vec<(String, String)>>,
    tool_tenant_prefixes: Arc<Vec<ToolTenantPrefix>>,
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
    /// Tenants' prefixes as each tool that canonicalizes prefixes spells them.
    pub tool_tenant_prefixes: Arc<Vec<ToolTenantPrefix>>,
}

/// A tenant's prefix as one tool spells its resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolTenantPrefix {
    /// The tool.
    pub tool: String,
    /// The tenant.
    pub tenant: String,
    /// The prefix, canonical for that tool.
    pub prefix: String,
}

impl Issuer {
    /// An issuer over the given policy.
    pub fn new(
        policy: Policy,
        catalog: Arc<Catalog>,
        book: Arc<dyn TaskBook>,
        verifier: Arc<Verifier>,
        settings: IssuerSettings,
    ) -> Self {
        Issuer {
            policy,
            catalog,
            book,
            verifier,
            limits: settings.limits,
            max_ttl: settings.max_ttl,
            default_ttl: settings.default_ttl,
            tenant_prefixes: settings.tenant_prefixes,
            tool_tenant_prefixes: settings.tool_tenant_prefixes,
            observers: Vec::new(),
        }
    }

    /// Adds an observer of issuance decisions.
    pub fn observe(&mut self, observer: Arc<dyn IssuanceObserver>) {
        self.observers.push(observer);
    }

    /// The book tasks are recorded in.
    pub fn book(&self) -> &Arc<dyn TaskBook> {
        &self.book
    }

    /// Spends an approval token presented with `agent`'s task request and says who approved:
    /// verified against the root key, unexpired, bound to `agent` (and its tenant) if bound at
    /// all, not revoked, and not spent before. An approval is one human yes for one request: it
    /// is spent here, before the request is evaluated, whatever the outcome; two requests
    /// racing with one approval cannot both use it.
    pub fn spend_approval(
        &self,
        token: &str,
        agent: &str,
        tenant: &str,
    ) -> Result<String, CredentialError> {
        let approval = self
            .verifier
            .verify_approval(token, agent, tenant, SystemTime::now())?;
        self.book.sync()?;
        self.book.check_revocation(&approval.revocation_ids)?;
        // The authority block's id: the one every copy of this approval shares, whatever was
        // appended to it.
        let first = approval
            .revocation_ids
            .first()
            .ok_or_else(|| TokenError::NotApproval("it has no blocks".into()))?;
        if !self
            .book
            .revoke(first, &format!("approval by {} spent", approval.by))?
        {
            return Err(TokenError::NotApproval(
                "it was already spent on an earlier request; an approval serves one request".into(),
            )
            .into());
        }
        Ok(approval.by)
    }

    /// Decides on a task request and, when allowed, mints the task token and stores the task.
    pub fn issue(
        &self,
        token: &VerifiedToken,
        intent: Intent,
        channel: Channel,
    ) -> Result<IssuedTask, IssuanceError> {
        self.issue_bound(token, intent, channel, None)
    }

    /// [`Issuer::issue`], binding the task token to the key with thumbprint `holder` (DPoP)
    /// when given: the token then works only beside a fresh proof made with that key.
    pub fn issue_bound(
        &self,
        token: &VerifiedToken,
        intent: Intent,
        channel: Channel,
        holder: Option<String>,
    ) -> Result<IssuedTask, IssuanceError> {
        let result = self.decide_and_mint(token, &intent, channel, holder);
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
                    if let Err(e) = self
                        .book
                        .end_task(&task.record.id, EndReason::Revoked, None)
                    {
                        tracing::error!(task = %task.record.id, error = %capgate_core::error::chain(&e), "an unrecorded task could not be ended; its token was never handed out");
                    }
                    return Err(IssuanceError::Unrecorded(why));
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
        holder: Option<String>,
    ) -> Result<IssuedTask, IssuanceError> {
        let now = SystemTime::now();
        self.book.sync()?;
        self.book.check_revocation(token.revocation_ids())?;
        token.check_expiry(now)?;

        let ttl = match &intent.ttl {
            Some(t) => t.duration().map_err(IssuanceError::Invalid)?,
            None => self.default_ttl,
        };
        if ttl.is_zero() {
            return Err(IssuanceError::Invalid("ttl must be positive".into()));
        }
        let pairs = self.requested_pairs(token, intent)?;
        let budget = intent.budget.clone().filter(|b| !b.is_empty());
        if let Some(b) = &budget {
            b.validate().map_err(IssuanceError::Invalid)?;
            if let Some(tool) = b.per_tool.keys().find(|t| !intent.tools.contains(t)) {
                return Err(IssuanceError::Invalid(format!(
                    "`budget.per_tool` names `{tool}`, which is not in `tools`"
                )));
            }
        }

        let identity = token.identity();
        let request_tenant = intent
            .tenant
            .clone()
            .unwrap_or_else(|| identity.tenant.clone());
        for (tool, prefix) in &pairs {
            let operation = self
                .catalog
                .spec(tool)
                .map(|s| s.operation)
                .ok_or_else(|| IssuanceError::Invalid(format!("unknown tool `{tool}`")))?;
            let b = self.pair_authorizer(&PairFacts {
                tool,
                prefix,
                operation,
                channel,
                request_tenant: &request_tenant,
                ttl,
                purpose: &intent.purpose,
                on_behalf_of: intent.on_behalf_of.as_deref(),
                approved_by: intent.approved_by.as_deref(),
                budget: budget.as_ref(),
                now,
            })?;
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
            .unwrap_or_else(|| time::date_time(u64::MAX));
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
            budget,
            workload: identity
                .workload
                .clone()
                .map(|(issuer, subject)| WorkloadName { issuer, subject }),
            holder,
        };
        let biscuit = token::append_task_block(token, &grant).map_err(|e| match e {
            // A grant that cannot be a token is the request's problem (say, no tool at all).
            TokenError::Invalid(m) => IssuanceError::Invalid(m),
            other => IssuanceError::Internal(other),
        })?;
        let revocation_id = biscuit
            .revocation_identifiers()
            .last()
            .map(hex::encode)
            .ok_or_else(|| {
                IssuanceError::Internal(TokenError::Invalid(
                    "the appended token has no blocks".into(),
                ))
            })?;
        let encoded = biscuit
            .to_base64()
            .map_err(|e| IssuanceError::Internal(TokenError::Build(e)))?;
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
            revoked_by: None,
            trace_id,
            span_id,
        };
        self.book.insert(record.clone())?;
        Ok(IssuedTask {
            record,
            token: encoded,
        })
    }

    /// The issuance policy's authorizer for one requested (tool, prefix), with every fact the
    /// request supplies.
    fn pair_authorizer(&self, r: &PairFacts<'_>) -> Result<AuthorizerBuilder, IssuanceError> {
        let secs = |d: Duration| int(d.as_secs().min(i64::MAX as u64) as i64);
        let mut b = self
            .policy
            .builder()
            .set_limits(self.limits.clone())
            .fact(fact(vocab::TIME, &[date(&r.now)]))
            .and_then(|b| b.fact(fact(vocab::TOOL, &[string(r.tool)])))
            .and_then(|b| b.fact(fact(vocab::OPERATION, &[string(r.operation.as_str())])))
            .and_then(|b| b.fact(fact(vocab::RESOURCE, &[string(r.prefix)])))
            .and_then(|b| b.fact(fact(vocab::TRANSPORT, &[string(r.channel.as_str())])))
            .and_then(|b| b.fact(fact(vocab::REQUEST_TENANT, &[string(r.request_tenant)])))
            .and_then(|b| b.fact(fact(vocab::REQUEST_TTL, &[secs(r.ttl)])))
            .and_then(|b| b.fact(fact(vocab::MAX_TTL, &[secs(self.max_ttl)])))
            .and_then(|b| b.fact(fact(vocab::PURPOSE, &[string(r.purpose)])))
            .map_err(internal)?;
        if let Some(who) = r.on_behalf_of {
            b = b
                .fact(fact(vocab::ON_BEHALF_OF, &[string(who)]))
                .map_err(internal)?;
        }
        if let Some(who) = r.approved_by.filter(|w| !w.trim().is_empty()) {
            b = b
                .fact(fact(vocab::APPROVED_BY, &[string(who)]))
                .map_err(internal)?;
        }
        for (tenant, p) in self.tenant_prefixes.iter() {
            b = b
                .fact(fact(vocab::TENANT_PREFIX, &[string(tenant), string(p)]))
                .map_err(internal)?;
        }
        // The requested budget, so that a policy can demand one (`check if
        // budget_calls($n), $n <= 100`).
        for f in r.budget.into_iter().flat_map(token::budget_facts) {
            b = b.fact(f).map_err(internal)?;
        }
        for t in self
            .tool_tenant_prefixes
            .iter()
            .filter(|t| t.tool == r.tool)
        {
            b = b
                .fact(fact(
                    vocab::TOOL_TENANT_PREFIX,
                    &[string(&t.tool), string(&t.tenant), string(&t.prefix)],
                ))
                .map_err(internal)?;
        }
        Ok(b)
    }

    /// Whether a new task asked for by `identity` could be granted `tool` on `resource`: the
    /// agent's own rights and prefixes, then the issuance policy, as for a real request (with
    /// the default lifetime and no approval). `Ok` carries the prefix to ask for and whether a
    /// human's approval would be needed; `Err` says in words why no task would get it. For a
    /// denial's advice only: it issues nothing and reads nothing but the identity.
    pub fn could_grant(
        &self,
        identity: &Identity,
        tool: &str,
        resource: &str,
        purpose: &str,
        budget: Option<&Budget>,
        channel: Channel,
    ) -> Result<(String, bool), String> {
        if !identity.rights.iter().any(|r| r == tool) {
            return Err(format!(
                "the agent holds no right to `{tool}`; only an operator can grant one"
            ));
        }
        let covered = identity
            .prefixes
            .get(tool)
            .is_some_and(|ps| ps.iter().any(|p| capgate_core::task::covers(p, resource)));
        if !covered {
            return Err(format!(
                "`{resource}` is outside the prefixes the agent may ever use with `{tool}`"
            ));
        }
        let operation = self
            .catalog
            .spec(tool)
            .map(|s| s.operation)
            .ok_or_else(|| format!("`{tool}` is not hosted"))?;
        let prefix = self
            .catalog
            .canonical_prefix(tool, resource)
            .unwrap_or_else(|_| resource.to_owned());
        let facts = PairFacts {
            tool,
            prefix: &prefix,
            operation,
            channel,
            request_tenant: &identity.tenant,
            ttl: self.default_ttl.min(self.max_ttl),
            purpose,
            on_behalf_of: None,
            approved_by: None,
            budget,
            now: SystemTime::now(),
        };
        // The identity's facts stand in for the authority block they were read from.
        let run = |approved: bool| -> Result<(), Refusal> {
            let mut b = self
                .pair_authorizer(&PairFacts {
                    approved_by: approved.then_some("(dry run)"),
                    ..facts
                })
                .map_err(|e| self.policy.explain(&to_token_error(e)))?;
            let mut identity_facts = vec![
                fact(vocab::AGENT, &[string(&identity.agent)]),
                fact(vocab::TENANT, &[string(&identity.tenant)]),
            ];
            for r in &identity.rights {
                identity_facts.push(fact(vocab::RIGHT, &[string(r)]));
            }
            for (t, ps) in &identity.prefixes {
                for p in ps {
                    identity_facts.push(fact(vocab::RESOURCE_PREFIX, &[string(t), string(p)]));
                }
            }
            for f in identity_facts {
                b = b.fact(f).map_err(|e| self.policy.explain(&e))?;
            }
            b.build_unauthenticated()
                .and_then(|mut a| a.authorize())
                .map(|_| ())
                .map_err(|e| self.policy.explain(&e))
        };
        match run(false) {
            Ok(()) => Ok((prefix, false)),
            Err(first) => match run(true) {
                Ok(()) => Ok((prefix, true)),
                Err(_) => Err(format!(
                    "the issuance policy would refuse a task for it (rule `{}`)",
                    first.reason
                )),
            },
        }
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
            if self.catalog.spec(tool).is_none() {
                return Err(IssuanceError::Invalid(format!(
                    "unknown tool `{tool}`; hosted tools: {}",
                    self.catalog.names()
                )));
            }
            match intent.resources.get(tool).filter(|r| !r.is_empty()) {
                Some(requested) => {
                    for raw in requested {
                        let p = self
                            .catalog
                            .canonical_prefix(tool, raw)
                            .map_err(|e| IssuanceError::Invalid(capgate_core::error::chain(&e)))?;
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

/// The facts of one requested (tool, prefix).
#[derive(Clone, Copy)]
struct PairFacts<'a> {
    tool: &'a str,
    prefix: &'a str,
    operation: capgate_core::tool::Operation,
    channel: Channel,
    request_tenant: &'a str,
    ttl: Duration,
    purpose: &'a str,
    on_behalf_of: Option<&'a str>,
    approved_by: Option<&'a str>,
    budget: Option<&'a Budget>,
    now: SystemTime,
}

/// A builder fault as the Datalog error `Policy::explain` reads.
fn to_token_error(e: IssuanceError) -> biscuit_auth::error::Token {
    match e {
        IssuanceError::Internal(TokenError::Build(t)) => t,
        _ => biscuit_auth::error::Token::InternalError,
    }
}

/// A Datalog fact that could not be built: only an internal inconsistency can cause it.
fn internal(e: biscuit_auth::error::Token) -> IssuanceError {
    IssuanceError::Internal(TokenError::Build(e))
}

/// A fresh W3C trace id (32 hex) and span id (16 hex), never all zero.
pub fn new_trace_ids() -> (String, String) {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let trace = hex::encode(a.as_bytes());
    let span = hex::encode(&b.as_bytes()[..8]);
    (trace, span)
}
