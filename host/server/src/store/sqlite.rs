//! The embedded SQLite store: one file under the state directory, shared by the server and the
//! CLI through WAL mode.
//!
//! Invariant: every write that must be atomic (ending a task with its revocation, a revocation
//! with the revision counter) is one transaction, and every error keeps the SQLite error as its
//! source.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};
use rusqlite::TransactionBehavior;
use rusqlite::{Connection, OptionalExtension, params};

use super::{PinRecord, Revocation, TaskStore, ToolUsage, UsageDelta, from_millis, millis};
use crate::error::Error;

/// The embedded SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

pub(super) const SCHEMA_VERSION: i64 = 3;

/// Schema version 1: tasks, revocations, usage and the revision counter.
const SCHEMA_V1: &str = "
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
";

/// Schema version 2 (besides `tasks.revoked_by`): budgets, counted before a call runs, exactly,
/// shared by every process on the file.
const SCHEMA_V2: &str = "
                 CREATE TABLE IF NOT EXISTS budget_spent (
                    task_id       TEXT NOT NULL,
                    tool          TEXT NOT NULL,
                    calls         INTEGER NOT NULL,
                    PRIMARY KEY (task_id, tool)
                 );
                 CREATE TABLE IF NOT EXISTS budget_recent (
                    task_id       TEXT NOT NULL,
                    at            INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS budget_recent_task ON budget_recent (task_id, at);
";

/// Schema version 3: upstream tools' pinned definitions, and the ones last seen.
const SCHEMA_V3: &str = "
                 CREATE TABLE IF NOT EXISTS upstream_pins (
                    upstream          TEXT NOT NULL,
                    tool              TEXT NOT NULL,
                    pinned_digest     TEXT NOT NULL,
                    pinned_definition TEXT NOT NULL,
                    pinned_at         INTEGER NOT NULL,
                    seen_digest       TEXT NOT NULL,
                    seen_definition   TEXT NOT NULL,
                    seen_at           INTEGER NOT NULL,
                    PRIMARY KEY (upstream, tool)
                 );
";

/// The columns of a pin record, in [`row_to_pin`]'s order.
const PIN_COLUMNS: &str = "upstream, tool, pinned_digest, pinned_definition, pinned_at, \
                           seen_digest, seen_definition, seen_at";

fn row_to_pin(r: &rusqlite::Row<'_>) -> rusqlite::Result<PinRecord> {
    Ok(PinRecord {
        upstream: r.get(0)?,
        tool: r.get(1)?,
        pinned_digest: r.get(2)?,
        pinned_definition: r.get(3)?,
        pinned_at: r.get(4)?,
        seen_digest: r.get(5)?,
        seen_definition: r.get(6)?,
        seen_at: r.get(7)?,
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let conn = Connection::open(path).map_err(|source| Error::Store {
            path: path.to_path_buf(),
            doing: "opening",
            source,
        })?;
        let store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<(), Error> {
        const DOING: &str = "migrating the schema";
        let mut conn = self.lock();
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(self.fail(DOING))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(self.fail(DOING))?;
        // One migration at a time, across processes: the version is read under the write lock,
        // so two processes opening a new file together cannot both apply (or re-apply) a step.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.fail(DOING))?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.fail(DOING))?;
        if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                store: self.path.display().to_string(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(self.fail(DOING))?;
        }
        if version < 2 {
            let has_revoked_by: bool = tx
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info('tasks') WHERE name = 'revoked_by'",
                    [],
                    |r| r.get(0),
                )
                .map_err(self.fail(DOING))?;
            if !has_revoked_by {
                tx.execute_batch("ALTER TABLE tasks ADD COLUMN revoked_by TEXT;")
                    .map_err(self.fail(DOING))?;
            }
            tx.execute_batch(SCHEMA_V2).map_err(self.fail(DOING))?;
        }
        if version < 3 {
            tx.execute_batch(SCHEMA_V3).map_err(self.fail(DOING))?;
        }
        if version < SCHEMA_VERSION {
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
                .map_err(self.fail(DOING))?;
        }
        tx.commit().map_err(self.fail(DOING))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every task a one-parameter query returns.
    fn task_rows(
        &self,
        sql: &str,
        param: i64,
        doing: &'static str,
    ) -> Result<Vec<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(self.fail(doing))?;
        let rows = stmt
            .query_map([param], row_to_task)
            .map_err(self.fail(doing))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.fail(doing))
    }

    /// The error of a failed SQLite call, with what capgate was doing.
    fn fail(&self, doing: &'static str) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Store {
            path: self.path.clone(),
            doing,
            source,
        }
    }
}

/// The reason a task's revocation is stored with, which a refused token's error repeats.
pub(crate) fn revocation_reason(reason: EndReason, revoked_by: Option<&str>) -> String {
    match revoked_by {
        Some(by) => format!("task {} by {by}", reason.as_str()),
        None => format!("task {}", reason.as_str()),
    }
}

const BUMP_REVISION: &str = "UPDATE revision SET value = value + 1 WHERE id = 0";

// Statements are constants so that the connection's statement cache (`prepare_cached`) parses
// each once: the task lookup and the insert sit on the issuance and first-call paths.
const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    task_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
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
        revoked_by: row.get(12)?,
    })
}

impl TaskStore for SqliteStore {
    fn insert_task(&self, t: &TaskRecord) -> Result<(), Error> {
        let record = |what| {
            move |source| Error::Record {
                path: self.path.clone(),
                what,
                source,
            }
        };
        let intent = serde_json::to_string(&t.intent).map_err(record("intent"))?;
        let grant = serde_json::to_string(&t.grant).map_err(record("grant"))?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(INSERT_TASK)
            .map_err(self.fail("storing a task"))?;
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
            t.span_id,
            t.revoked_by
        ])
        .map_err(self.fail("storing a task"))?;
        Ok(())
    }

    fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(TASK_BY_ID)
            .map_err(self.fail("reading a task"))?;
        stmt.query_row([id], row_to_task)
            .optional()
            .map_err(self.fail("reading a task"))
    }

    fn task_by_revocation_id(&self, revocation_id: &str) -> Result<Option<TaskRecord>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(TASK_BY_REVOCATION_ID)
            .map_err(self.fail("reading a task"))?;
        stmt.query_row([revocation_id], row_to_task)
            .optional()
            .map_err(self.fail("reading a task"))
    }

    fn tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        self.task_rows(RECENT_TASKS, limit as i64, "listing tasks")
    }

    fn expired_unended(&self, now: SystemTime) -> Result<Vec<TaskRecord>, Error> {
        self.task_rows(EXPIRED_UNENDED, millis(now), "finding expired tasks")
    }

    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
        at: SystemTime,
    ) -> Result<Option<TaskRecord>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.fail("ending a task"))?;
        let changed = tx
            .execute(
                "UPDATE tasks SET ended_at = ?2, end_reason = ?3, revoked_by = ?4 WHERE id = ?1 AND ended_at IS NULL",
                params![id, millis(at), reason.as_str(), revoked_by],
            )
            .map_err(self.fail("ending a task"))?;
        if changed == 0 {
            return Ok(None);
        }
        let task = tx
            .query_row(TASK_BY_ID, [id], row_to_task)
            .map_err(self.fail("ending a task"))?;
        tx.execute(
            "INSERT OR IGNORE INTO revocations (revocation_id, reason, task_id, revoked_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                task.revocation_id,
                revocation_reason(reason, revoked_by),
                task.id,
                millis(at)
            ],
        )
        .map_err(self.fail("ending a task"))?;
        tx.execute(BUMP_REVISION, [])
            .map_err(self.fail("ending a task"))?;
        tx.commit().map_err(self.fail("ending a task"))?;
        Ok(Some(task))
    }

    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.fail("revoking a block"))?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO revocations (revocation_id, reason, task_id, revoked_at) VALUES (?1, ?2, NULL, ?3)",
                params![revocation_id, reason, millis(SystemTime::now())],
            )
            .map_err(self.fail("revoking a block"))?;
        if inserted > 0 {
            tx.execute(BUMP_REVISION, [])
                .map_err(self.fail("revoking a block"))?;
        }
        tx.commit().map_err(self.fail("revoking a block"))?;
        Ok(inserted > 0)
    }

    fn revocations(&self) -> Result<Vec<Revocation>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT revocation_id, reason, task_id FROM revocations")
            .map_err(self.fail("reading revocations"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Revocation {
                    id: r.get(0)?,
                    reason: r.get(1)?,
                    task_id: r.get(2)?,
                })
            })
            .map_err(self.fail("reading revocations"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.fail("reading revocations"))
    }

    fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), Error> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.fail("writing usage"))?;
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
                .map_err(self.fail("writing usage"))?;
            for d in deltas {
                stmt.execute(params![
                    d.task_id,
                    d.tool,
                    d.calls as i64,
                    d.allowed as i64,
                    d.denied as i64,
                    d.out_of_intent as i64
                ])
                .map_err(self.fail("writing usage"))?;
            }
        }
        tx.commit().map_err(self.fail("writing usage"))
    }

    fn usage(&self, task_id: &str) -> Result<Vec<ToolUsage>, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT tool, calls, allowed, denied, out_of_intent FROM usage WHERE task_id = ?1 ORDER BY tool",
            )
            .map_err(self.fail("reading usage"))?;
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
            .map_err(self.fail("reading usage"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.fail("reading usage"))
    }

    fn spend_budget(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        at: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, Error> {
        const DOING: &str = "counting a call against a task's budget";
        let mut conn = self.lock();
        // IMMEDIATE: the write lock is taken before the counts are read, so another process
        // on the same file cannot read the same counts and spend the same last unit.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.fail(DOING))?;
        let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<u64, Error> {
            tx.prepare_cached(sql)
                .and_then(|mut s| s.query_row(p, |r| r.get::<_, Option<i64>>(0)))
                .map(|n| n.unwrap_or(0).max(0) as u64)
                .map_err(self.fail(DOING))
        };
        let exhausted =
            |limit: String, max: u64, used: u64| Ok(Err(BudgetExhausted { limit, max, used }));
        if let Some(max) = budget.calls {
            let used = count(
                "SELECT SUM(calls) FROM budget_spent WHERE task_id = ?1",
                &[&task],
            )?;
            if used >= max {
                return exhausted("calls".into(), max, used);
            }
        }
        if let Some(max) = budget.per_tool.get(tool).copied() {
            let used = count(
                "SELECT SUM(calls) FROM budget_spent WHERE task_id = ?1 AND tool = ?2",
                &[&task, &tool],
            )?;
            if used >= max {
                return exhausted(format!("per_tool.{tool}"), max, used);
            }
        }
        let now = millis(at);
        if let Some(max) = budget.per_minute {
            tx.execute(
                "DELETE FROM budget_recent WHERE task_id = ?1 AND at <= ?2",
                params![task, now - 60_000],
            )
            .map_err(self.fail(DOING))?;
            let used = count(
                "SELECT COUNT(*) FROM budget_recent WHERE task_id = ?1",
                &[&task],
            )?;
            if used >= max {
                return exhausted("per_minute".into(), max, used);
            }
            tx.execute(
                "INSERT INTO budget_recent (task_id, at) VALUES (?1, ?2)",
                params![task, now],
            )
            .map_err(self.fail(DOING))?;
        }
        tx.execute(
            "INSERT INTO budget_spent (task_id, tool, calls) VALUES (?1, ?2, 1)
             ON CONFLICT (task_id, tool) DO UPDATE SET calls = calls + 1",
            params![task, tool],
        )
        .map_err(self.fail(DOING))?;
        tx.commit().map_err(self.fail(DOING))?;
        Ok(Ok(()))
    }

    fn budget_use(&self, task: &str) -> Result<BudgetUse, Error> {
        const DOING: &str = "reading a task's budget";
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT tool, calls FROM budget_spent WHERE task_id = ?1")
            .map_err(self.fail(DOING))?;
        let rows = stmt
            .query_map([task], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.fail(DOING))?;
        let mut used = BudgetUse::default();
        for row in rows {
            let (tool, n) = row.map_err(self.fail(DOING))?;
            let n = n.max(0) as u64;
            used.calls += n;
            used.per_tool.insert(tool, n);
        }
        Ok(used)
    }

    fn change_counter(&self) -> Result<u64, Error> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT value FROM revision WHERE id = 0")
            .map_err(self.fail("reading the revision counter"))?;
        stmt.query_row([], |r| r.get::<_, i64>(0))
            .map(|v| v as u64)
            .map_err(self.fail("reading the revision counter"))
    }

    fn observe_definition(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        definition: &str,
        at: SystemTime,
    ) -> Result<PinRecord, Error> {
        const DOING: &str = "recording an upstream tool's definition";
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.fail(DOING))?;
        // First sight pins; later sights only update what was seen.
        tx.execute(
            "INSERT INTO upstream_pins (upstream, tool, pinned_digest, pinned_definition, pinned_at,
                                        seen_digest, seen_definition, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?3, ?4, ?5)
             ON CONFLICT (upstream, tool) DO UPDATE SET
                seen_digest = excluded.seen_digest,
                seen_definition = excluded.seen_definition,
                seen_at = excluded.seen_at",
            params![upstream, tool, digest, definition, millis(at)],
        )
        .map_err(self.fail(DOING))?;
        let record = tx
            .query_row(
                &format!(
                    "SELECT {PIN_COLUMNS} FROM upstream_pins WHERE upstream = ?1 AND tool = ?2"
                ),
                params![upstream, tool],
                row_to_pin,
            )
            .map_err(self.fail(DOING))?;
        tx.commit().map_err(self.fail(DOING))?;
        Ok(record)
    }

    fn pins(&self, upstream: Option<&str>) -> Result<Vec<PinRecord>, Error> {
        const DOING: &str = "reading upstream pins";
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {PIN_COLUMNS} FROM upstream_pins
                 WHERE ?1 IS NULL OR upstream = ?1 ORDER BY upstream, tool"
            ))
            .map_err(self.fail(DOING))?;
        stmt.query_map([upstream], row_to_pin)
            .and_then(|rows| rows.collect())
            .map_err(self.fail(DOING))
    }

    fn pin_seen(
        &self,
        upstream: &str,
        tool: Option<&str>,
        at: SystemTime,
    ) -> Result<Vec<PinRecord>, Error> {
        const DOING: &str = "pinning upstream definitions";
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.fail(DOING))?;
        let changed: Vec<PinRecord> = {
            let mut stmt = tx
                .prepare(&format!(
                    "UPDATE upstream_pins SET pinned_digest = seen_digest,
                        pinned_definition = seen_definition, pinned_at = ?3
                     WHERE upstream = ?1 AND (?2 IS NULL OR tool = ?2)
                       AND pinned_digest <> seen_digest
                     RETURNING {PIN_COLUMNS}"
                ))
                .map_err(self.fail(DOING))?;
            stmt.query_map(params![upstream, tool, millis(at)], row_to_pin)
                .and_then(|rows| rows.collect::<rusqlite::Result<_>>())
                .map_err(self.fail(DOING))?
        };
        tx.commit().map_err(self.fail(DOING))?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capgate_testkit::inproc::task_record as record;

    #[test]
    fn ending_revokes_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.insert_task(&record("t1", "aa", 60)).unwrap();
            assert!(s.task("t1").unwrap().unwrap().is_active(SystemTime::now()));
            let ended = s
                .end_task("t1", EndReason::Completed, None, SystemTime::now())
                .unwrap();
            assert!(ended.is_some());
            assert!(
                s.end_task("t1", EndReason::Completed, None, SystemTime::now())
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
