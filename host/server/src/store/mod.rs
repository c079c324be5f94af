//! The task store: task records, revocations and per-task usage, behind a trait.
//!
//! The default is one SQLite file under the state directory ([`SqliteStore`]; WAL mode, so the
//! CLI and a running server can share it); `[store] url` names a PostgreSQL database instead
//! ([`PostgresStore`]), shared by every replica and the CLI. Invariant: ending a task and revoking its block
//! happen in one transaction, so there is never an ended task whose token still works, nor a
//! revoked block whose task still looks active; and a task is ended at most once, so exactly
//! one process reports its end.

/// The columns of a task record, in the order both stores read them.
macro_rules! task_columns {
    () => {
        "id, agent, tenant, revocation_id, intent, grant_json, created_at, expires_at, ended_at, \
         end_reason, trace_id, span_id, revoked_by"
    };
}

mod postgres;
mod sqlite;

use std::sync::Arc;
use std::time::SystemTime;

use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};

use crate::config::Config;
use crate::error::Error;

pub use postgres::{PostgresStore, PostgresTarget};
pub use sqlite::SqliteStore;
pub(crate) use sqlite::revocation_reason;

/// The store the configuration names, opened (and migrated to this capgate's schema).
pub fn open(config: &Config) -> Result<Arc<dyn TaskStore>, Error> {
    Ok(match &config.store.url {
        Some(url) => Arc::new(PostgresStore::open(target(url)?, &config.store)?),
        None => Arc::new(SqliteStore::open(&config.store_file())?),
    })
}

/// Opens the configured store, which applies the migrations this capgate knows (what
/// `capgate store migrate` runs ahead of a rollout); says where the schema now is.
pub fn migrate(config: &Config) -> Result<String, Error> {
    Ok(match &config.store.url {
        Some(url) => {
            let store = PostgresStore::open(target(url)?, &config.store)?;
            format!(
                "{} is at schema version {}",
                store.shown(),
                store.schema_version()
            )
        }
        None => {
            SqliteStore::open(&config.store_file())?;
            format!(
                "{} is at schema version {}",
                config.store_file().display(),
                sqlite::SCHEMA_VERSION
            )
        }
    })
}

/// The store the configuration names, as messages name it (never with a password).
pub fn shown(config: &Config) -> String {
    match config.store.url.as_deref().map(PostgresTarget::parse) {
        Some(Ok(t)) => t.shown().to_owned(),
        Some(Err(_)) => "the [store] url".to_owned(),
        None => config.store_file().display().to_string(),
    }
}

/// Times are stored as Unix milliseconds: a task span's start must match the real issuance, not
/// the second it fell in.
fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_millis(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)
}

fn target(url: &str) -> Result<PostgresTarget, Error> {
    PostgresTarget::parse(url).map_err(|message| Error::Config {
        file: "the configuration".into(),
        key: "store.url".into(),
        message,
    })
}

/// A revoked block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Revocation id, hex.
    pub id: String,
    /// Why.
    pub reason: String,
    /// The task whose block it is, if any.
    pub task_id: Option<String>,
}

/// Calls made under a task, per tool.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ToolUsage {
    /// The tool.
    pub tool: String,
    /// Calls put to the guard.
    pub calls: u64,
    /// Calls the guard allowed.
    pub allowed: u64,
    /// Calls the guard denied.
    pub denied: u64,
    /// Calls outside what the task declared (tool or resource).
    pub out_of_intent: u64,
}

/// Calls to add to a task's usage for one tool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageDelta {
    /// The task.
    pub task_id: String,
    /// The tool.
    pub tool: String,
    /// Calls put to the guard.
    pub calls: u64,
    /// Of which allowed.
    pub allowed: u64,
    /// Of which denied.
    pub denied: u64,
    /// Of which outside the declared intent.
    pub out_of_intent: u64,
}

impl UsageDelta {
    /// No calls yet.
    pub fn new(task_id: &str, tool: &str) -> Self {
        UsageDelta {
            task_id: task_id.to_owned(),
            tool: tool.to_owned(),
            ..Default::default()
        }
    }

    /// Counts one call.
    pub fn add_call(&mut self, allowed: bool, out_of_intent: bool) {
        self.calls += 1;
        if allowed {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
        if out_of_intent {
            self.out_of_intent += 1;
        }
    }
}

/// An upstream tool's pinned definition and the one last seen (DESIGN, "Upstream MCP servers":
/// pinned at first sight, a changed one held back until an operator pins it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PinRecord {
    /// The upstream's name.
    pub upstream: String,
    /// The tool, as the upstream names it.
    pub tool: String,
    /// Digest of the accepted definition.
    pub pinned_digest: String,
    /// The accepted definition (canonical JSON).
    pub pinned_definition: String,
    /// When it was accepted, Unix milliseconds.
    pub pinned_at: i64,
    /// Digest of the definition a capgate saw most recently.
    pub seen_digest: String,
    /// That definition (canonical JSON).
    pub seen_definition: String,
    /// When it was seen, Unix milliseconds.
    pub seen_at: i64,
}

impl PinRecord {
    /// Whether what was seen last is what was accepted.
    pub fn matches(&self) -> bool {
        self.pinned_digest == self.seen_digest
    }
}

/// Where tasks and revocations live. The SQLite store is the default; a shared database can
/// replace it for several replicas.
pub trait TaskStore: Send + Sync {
    /// Stores a newly issued task.
    fn insert_task(&self, task: &TaskRecord) -> Result<(), Error>;
    /// A task by id.
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error>;
    /// The task whose block has this revocation id.
    fn task_by_revocation_id(&self, revocation_id: &str) -> Result<Option<TaskRecord>, Error>;
    /// Recent tasks, newest first.
    fn tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, Error>;
    /// Tasks not ended whose expiry has passed.
    fn expired_unended(&self, now: SystemTime) -> Result<Vec<TaskRecord>, Error>;
    /// Ends a task and revokes its block, atomically. Returns the ended record when this call
    /// ended it, `None` when it was already ended (or does not exist).
    /// `revoked_by` names the rule that revoked it, when one did.
    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
        at: SystemTime,
    ) -> Result<Option<TaskRecord>, Error>;
    /// Revokes a block by revocation id (e.g. an agent token's authority block); `false` when
    /// it already was (nothing changed).
    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, Error>;
    /// Every revocation.
    fn revocations(&self) -> Result<Vec<Revocation>, Error>;
    /// Adds calls to tasks' usage.
    fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), Error>;
    /// A task's usage, per tool.
    fn usage(&self, task_id: &str) -> Result<Vec<ToolUsage>, Error>;
    /// Counts one call of `tool` against `task`'s budget unless one of its limits is reached
    /// (then nothing changes), in one transaction, so that processes sharing the store cannot
    /// together go over a limit.
    fn spend_budget(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        at: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, Error>;
    /// What has been counted against a task's budget.
    fn budget_use(&self, task: &str) -> Result<BudgetUse, Error>;
    /// A number that changes whenever any process writes a revocation (ending a task writes
    /// one), so that cached revocations and tasks can be refreshed cheaply and only when needed.
    fn change_counter(&self) -> Result<u64, Error>;
    /// Records the definition an upstream tool has now, pinning it when the tool has no pin
    /// yet (first sight), in one transaction; returns the record as stored.
    fn observe_definition(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        definition: &str,
        at: SystemTime,
    ) -> Result<PinRecord, Error>;
    /// The pins of one upstream, or of all, by upstream and tool.
    fn pins(&self, upstream: Option<&str>) -> Result<Vec<PinRecord>, Error>;
    /// Accepts what was seen last for an upstream's tools (only `tool`, when given) as their
    /// pins; returns the records whose pin changed.
    fn pin_seen(
        &self,
        upstream: &str,
        tool: Option<&str>,
        at: SystemTime,
    ) -> Result<Vec<PinRecord>, Error>;
}
