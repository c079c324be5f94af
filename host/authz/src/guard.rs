//! The guard: decides whether one prepared call may run, and which tools a token can see.
//!
//! It is the door's authorization stage ([`capgate_core::door::Stages::authorize`]): the door
//! builds an authorized call only from the [`Grant`] returned here, so no tool runs on a call
//! this guard did not allow. `tools/list` is answered by the same Datalog runs
//! ([`Guard::visible_tools`]).
//!
//! Invariant: any error anywhere (store, Datalog, limits) is a deny; one that is capgate's own
//! fault says so ([`Denial::fault`]). A cached allow is only used when it is provably the answer
//! Datalog would give now: the cache key holds every fact the authorizer sees except `time`, the
//! entry expires at the next date in the token or the policy (and within `[guard]
//! decision_cache_ttl`), and any revocation voids every entry at once. The cache is bounded and
//! evicts (it never empties itself), so a flood of distinct calls cannot flush other clients'
//! entries.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::AuthorizerLimits;
use biscuit_auth::builder::{AuthorizerBuilder, Term, date, fact, int, string};
use capgate_core::door::{Catalog, Prepared};
use capgate_core::error::chain;
use capgate_core::task::{BudgetExhausted, EndReason, TaskRecord};
use capgate_core::tool::{Arguments, Operation, ToolSpec};
use capgate_core::vocab;
use serde_json::Value;

use crate::anomaly::{AnomalyRules, Attempt, Fired, Watch};
use crate::book::{StoreFault, TaskBook};
use crate::policy::{FailedCheckInfo, Policy};
use crate::token::{TokenError, VerifiedToken};

/// Longest string argument supplied to Datalog as an `arg` fact. Longer values are left out, so
/// a policy that constrains them fails closed.
pub const MAX_ARG_FACT_LEN: usize = 4096;

/// How the request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Standard input/output of a child process.
    Stdio,
    /// Streamable HTTP.
    Http,
    /// In-process (tests, benchmarks, nested calls keep their caller's transport).
    InProcess,
}

impl Transport {
    /// The `transport($kind)` fact value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Http => "http",
            Transport::InProcess => "in_process",
        }
    }

    /// OpenTelemetry `network.transport`.
    pub fn network(self) -> &'static str {
        match self {
            Transport::Stdio => "pipe",
            Transport::Http => "tcp",
            Transport::InProcess => "inproc",
        }
    }
}

/// The connection-level facts of a call.
#[derive(Debug, Clone)]
pub struct CallEnv {
    /// How the request arrived.
    pub transport: Transport,
    /// The MCP session (or the process's session for stdio).
    pub session: Arc<str>,
    /// The thumbprint of the key whose fresh DPoP proof came with this request (HTTP only).
    pub holder: Option<Arc<str>>,
}

/// What an allow rests on: the live task and the token.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The task whose block the token carries.
    pub task: Arc<TaskRecord>,
    /// The verified token.
    pub token: Arc<VerifiedToken>,
    /// Whether the allow came from the decision cache.
    pub cached: bool,
}

/// A refused call: nothing ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Denial {
    /// True when capgate itself could not decide (its store or audit log failed): the call was
    /// refused to fail closed, not because the request was wrong.
    pub fault: bool,
    /// Low-cardinality reason (the failed rule's name, `token_revoked`, `run_limit`, ...).
    pub reason: String,
    /// One sentence for the agent.
    pub message: String,
    /// Every failed check.
    pub failed_checks: Vec<FailedCheckInfo>,
    /// The tool asked for.
    pub tool: String,
    /// The canonical resource it would have touched.
    pub resource: String,
    /// The budget limit the call would have gone over (`budget_exhausted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetExhausted>,
    /// Set when this attempt made an anomaly rule fire: the task is revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_revoked: Option<Fired>,
    /// What would have been needed, and how to ask for it (filled in by the host, which knows
    /// the issuer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<Value>,
    /// The live task the token carries, if any.
    #[serde(skip)]
    pub task: Option<Arc<TaskRecord>>,
}

impl Denial {
    /// A refusal of `call`.
    pub fn new(
        reason: &str,
        message: String,
        call: &Prepared,
        task: Option<Arc<TaskRecord>>,
    ) -> Self {
        Denial {
            fault: false,
            reason: reason.to_owned(),
            message,
            failed_checks: Vec::new(),
            tool: call.spec().name.clone(),
            resource: call.resource().as_str().to_owned(),
            budget: None,
            task_revoked: None,
            remedy: None,
            task,
        }
    }

    /// A refusal because capgate could not decide: its own fault, not the caller's.
    pub fn fault(
        reason: &str,
        message: String,
        call: &Prepared,
        task: Option<Arc<TaskRecord>>,
    ) -> Self {
        Denial {
            fault: true,
            ..Denial::new(reason, message, call, task)
        }
    }
}

/// Why a presented credential cannot be used right now: the presenter's problem or capgate's,
/// nothing else.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    /// The token itself is refused (malformed, forged, expired, revoked): the presenter's
    /// problem, answered 401.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// capgate cannot tell (its store is unavailable): capgate's problem, answered 503.
    #[error(transparent)]
    Unavailable(#[from] StoreFault),
}

/// Settings of a [`Guard`].
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// Datalog limits per authorization.
    pub limits: AuthorizerLimits,
    /// Entries in the decision cache (0 = off).
    pub cache_entries: usize,
    /// Longest a cached allow lives.
    pub cache_ttl: Duration,
    /// `(tenant, canonical prefix)` pairs.
    pub tenant_prefixes: Arc<Vec<(String, String)>>,
    /// `[anomaly]`: when a task's behaviour revokes it.
    pub anomaly: AnomalyRules,
}

/// The guard.
pub struct Guard {
    book: Arc<dyn TaskBook>,
    policy: Policy,
    /// The policy with limits and the static facts already loaded; cloned per authorization.
    template: AuthorizerBuilder,
    settings: GuardSettings,
    /// `None` when `[guard] decision_cache_entries` is 0.
    cache: Option<quick_cache::sync::Cache<String, CacheEntry>>,
    /// `None` when every anomaly rule is off.
    watch: Option<Watch>,
    /// Revocations anomaly rules decided but the store could not take yet, by task id.
    owed: std::sync::Mutex<std::collections::HashMap<String, Fired>>,
    stats: GuardStats,
}

#[derive(Clone)]
struct CacheEntry {
    epoch: u64,
    valid_until: SystemTime,
    expires: Instant,
}

/// Counters the benchmarks and tests read.
#[derive(Debug, Default)]
pub struct GuardStats {
    /// Decisions answered from the cache.
    pub cache_hits: AtomicU64,
    /// Datalog runs: decisions not answered from the cache, and the runs `tools/list` spends.
    pub datalog_runs: AtomicU64,
}

/// Most Datalog runs one `tools/list` may spend (see [`Guard::visible_tools`]).
const LIST_RUN_BUDGET: usize = 512;
/// Most time one `tools/list` may spend on authorization.
const LIST_TIME_BUDGET: Duration = Duration::from_millis(250);

impl Guard {
    /// A guard over the invocation policy.
    pub fn new(book: Arc<dyn TaskBook>, policy: Policy, settings: GuardSettings) -> Self {
        let mut template = policy.builder().set_limits(settings.limits.clone());
        for (tenant, p) in settings.tenant_prefixes.iter() {
            // Strings are always valid Datalog terms; building this fact cannot fail.
            template = template
                .fact(fact(vocab::TENANT_PREFIX, &[string(tenant), string(p)]))
                .unwrap_or_else(|_| unreachable!("tenant_prefix fact"));
        }
        let cache = (settings.cache_entries > 0)
            .then(|| quick_cache::sync::Cache::new(settings.cache_entries));
        let watch = (!settings.anomaly.is_off()).then(|| Watch::new(settings.anomaly.clone()));
        Guard {
            book,
            policy,
            template,
            settings,
            cache,
            watch,
            owed: Default::default(),
            stats: GuardStats::default(),
        }
    }

    /// The book of tasks and revocations.
    pub fn book(&self) -> &Arc<dyn TaskBook> {
        &self.book
    }

    /// Counters.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// Checks what does not depend on the call: revocation and expiry. The HTTP layer uses
    /// this to answer 401 (or 503, when the store cannot tell) before any MCP processing.
    pub fn check_token(&self, token: &VerifiedToken) -> Result<(), CredentialError> {
        self.book.sync()?;
        self.book.check_revocation(token.revocation_ids())?;
        token.check_expiry(SystemTime::now())?;
        Ok(())
    }

    /// Decides one call the caller is making: the grant it rests on, or why not. Any failure is
    /// a denial. An allowed call is counted against the task's budget (and refused when that is
    /// used up), and every decision is put to the anomaly rules, which may revoke the task.
    pub fn decide(
        &self,
        token: &Arc<VerifiedToken>,
        call: &Prepared,
        env: &CallEnv,
    ) -> Result<Grant, Box<Denial>> {
        let now = SystemTime::now();
        let decision = self
            .judge(token, call, env, now)
            .and_then(|grant| Self::standing(call, grant))
            .and_then(|grant| self.spend(token, call, grant, now));
        self.watch(decision, call)
    }

    /// Whether the guard would allow this call, without counting it as an attempt: for a
    /// running tool asking about the entries of a walk (what it may show), not for calls.
    pub fn permits(&self, token: &Arc<VerifiedToken>, call: &Prepared, env: &CallEnv) -> bool {
        self.judge(token, call, env, SystemTime::now()).is_ok()
    }

    /// Refuses an otherwise allowed call of a tool that is held back (an upstream tool whose
    /// definition changed since it was pinned): the token would allow it, the tool may not run.
    fn standing(call: &Prepared, grant: Grant) -> Result<Grant, Box<Denial>> {
        let Some(w) = call.withheld() else {
            return Ok(grant);
        };
        let task = Some(Arc::clone(&grant.task));
        Err(Box::new(if w.fault {
            Denial::fault(w.reason, w.message, call, task)
        } else {
            Denial::new(w.reason, w.message, call, task)
        }))
    }

    /// Counts an allowed call against the budget its token carries.
    fn spend(
        &self,
        token: &VerifiedToken,
        call: &Prepared,
        grant: Grant,
        now: SystemTime,
    ) -> Result<Grant, Box<Denial>> {
        let budget = token.budget();
        if budget.is_empty() {
            return Ok(grant);
        }
        match self
            .book
            .spend(&grant.task.id, &call.spec().name, budget, now)
        {
            Ok(Ok(())) => Ok(grant),
            Ok(Err(exhausted)) => {
                let mut d = Denial::new(
                    "budget_exhausted",
                    exhausted.to_string(),
                    call,
                    Some(Arc::clone(&grant.task)),
                );
                d.budget = Some(exhausted);
                Err(Box::new(d))
            }
            Err(e) => Err(Box::new(Denial::fault(
                "store_unavailable",
                format!(
                    "{}, so capgate cannot count the call against the task's budget and refuses it; this is capgate's fault, not the request's: retry later",
                    chain(&e)
                ),
                call,
                Some(Arc::clone(&grant.task)),
            ))),
        }
    }

    /// Puts a decision to the anomaly rules; when one fires, the task is revoked before the
    /// caller hears the answer, and the answer says so. A task whose revocation could not be
    /// written (the store was down) is refused here until it can be: a rule that fired never
    /// lapses because the store recovered.
    fn watch(
        &self,
        decision: Result<Grant, Box<Denial>>,
        call: &Prepared,
    ) -> Result<Grant, Box<Denial>> {
        let Some(watch) = &self.watch else {
            return decision;
        };
        let tool = call.spec().name.as_str();
        let resource = call.resource().as_str();
        let task = match &decision {
            Ok(g) => Arc::clone(&g.task),
            Err(d) => match d.task.as_ref().filter(|t| t.is_active(SystemTime::now())) {
                Some(t) => Arc::clone(t),
                None => return decision,
            },
        };
        if let Some(owed) = self.owed_revocation(&task.id) {
            return Err(self.revoke_owed(&task, &owed, call));
        }
        // Only the caller's own attempts count: not capgate's faults, not a Datalog run cut
        // off by a busy machine, not a budget reached (its answer says to wait or to ask for
        // more), not a token whose own later block expired or was revoked (a sub-agent's
        // narrower token running out is not the task misbehaving), and not a tool held back
        // because its upstream changed it (the upstream's doing, not the agent's).
        if let Err(d) = &decision
            && (d.fault
                || matches!(
                    d.reason.as_str(),
                    "budget_exhausted"
                        | "run_limit"
                        | "token_expired"
                        | "token_revoked"
                        | "definition_changed"
                ))
        {
            return decision;
        }
        let attempt = Attempt {
            task: &task.id,
            tool,
            resource,
            denied: decision.is_err(),
            in_intent: task.declares(tool, resource),
        };
        let Some(fired) = watch.observe(attempt, Instant::now()) else {
            return decision;
        };
        tracing::warn!(
            task = %task.id,
            agent = %task.agent,
            rule = %fired.revoked_by,
            "anomaly rule fired: {}",
            fired.detail
        );
        if let Err(e) = self
            .book
            .end_task(&task.id, EndReason::Revoked, Some(&fired.revoked_by))
        {
            tracing::error!(
                task = %task.id,
                rule = %fired.revoked_by,
                error = %chain(&e),
                "the task could not be revoked; its calls are refused until the revocation is written"
            );
            self.owed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.id.clone(), fired.clone());
            let mut d = Denial::fault(
                "store_unavailable",
                format!(
                    "anomaly rule `{}` fired ({}), and capgate could not yet record the task's revocation ({}); the task's calls are refused until it can: this is capgate's fault",
                    fired.revoked_by,
                    fired.detail,
                    chain(&e)
                ),
                call,
                Some(task),
            );
            d.task_revoked = Some(fired);
            return Err(Box::new(d));
        }
        let told = format!(
            "this attempt ended the task: anomaly rule `{}` fired ({}); the task's access is revoked, with every token derived from it; begin a new task to go on",
            fired.revoked_by, fired.detail
        );
        let mut denial = match decision {
            Err(mut d) => {
                d.message = format!("{}; {told}", d.message);
                d
            }
            Ok(g) => Box::new(Denial::new("task_revoked", told, call, Some(g.task))),
        };
        denial.task_revoked = Some(fired);
        Err(denial)
    }

    fn owed_revocation(&self, task: &str) -> Option<Fired> {
        let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        if owed.is_empty() {
            return None;
        }
        owed.get(task).cloned()
    }

    /// Tries again to write a revocation an anomaly rule owes; refuses the call either way.
    fn revoke_owed(&self, task: &Arc<TaskRecord>, fired: &Fired, call: &Prepared) -> Box<Denial> {
        match self
            .book
            .end_task(&task.id, EndReason::Revoked, Some(&fired.revoked_by))
        {
            Ok(_) => {
                self.owed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&task.id);
                let mut d = Denial::new(
                    "token_revoked",
                    format!(
                        "the task was revoked by {} ({})",
                        fired.revoked_by, fired.detail
                    ),
                    call,
                    Some(Arc::clone(task)),
                );
                d.task_revoked = Some(fired.clone());
                Box::new(d)
            }
            Err(e) => Box::new(Denial::fault(
                "store_unavailable",
                format!(
                    "anomaly rule `{}` revoked this task, and capgate cannot record it yet ({}); its calls are refused until it can: this is capgate's fault",
                    fired.revoked_by,
                    chain(&e)
                ),
                call,
                Some(Arc::clone(task)),
            )),
        }
    }

    /// The decision itself: revocation, expiry, the cache or Datalog.
    fn judge(
        &self,
        token: &Arc<VerifiedToken>,
        call: &Prepared,
        env: &CallEnv,
        now: SystemTime,
    ) -> Result<Grant, Box<Denial>> {
        let unavailable = |e: StoreFault| {
            Box::new(Denial::fault(
                "store_unavailable",
                format!(
                    "{}, so capgate cannot check revocations and refuses the call; this is capgate's fault, not the request's: retry later",
                    chain(&e)
                ),
                call,
                None,
            ))
        };
        self.book.sync().map_err(unavailable)?;
        // The task the token belongs to, live or not: a refused replay of an ended task's token
        // is still that task's (denied) action.
        let carried = self.book.task_of(token).map_err(unavailable)?;
        if let Err(e) = self
            .book
            .check_revocation(token.revocation_ids())
            .and_then(|()| token.check_expiry(now))
        {
            return Err(Box::new(Denial::new(e.kind(), chain(&e), call, carried)));
        }
        let task = carried.filter(|t| t.is_active(now));

        let key = self.cache_key(token, call, env, task.as_deref());
        if let (Some(key), Some(task)) = (&key, &task)
            && self.cache_hit(key, now)
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Grant {
                task: Arc::clone(task),
                token: Arc::clone(token),
                cached: true,
            });
        }

        self.stats.datalog_runs.fetch_add(1, Ordering::Relaxed);
        let spec = call.spec();
        let outcome = self.run_datalog(
            token,
            &spec.name,
            spec.operation,
            call.resource().as_str(),
            Some(call.args()),
            env,
            task.as_deref(),
            now,
        );
        match (outcome, task) {
            (Ok(()), Some(task)) => {
                if let Some(key) = key {
                    self.cache_insert(key, token, now);
                }
                Ok(Grant {
                    task,
                    token: Arc::clone(token),
                    cached: false,
                })
            }
            // A policy that allows without a task is refused all the same: capgate's promise is
            // that an agent's own login never reaches a tool.
            (Ok(()), None) => Err(Box::new(Denial::new(
                "task_required",
                "no live task: the agent token alone grants no tool; begin a task first".into(),
                call,
                None,
            ))),
            (Err(refusal), task) => {
                let mut d = Denial::new(&refusal.reason, refusal.message, call, task);
                d.failed_checks = refusal.failed_checks;
                Err(Box::new(d))
            }
        }
    }

    /// The tools this token can call, by the same authorization as a call.
    ///
    /// A tool is listed when some concrete resource exists for which a call would be allowed.
    /// The candidates are the strings the token itself names (its prefixes and check
    /// literals), so a listed tool is one the token really reaches; a tool that is callable only
    /// under argument constraints, or on resources the token does not spell out, stays hidden
    /// (closed, never open).
    pub fn visible_tools<'c>(
        &self,
        token: &Arc<VerifiedToken>,
        catalog: &'c Catalog,
        env: &CallEnv,
    ) -> Vec<&'c ToolSpec> {
        let now = SystemTime::now();
        if self.check_token(token).is_err() {
            return Vec::new();
        }
        let Ok(Some(task)) = self.book.task_of(token) else {
            return Vec::new();
        };
        if !task.is_active(now) {
            return Vec::new();
        }
        // A budget used up hides what it no longer admits (the per-minute rate recovers on its
        // own, so a tool it holds back stays listed). An unreadable count hides everything.
        let budget = token.budget();
        let used = if budget.is_empty() {
            None
        } else {
            match self.book.budget_use(&task.id) {
                Ok(u) => Some(u),
                Err(_) => return Vec::new(),
            }
        };
        let candidates = token.string_literals();
        // A token may spell thousands of strings (a set literal in a sub-agent's check), and
        // each candidate costs a Datalog run: the listing has a budget of runs and of time.
        // Past it, the remaining tools stay hidden (closed) and the operator is told once.
        let deadline = Instant::now() + LIST_TIME_BUDGET;
        let mut runs = 0usize;
        let mut exhausted = false;
        // Only tools both the agent's rights and the task's grant name can pass the task
        // block's check, so the budget is spent on them alone.
        let rights = &token.identity().rights;
        let visible = catalog
            .specs()
            .filter(|spec| task.grant.tools.contains_key(&spec.name) && rights.contains(&spec.name))
            // The pseudo-tools of resource and prompt sources are listed by resources/list and
            // prompts/list, never as tools.
            .filter(|spec| catalog.action_of(&spec.name) == Some(capgate_core::Action::Call))
            .filter(|spec| catalog.withheld(&spec.name).is_none())
            .filter(|spec| used.as_ref().is_none_or(|u| u.admits(budget, &spec.name)))
            .filter(|spec| {
                candidates.iter().any(|c| {
                    if runs >= LIST_RUN_BUDGET || Instant::now() > deadline {
                        exhausted = true;
                        return false;
                    }
                    runs += 1;
                    self.run_datalog(
                        token,
                        &spec.name,
                        spec.operation,
                        c,
                        None,
                        env,
                        Some(&task),
                        now,
                    )
                    .is_ok()
                })
            })
            .collect();
        self.stats
            .datalog_runs
            .fetch_add(runs as u64, Ordering::Relaxed);
        if exhausted {
            tracing::warn!(
                task = %task.id,
                candidates = candidates.len(),
                runs,
                "tools/list stopped at its budget ({LIST_RUN_BUDGET} Datalog runs, {LIST_TIME_BUDGET:?}); tools not yet shown stay hidden"
            );
        }
        visible
    }

    #[allow(clippy::too_many_arguments)]
    fn run_datalog(
        &self,
        token: &VerifiedToken,
        tool: &str,
        operation: Operation,
        resource: &str,
        args: Option<&Arguments>,
        env: &CallEnv,
        task: Option<&TaskRecord>,
        now: SystemTime,
    ) -> Result<(), crate::policy::Refusal> {
        let result = self
            .call_facts(tool, operation, resource, args, env, task, now)
            .and_then(|b| b.build(&token.biscuit))
            .and_then(|mut a| a.authorize());
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(self.policy.explain(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call_facts(
        &self,
        tool: &str,
        operation: Operation,
        resource: &str,
        args: Option<&Arguments>,
        env: &CallEnv,
        task: Option<&TaskRecord>,
        now: SystemTime,
    ) -> Result<AuthorizerBuilder, biscuit_auth::error::Token> {
        let mut b = self
            .template
            .clone()
            .fact(fact(vocab::TIME, &[date(&now)]))?
            .fact(fact(vocab::TOOL, &[string(tool)]))?
            .fact(fact(vocab::OPERATION, &[string(operation.as_str())]))?
            .fact(fact(vocab::RESOURCE, &[string(resource)]))?
            .fact(fact(vocab::TRANSPORT, &[string(env.transport.as_str())]))?
            .fact(fact(vocab::SESSION, &[string(&env.session)]))?;
        if let Some(jkt) = &env.holder {
            b = b.fact(fact(vocab::DPOP_JKT, &[string(jkt)]))?;
        }
        if let Some(task) = task {
            b = b.fact(fact(vocab::TASK, &[string(&task.id)]))?;
        }
        if let Some(args) = args {
            for (name, value) in args {
                if let Some(term) = scalar_term(value) {
                    b = b.fact(fact(vocab::ARG, &[string(name), term]))?;
                }
            }
        }
        Ok(b)
    }

    fn cache_key(
        &self,
        token: &VerifiedToken,
        call: &Prepared,
        env: &CallEnv,
        task: Option<&TaskRecord>,
    ) -> Option<String> {
        self.cache.as_ref()?;
        let task = task?;
        let spec = call.spec();
        // The token is named by every block's revocation id (its signature), not the last one
        // alone: biscuit's version-0 block signatures do not cover the previous signature, so
        // the last block could in principle be spliced onto other earlier blocks.
        // Every field is length-prefixed so that no choice of argument values can make two
        // different sets of facts spell the same key.
        let ids = token.revocation_ids();
        let mut key = String::with_capacity(160 * ids.len() + 256);
        for id in ids {
            push_field(&mut key, id);
        }
        for field in [
            task.id.as_str(),
            spec.name.as_str(),
            spec.operation.as_str(),
            call.resource().as_str(),
            env.transport.as_str(),
            &env.session,
            env.holder.as_deref().unwrap_or(""),
        ] {
            push_field(&mut key, field);
        }
        for (name, value) in call.args() {
            if let Some(s) = scalar_key(value) {
                push_field(&mut key, name);
                push_field(&mut key, &s);
            }
        }
        Some(key)
    }

    fn cache_hit(&self, key: &str, now: SystemTime) -> bool {
        let Some(cache) = &self.cache else {
            return false;
        };
        let epoch = self.book.epoch();
        match cache.get(key) {
            Some(e) => e.epoch == epoch && now < e.valid_until && Instant::now() < e.expires,
            None => false,
        }
    }

    fn cache_insert(&self, key: String, token: &VerifiedToken, now: SystemTime) {
        let Some(cache) = &self.cache else {
            return;
        };
        let epoch = self.book.epoch();
        let horizon = now + self.settings.cache_ttl;
        let valid_until = [token.next_time_bound(now), self.policy.next_date(now)]
            .into_iter()
            .flatten()
            .fold(horizon, SystemTime::min);
        cache.insert(
            key,
            CacheEntry {
                epoch,
                valid_until,
                expires: Instant::now() + self.settings.cache_ttl,
            },
        );
    }
}
fn push_field(key: &mut String, field: &str) {
    let _ = write!(key, "{}:{field};", field.len());
}

/// The Datalog term of a scalar argument; `None` for arrays, objects and long strings.
fn scalar_term(v: &Value) -> Option<Term> {
    match v {
        Value::String(s) if s.len() <= MAX_ARG_FACT_LEN => Some(string(s)),
        Value::Bool(b) => Some(Term::Bool(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(int(i)),
            // Biscuit has no floats: a non-integer number is compared as its JSON text.
            None => Some(string(&n.to_string())),
        },
        Value::Null => Some(Term::Null),
        _ => None,
    }
}

/// The cache-key spelling of the same scalar, with its type, so `1` and `"1"` differ.
fn scalar_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s.len() <= MAX_ARG_FACT_LEN => Some(format!("s:{s}")),
        Value::Bool(b) => Some(format!("b:{b}")),
        Value::Number(n) => Some(format!("n:{n}")),
        Value::Null => Some("null".into()),
        _ => None,
    }
}
