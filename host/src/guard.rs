//! The guard: the one door between a request and a tool.
//!
//! It turns a prepared [`ToolCall`] into an [`Authorized`] call, or into a [`Denial`] that says
//! which check failed. Dispatch accepts nothing but `Authorized<ToolCall>`, whose fields are
//! private to this module, so no code path can run a tool without passing here.
//!
//! Invariant: any error anywhere (store, Datalog, limits) is a deny. A cached allow is only used
//! when it is provably the answer Datalog would give now: the cache key holds every fact the
//! authorizer sees except `time`, the entry expires at the next date literal in the token (and
//! within `[guard] decision_cache_ttl`), and any revocation voids every entry at once.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use biscuit_auth::AuthorizerLimits;
use biscuit_auth::builder::{AuthorizerBuilder, Term, date, fact, int, string};
use serde_json::Value;

use crate::capability::{TokenError, VerifiedToken};
use crate::ledger::TaskLedger;
use crate::policy::{FailedCheckInfo, Policy};
use crate::registry::{Registry, ToolCall};
use crate::store::TaskRecord;
use crate::tool::{Arguments, Operation, ToolSpec};

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
}

/// A call the guard has allowed. Only this module can build one.
pub struct Authorized<T> {
    inner: T,
    grant: Grant,
}

impl<T> Authorized<T> {
    /// What the allow rests on.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The allowed value. Taking it out does not make a tool callable: only dispatch can call a
    /// tool, and dispatch only takes an `Authorized` call.
    pub fn into_parts(self) -> (T, Grant) {
        (self.inner, self.grant)
    }

    /// The allowed value.
    pub fn get(&self) -> &T {
        &self.inner
    }
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
    /// The live task the token carries, if any.
    #[serde(skip)]
    pub task: Option<Arc<TaskRecord>>,
}

impl Denial {
    fn new(reason: &str, message: String, call: &ToolCall, task: Option<Arc<TaskRecord>>) -> Self {
        Denial {
            reason: reason.to_owned(),
            message,
            failed_checks: Vec::new(),
            tool: call.spec().name.clone(),
            resource: call.resource().as_str().to_owned(),
            task,
        }
    }
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
}

/// The guard.
pub struct Guard {
    ledger: Arc<TaskLedger>,
    policy: Policy,
    /// The policy with limits and the static facts already loaded; cloned per authorization.
    template: AuthorizerBuilder,
    settings: GuardSettings,
    cache: Mutex<HashMap<String, CacheEntry>>,
    stats: GuardStats,
}

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
    pub fn new(ledger: Arc<TaskLedger>, policy: Policy, settings: GuardSettings) -> Self {
        let mut template = policy.builder().set_limits(settings.limits.clone());
        for (tenant, p) in settings.tenant_prefixes.iter() {
            // Strings are always valid Datalog terms; building this fact cannot fail.
            template = template
                .fact(fact("tenant_prefix", &[string(tenant), string(p)]))
                .unwrap_or_else(|_| unreachable!("tenant_prefix fact"));
        }
        Guard {
            ledger,
            policy,
            template,
            settings,
            cache: Mutex::new(HashMap::new()),
            stats: GuardStats::default(),
        }
    }

    /// The ledger of tasks and revocations.
    pub fn ledger(&self) -> &Arc<TaskLedger> {
        &self.ledger
    }

    /// Counters.
    pub fn stats(&self) -> &GuardStats {
        &self.stats
    }

    /// Checks what does not depend on the call: revocation and expiry. The HTTP layer uses
    /// this to answer 401 before any MCP processing.
    pub fn check_token(&self, token: &VerifiedToken) -> Result<(), TokenError> {
        self.ledger
            .sync()
            .map_err(|e| TokenError::Malformed(format!("cannot check revocations: {e}")))?;
        self.ledger.check_revocation(token)?;
        token.check_expiry(SystemTime::now())
    }

    /// Decides one call. On refusal the call is handed back with the denial, so the caller can
    /// describe it; it cannot be run.
    pub fn authorize(
        &self,
        token: &Arc<VerifiedToken>,
        call: ToolCall,
        env: &CallEnv,
    ) -> Result<Authorized<ToolCall>, Box<Denial>> {
        let now = SystemTime::now();
        if let Err(e) = self.ledger.sync() {
            return Err(Box::new(Denial::new(
                "guard_error",
                format!("cannot read revocations, so the call is refused: {e}"),
                &call,
                None,
            )));
        }
        // The task the token belongs to, live or not: a refused replay of an ended task's token
        // is still that task's (denied) action.
        let carried = match self.ledger.task_of(token) {
            Ok(t) => t,
            Err(e) => {
                return Err(Box::new(Denial::new(
                    "guard_error",
                    format!("cannot read the task store, so the call is refused: {e}"),
                    &call,
                    None,
                )));
            }
        };
        if let Err(e) = self.ledger.check_revocation(token) {
            return Err(Box::new(Denial::new(
                e.kind(),
                e.to_string(),
                &call,
                carried,
            )));
        }
        if let Err(e) = token.check_expiry(now) {
            return Err(Box::new(Denial::new(
                e.kind(),
                e.to_string(),
                &call,
                carried,
            )));
        }
        let task = carried.filter(|t| t.is_active(now));

        let key = self.cache_key(token, &call, env, task.as_deref());
        if let (Some(key), Some(task)) = (&key, &task)
            && self.cache_hit(key, now)
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Authorized {
                inner: call,
                grant: Grant {
                    task: Arc::clone(task),
                    token: Arc::clone(token),
                    cached: true,
                },
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
                Ok(Authorized {
                    inner: call,
                    grant: Grant {
                        task,
                        token: Arc::clone(token),
                        cached: false,
                    },
                })
            }
            // A policy that allows without a task is refused all the same: capgate's promise is
            // that an agent's own login never reaches a tool.
            (Ok(()), None) => Err(Box::new(Denial::new(
                "task_required",
                "no live task: the agent token alone grants no tool; begin a task first".into(),
                &call,
                None,
            ))),
            (Err(refusal), task) => {
                let mut d = Denial::new(&refusal.reason, refusal.message, &call, task);
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
    pub fn visible_tools<'r>(
        &self,
        token: &Arc<VerifiedToken>,
        registry: &'r Registry,
        env: &CallEnv,
    ) -> Vec<&'r ToolSpec> {
        let now = SystemTime::now();
        if self.check_token(token).is_err() {
            return Vec::new();
        }
        let Ok(Some(task)) = self.ledger.active_task(token, now) else {
            return Vec::new();
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
        let visible = registry
            .specs()
            .filter(|spec| task.grant.tools.contains_key(&spec.name) && rights.contains(&spec.name))
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
            .fact(fact("time", &[date(&now)]))?
            .fact(fact("tool", &[string(tool)]))?
            .fact(fact("operation", &[string(operation.as_str())]))?
            .fact(fact("resource", &[string(resource)]))?
            .fact(fact("transport", &[string(env.transport.as_str())]))?
            .fact(fact("session", &[string(&env.session)]))?;
        if let Some(task) = task {
            b = b.fact(fact("task", &[string(&task.id)]))?;
        }
        if let Some(args) = args {
            for (name, value) in args {
                if let Some(term) = scalar_term(value) {
                    b = b.fact(fact("arg", &[string(name), term]))?;
                }
            }
        }
        Ok(b)
    }

    fn cache_key(
        &self,
        token: &VerifiedToken,
        call: &ToolCall,
        env: &CallEnv,
        task: Option<&TaskRecord>,
    ) -> Option<String> {
        if self.settings.cache_entries == 0 {
            return None;
        }
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
        let epoch = self.ledger.epoch();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(key) {
            Some(e) => e.epoch == epoch && now < e.valid_until && Instant::now() < e.expires,
            None => false,
        }
    }

    fn cache_insert(&self, key: String, token: &VerifiedToken, now: SystemTime) {
        let epoch = self.ledger.epoch();
        let horizon = now + self.settings.cache_ttl;
        let valid_until = [token.next_time_bound(now), self.policy.next_date(now)]
            .into_iter()
            .flatten()
            .fold(horizon, SystemTime::min);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.settings.cache_entries {
            cache.clear();
        }
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
