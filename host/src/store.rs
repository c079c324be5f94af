//! The task store: task records, revocations and per-task usage, behind a trait.
//!
//! The default is one SQLite file under the state directory (WAL mode, so the CLI and a running
//! server can share it). Invariant: ending a task and revoking its block happen in one
//! transaction, so there is never an ended task whose token still works, nor a revoked block
//! whose task still looks active; and a task is ended at most once, so exactly one process
//! reports its end.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OptionalExtension, params};

use crate::capability::TaskGrant;
use crate::error::Error;
use crate::issuance::Intent;

/// Why a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// Someone ended it (HTTP `DELETE`, `capgate task end`, in-band `task_end`).
    Completed,
    /// Its time ran out.
    Expired,
    /// It was revoked without being completed (for instance its agent token was revoked).
    Revoked,
}

impl EndReason {
    /// `completed`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "completed" => Some(EndReason::Completed),
            "expired" => Some(EndReason::Expired),
            "revoked" => Some(EndReason::Revoked),
            _ => None,
        }
    }
}

/// One task, as stored. The task token itself is never stored: it is a bearer secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// The agent it was issued to.
    pub agent: String,
    /// The agent's tenant.
    pub tenant: String,
    /// Revocation id (hex) of the task block: the task's identity inside tokens.
    pub revocation_id: String,
    /// What was asked for.
    pub intent: Intent,
    /// What was granted.
    pub grant: TaskGrant,
    /// Issuance time.
    #[serde(serialize_with = "ser_time")]
    pub created_at: SystemTime,
    /// When access ends.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: SystemTime,
    /// When it ended, if it has.
    #[serde(serialize_with = "ser_opt_time")]
    pub ended_at: Option<SystemTime>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// The task's trace id (32 hex), fixed at issuance.
    pub trace_id: String,
    /// The task's root span id (16 hex), fixed at issuance.
    pub span_id: String,
}

impl TaskRecord {
    /// Was this tool and resource inside what the task declared (its intent, as canonicalized
    /// into the grant)?
    pub fn declares(&self, tool: &str, resource: &str) -> bool {
        self.intent.tools.iter().any(|t| t == tool)
            && self
                .grant
                .tools
                .get(tool)
                .is_some_and(|prefixes| prefixes.iter().any(|p| resource.starts_with(p.as_str())))
    }

    /// Active = not ended and not past its expiry.
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.ended_at.is_none() && now <= self.expires_at
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::capability::rfc3339(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ser_time(t, s),
        None => s.serialize_none(),
    }
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
    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
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
    /// A number that changes whenever any process writes a revocation (ending a task writes
    /// one), so that cached revocations and tasks can be refreshed cheaply and only when needed.
    fn change_counter(&self) -> Result<u64, Error>;
}

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA_VERSION: i64 = 1;

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::Store {
                path: path.to_path_buf(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(|e| store_err(path, e))?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), Error> {
        let conn = self.lock();
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| store_err(&self.path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(|e| store_err(&self.path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| store_err(&self.path, e))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Store {
                path: self.path.clone(),
                message: format!(
                    "schema version {version} is newer than this capgate understands ({SCHEMA_VERSION}); upgrade capgate"
                ),
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS tasks (
                    id            TEXT PRIMARY KEY,
                    agent         TEXT NOT NULL,
                    tenant        TEXT NOT NULL,
                    revocation_id TEXT NOT NULL UNIQUE,
                    intent        TEXT NOT NULL,
                    grant_json    TEXT NOT NULL,
                    created_at    INTEGER NOT NULL,
                    expires_at    INTEGER NOT NULL,
                    ended_at      INTEGER,
                    end_reason    TEXT,
                    trace_id      TEXT NOT NULL,
                    span_id       TEXT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS tasks_open ON tasks (expires_at) WHERE ended_at IS NULL;
                 CREATE TABLE IF NOT EXISTS revocations (
                    revocation_id TEXT PRIMARY KEY,
                    reason        TEXT NOT NULL,
                    task_id       TEXT,
                    revoked_at    INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS usage (
                    task_id       TEXT NOT NULL,
                    tool          TEXT NOT NULL,
                    calls         INTEGER NOT NULL DEFAULT 0,
                    allowed       INTEGER NOT NULL DEFAULT 0,
                    denied        INTEGER NOT NULL DEFAULT 0,
                    out_of_intent INTEGER NOT NULL DEFAULT 0,
                    PRIMARY KEY (task_id, tool)
                 );
                 -- Bumped with every revocation, so that other processes notice exactly those
                 -- (and not, say, usage counters being written).
                 CREATE TABLE IF NOT EXISTS revision (
                    id            INTEGER PRIMARY KEY CHECK (id = 0),
                    value         INTEGER NOT NULL
                 );
                 INSERT OR IGNORE INTO revision (id, value) VALUES (0, 0);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(|e| store_err(&self.path, e))?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        store_err(&self.path, e)
    }
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
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
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

macro_rules! task_columns {
    () => {
        "id, agent, tenant, revocation_id, intent, grant_json, created_at, expires_at, ended_at, \
         end_reason, trace_id, span_id"
    };
}

const BUMP_REVISION: &str = "UPDATE revision SET value = value + 1 WHERE id = 0";

// Statements are constants so that the connection's statement cache (`prepare_cached`) parses
// each once: the task lookup and the insert sit on the issuance and first-call paths.
const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
);
const TASK_BY_ID: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE id = ?1");
const TASK_BY_REVOCATION_ID: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE revocation_id = ?1"
);
const RECENT_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks ORDER BY created_at DESC, id LIMIT ?1"
);
const EXPIRED_UNENDED: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE ended_at IS NULL AND expires_at < ?1"
);

fn row_to_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    let intent: String = row.get(4)?;
    let grant: String = row.get(5)?;
    let bad = |col: usize, e: serde_json::Error| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
    };
    let end_reason: Option<String> = row.get(9)?;
    Ok(TaskRecord {
        id: row.get(0)?,
        agent: row.get(1)?,
        tenant: row.get(2)?,
        revocation_id: row.get(3)?,
        intent: serde_json::from_str(&intent).map_err(|e| bad(4, e))?,
        grant: serde_json::from_str(&grant).map_err(|e| bad(5, e))?,
        created_at: from_millis(row.get(6)?),
        expires_at: from_millis(row.get(7)?),
        ended_at: row.get::<_, Option<i64>>(8)?.map(from_millis),
        end_reason: end_reason.as_deref().and_then(EndReason::parse),
        trace_id: row.get(10)?,
        span_id: row.get(11)?,
    })
}

impl TaskStore for SqliteStore {
    fn insert_task(&self, t: &TaskRecord) -> Result<(), Error> {
        let intent = serde_json::to_string(&t.intent).map_err(|e| self.err(e))?;
        let grant = serde_json::to_string(&t.grant).map_err(|e| self.err(e))?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(INSERT_TASK).map_err(|e| self.err(e))?;
        stmt.execute(params![
            t.id,
            t.agent,
            t.tenant,
            t.revocation_id,
            intent,
            grant,
            millis(t.created_at),
            millis(t.expires_at),
            t.ended_at.map(millis),
            t.end_reason.map(EndReason::as_str),
            t.trace_id,
            t.span_id
        ])
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(TASK_BY_ID).map_err(|e| self.err(e))?;
        stmt.query_row([id], row_to_task)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn task_by_revocation_id(&self, revocation_id: &str) -> Result<Option<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(TASK_BY_REVOCATION_ID)
            .map_err(|e| self.err(e))?;
        stmt.query_row([revocation_id], row_to_task)
            .optional()
            .map_err(|e| self.err(e))
    }

    fn tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(RECENT_TASKS).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], row_to_task)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn expired_unended(&self, now: SystemTime) -> Result<Vec<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(EXPIRED_UNENDED)
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([millis(now)], row_to_task)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        at: SystemTime,
    ) -> Result<Option<TaskRecord>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let changed = tx
            .execute(
                "UPDATE tasks SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL",
                params![id, millis(at), reason.as_str()],
            )
            .map_err(|e| self.err(e))?;
        if changed == 0 {
            return Ok(None);
        }
        let task = tx
            .query_row(TASK_BY_ID, [id], row_to_task)
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR IGNORE INTO revocations (revocation_id, reason, task_id, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                task.revocation_id,
                format!("task {}", reason.as_str()),
                task.id,
                millis(at)
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(BUMP_REVISION, []).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some(task))
    }

    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO revocations (revocation_id, reason, task_id, revoked_at) VALUES (?1, ?2, NULL, ?3)",
                params![revocation_id, reason, millis(SystemTime::now())],
            )
            .map_err(|e| self.err(e))?;
        if inserted > 0 {
            tx.execute(BUMP_REVISION, []).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(inserted > 0)
    }

    fn revocations(&self) -> Result<Vec<Revocation>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT revocation_id, reason, task_id FROM revocations")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Revocation {
                    id: r.get(0)?,
                    reason: r.get(1)?,
                    task_id: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), Error> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage (task_id, tool, calls, allowed, denied, out_of_intent)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (task_id, tool) DO UPDATE SET
                        calls = calls + excluded.calls,
                        allowed = allowed + excluded.allowed,
                        denied = denied + excluded.denied,
                        out_of_intent = out_of_intent + excluded.out_of_intent",
                )
                .map_err(|e| self.err(e))?;
            for d in deltas {
                stmt.execute(params![
                    d.task_id,
                    d.tool,
                    d.calls as i64,
                    d.allowed as i64,
                    d.denied as i64,
                    d.out_of_intent as i64
                ])
                .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn usage(&self, task_id: &str) -> Result<Vec<ToolUsage>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT tool, calls, allowed, denied, out_of_intent FROM usage WHERE task_id = ?1 ORDER BY tool",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([task_id], |r| {
                Ok(ToolUsage {
                    tool: r.get(0)?,
                    calls: r.get::<_, i64>(1)? as u64,
                    allowed: r.get::<_, i64>(2)? as u64,
                    denied: r.get::<_, i64>(3)? as u64,
                    out_of_intent: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn change_counter(&self) -> Result<u64, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT value FROM revision WHERE id = 0")
            .map_err(|e| self.err(e))?;
        stmt.query_row([], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(id: &str, rid: &str, expires_in: i64) -> TaskRecord {
        let now = SystemTime::now();
        let expires_at = if expires_in >= 0 {
            now + Duration::from_secs(expires_in as u64)
        } else {
            now - Duration::from_secs((-expires_in) as u64)
        };
        let mut tools = BTreeMap::new();
        tools.insert("fs_read".to_owned(), vec!["/ws/".to_owned()]);
        TaskRecord {
            id: id.into(),
            agent: "a".into(),
            tenant: "t".into(),
            revocation_id: rid.into(),
            intent: Intent {
                purpose: "p".into(),
                tools: vec!["fs_read".into()],
                ..Intent::default()
            },
            grant: TaskGrant {
                task_id: id.into(),
                tools,
                expires_at,
            },
            created_at: now,
            expires_at,
            ended_at: None,
            end_reason: None,
            trace_id: "0".repeat(32),
            span_id: "1".repeat(16),
        }
    }

    #[test]
    fn ending_revokes_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_task(&record("t1", "aa", 60)).unwrap();
            assert!(s.task("t1").unwrap().unwrap().is_active(SystemTime::now()));
            let ended = s
                .end_task("t1", EndReason::Completed, SystemTime::now())
                .unwrap();
            assert!(ended.is_some());
            assert!(
                s.end_task("t1", EndReason::Completed, SystemTime::now())
                    .unwrap()
                    .is_none(),
                "a task ends once"
            );
        }
        let s = SqliteStore::open(&path).unwrap();
        let revs = s.revocations().unwrap();
        assert_eq!(revs.len(), 1);
        assert_eq!(revs[0].id, "aa");
        assert_eq!(revs[0].task_id.as_deref(), Some("t1"));
        let t = s.task_by_revocation_id("aa").unwrap().unwrap();
        assert_eq!(t.end_reason, Some(EndReason::Completed));
    }

    #[test]
    fn expired_tasks_are_found_and_usage_adds_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        s.insert_task(&record("old", "01", -5)).unwrap();
        s.insert_task(&record("new", "02", 60)).unwrap();
        let expired = s.expired_unended(SystemTime::now()).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].id, "old");
        let mut d = UsageDelta::new("new", "fs_read");
        d.add_call(true, false);
        d.add_call(false, true);
        s.add_usage(&[d]).unwrap();
        let mut d = UsageDelta::new("new", "fs_read");
        d.add_call(true, false);
        s.add_usage(&[d]).unwrap();
        let u = s.usage("new").unwrap();
        assert_eq!(
            u,
            vec![ToolUsage {
                tool: "fs_read".into(),
                calls: 3,
                allowed: 2,
                denied: 1,
                out_of_intent: 1
            }]
        );
    }

    #[test]
    fn another_connection_moves_the_change_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let a = SqliteStore::open(&path).unwrap();
        let b = SqliteStore::open(&path).unwrap();
        let before = a.change_counter().unwrap();
        b.revoke("ff", "test").unwrap();
        assert_ne!(a.change_counter().unwrap(), before);
        assert_eq!(a.revocations().unwrap().len(), 1);
    }
}
