//! The shared PostgreSQL store: one database for every replica (and the CLI) that names it in
//! `[store] url`.
//!
//! The [`TaskStore`] trait is synchronous (the guard decides without awaiting), so this store
//! owns a small runtime of its own that talks to PostgreSQL; every operation is sent there and
//! waited for at most `[store] timeout`, so that a database that is down or paused answers the
//! caller with a fault naming the store, never a hang.
//!
//! Invariants:
//! - every write that must be atomic is one transaction (ending a task with its revocation, a
//!   revocation with the revision counter and its notification, a budget unit with its check,
//!   serialized per task across replicas by an advisory lock);
//! - "exactly once" comes from the database, not from this process: a task ends by the one
//!   `UPDATE … WHERE ended_at IS NULL` that finds it open, a block is revoked by the one
//!   `INSERT … ON CONFLICT DO NOTHING` that inserts it;
//! - a replica trusts what it knows about revocations only while it keeps hearing from the
//!   store: a watcher polls the revision counter every `[store] poll` (and listens for
//!   notifications in between), and once nothing was heard for `[store] max_staleness`,
//!   [`TaskStore::change_counter`] fails, which the guard turns into a refusal.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt as _;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

use super::{
    PinRecord, Revocation, TaskStore, ToolUsage, UsageDelta, from_millis, millis, revocation_reason,
};
use crate::config::StoreConfig;
use crate::error::Error;

/// The newest schema this capgate knows. A database at a newer version was migrated by a newer
/// capgate; this one refuses to start on it rather than misread it.
pub(super) const SCHEMA_VERSION: i32 = 2;

/// The channel revocations are announced on; the payload is the new revision.
const CHANNEL: &str = "capgate_revocation";

/// Held (for the length of one transaction) by whoever migrates, so that replicas starting
/// together apply each step once. Any constant works; this one spells "capgate!".
const MIGRATION_LOCK: i64 = 0x6361_7067_6174_6521;

const SCHEMA_V1: &str = "
    CREATE TABLE capgate_tasks (
        id            TEXT PRIMARY KEY,
        agent         TEXT NOT NULL,
        tenant        TEXT NOT NULL,
        revocation_id TEXT NOT NULL UNIQUE,
        intent        TEXT NOT NULL,
        grant_json    TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        expires_at    BIGINT NOT NULL,
        ended_at      BIGINT,
        end_reason    TEXT,
        trace_id      TEXT NOT NULL,
        span_id       TEXT NOT NULL,
        revoked_by    TEXT
    );
    CREATE INDEX capgate_tasks_open ON capgate_tasks (expires_at) WHERE ended_at IS NULL;
    CREATE INDEX capgate_tasks_recent ON capgate_tasks (created_at DESC, id);
    CREATE TABLE capgate_revocations (
        revocation_id TEXT PRIMARY KEY,
        reason        TEXT NOT NULL,
        task_id       TEXT,
        revoked_at    BIGINT NOT NULL
    );
    CREATE TABLE capgate_usage (
        task_id       TEXT NOT NULL,
        tool          TEXT NOT NULL,
        calls         BIGINT NOT NULL DEFAULT 0,
        allowed       BIGINT NOT NULL DEFAULT 0,
        denied        BIGINT NOT NULL DEFAULT 0,
        out_of_intent BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (task_id, tool)
    );
    -- Usage batches already added, by id, so that a batch whose outcome was unknown (the
    -- connection dropped around its commit) is retried without being counted twice.
    CREATE TABLE capgate_usage_batches (
        id            TEXT PRIMARY KEY,
        written_at    BIGINT NOT NULL
    );
    CREATE INDEX capgate_usage_batches_age ON capgate_usage_batches (written_at);
    CREATE TABLE capgate_budget_spent (
        task_id       TEXT NOT NULL,
        tool          TEXT NOT NULL,
        calls         BIGINT NOT NULL,
        PRIMARY KEY (task_id, tool)
    );
    CREATE TABLE capgate_budget_recent (
        task_id       TEXT NOT NULL,
        at            BIGINT NOT NULL
    );
    CREATE INDEX capgate_budget_recent_task ON capgate_budget_recent (task_id, at);
    -- Bumped (and announced) with every revocation, so that replicas notice exactly those.
    CREATE TABLE capgate_revision (
        id            INTEGER PRIMARY KEY CHECK (id = 0),
        value         BIGINT NOT NULL
    );
    INSERT INTO capgate_revision (id, value) VALUES (0, 0);
";

/// Schema version 2: upstream tools' pinned definitions, and the ones last seen.
const SCHEMA_V2: &str = "
    CREATE TABLE capgate_upstream_pins (
        upstream          TEXT NOT NULL,
        tool              TEXT NOT NULL,
        pinned_digest     TEXT NOT NULL,
        pinned_definition TEXT NOT NULL,
        pinned_at         BIGINT NOT NULL,
        seen_digest       TEXT NOT NULL,
        seen_definition   TEXT NOT NULL,
        seen_at           BIGINT NOT NULL,
        PRIMARY KEY (upstream, tool)
    );
";

/// The columns of a pin record, in [`row_to_pin`]'s order.
const PIN_COLUMNS: &str = "upstream, tool, pinned_digest, pinned_definition, pinned_at, \
                           seen_digest, seen_definition, seen_at";

fn row_to_pin(r: &Row) -> Result<PinRecord, tokio_postgres::Error> {
    Ok(PinRecord {
        upstream: r.try_get(0)?,
        tool: r.try_get(1)?,
        pinned_digest: r.try_get(2)?,
        pinned_definition: r.try_get(3)?,
        pinned_at: r.try_get(4)?,
        seen_digest: r.try_get(5)?,
        seen_definition: r.try_get(6)?,
        seen_at: r.try_get(7)?,
    })
}

/// Where the database is, as configured, and how to name it in messages (never with its
/// password).
#[derive(Debug, Clone)]
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    shown: String,
}

impl PostgresTarget {
    /// Reads `[store] url`: a `postgres://` or `postgresql://` URL, `${VAR}` replaced from the
    /// environment. The message of an error says what is wrong, never the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("expected a postgres:// URL, such as \"postgres://capgate@db.internal:5432/capgate\"".into());
        }
        let url = expand_env(url)?;
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        if config.get_hosts().is_empty() {
            return Err("the URL names no host".into());
        }
        if matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        ) {
            return Err("sslmode=require is not supported yet: capgate connects without TLS; reach the database over a private network or a local TLS proxy".into());
        }
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or("postgres")
        );
        Ok(PostgresTarget { config, shown })
    }

    /// The database as messages name it: `postgres://user@host:port/db`.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// `${VAR}` replaced by the environment variable `VAR`; an unset variable is an error (a URL
/// silently missing its password would fail later, less clearly).
fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("`${` without its closing `}`".into());
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        let value = std::env::var(name)
            .map_err(|_| format!("the environment variable {name} is not set"))?;
        // The value is a URL component (a password, typically): escape what would change the
        // URL's structure.
        out.extend(percent_encoding::utf8_percent_encode(
            &value,
            percent_encoding::NON_ALPHANUMERIC,
        ));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What went wrong talking to the database; the source of an [`Error::Shared`].
///
/// The pool's errors repeat the client's in their message, so a client error inside one is
/// unwrapped: the chain of sources says each cause once.
#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error(transparent)]
    Db(tokio_postgres::Error),
    #[error("no connection: {0}")]
    Pool(String),
    #[error("no answer within {} ([store] timeout)", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("a stored {0} does not parse")]
    Record(&'static str, #[source] serde_json::Error),
    #[error("the store's own runtime is gone")]
    Gone,
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for Fail {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Fail::Db(e),
            other => Fail::Pool(other.to_string()),
        }
    }
}

/// What this replica last heard from the store.
struct Heard {
    /// When the store was created; the origin of `at_ms`.
    origin: Instant,
    /// The newest revision seen (by a poll or a notification).
    revision: AtomicU64,
    /// Connections the watcher has made; part of the change counter.
    generation: AtomicU64,
    /// When the newest successful poll was *sent*, in ms since `origin`: every revocation
    /// committed before that instant is reflected in `revision`.
    at_ms: AtomicU64,
}

impl Heard {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn polled(&self, sent_ms: u64, revision: u64) {
        // As read, not the larger of the two: a counter that went down (a restored database)
        // must still read as a change, or the revocations made after it would go unseen.
        self.revision.store(revision, Ordering::Release);
        self.at_ms.fetch_max(sent_ms, Ordering::AcqRel);
    }

    /// This replica committed a revocation that brought the counter to `revision`.
    fn wrote(&self, revision: u64) {
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    fn silent(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.at_ms.load(Ordering::Acquire)),
        )
    }
}

/// The shared PostgreSQL store.
pub struct PostgresStore {
    target: Arc<PostgresTarget>,
    pool: Pool,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    timeout: Duration,
    max_staleness: Duration,
    heard: Arc<Heard>,
    schema: i32,
    /// Usage batches not yet confirmed by the store, with their ids.
    pending_usage: std::sync::Mutex<Vec<(String, Vec<UsageDelta>)>>,
}

impl PostgresStore {
    /// Connects, applies the migrations this capgate knows (refusing a schema newer than
    /// those), reads the revision counter and starts watching for revocations.
    pub fn open(target: PostgresTarget, settings: &StoreConfig) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("capgate-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the task store's runtime", e))?;
        let mut pg = target.config.clone();
        // The server gives up when capgate would: no statement or lock wait outlives the
        // caller's timeout, and a transaction whose client vanished between statements (its row
        // lock on the revision counter would stall every revocation) is ended within seconds,
        // not when TCP keepalive notices.
        let ms = |d: Duration| d.as_millis().max(1);
        let orphan = (settings.timeout * 5).max(Duration::from_secs(5));
        let mut options = pg
            .get_options()
            .map(|o| format!("{o} "))
            .unwrap_or_default();
        options.push_str(&format!(
            "-c statement_timeout={t} -c lock_timeout={t} -c idle_in_transaction_session_timeout={o}",
            t = ms(settings.timeout),
            o = ms(orphan),
        ));
        pg.connect_timeout(settings.timeout)
            .application_name("capgate")
            .options(options)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(orphan);
        let target = Arc::new(PostgresTarget {
            config: pg.clone(),
            shown: target.shown,
        });
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.timeout))
            .create_timeout(Some(settings.timeout))
            .recycle_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| Error::Shared {
                store: target.shown.clone(),
                doing: "setting up the connection pool",
                source: Box::new(e),
            })?;
        let heard = Arc::new(Heard {
            origin: Instant::now(),
            revision: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            at_ms: AtomicU64::new(0),
        });
        let mut store = PostgresStore {
            target,
            pool,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            // Migrations may take longer than one call should.
            timeout: settings.timeout.max(Duration::from_secs(10)),
            max_staleness: settings.max_staleness,
            heard,
            schema: 0,
            pending_usage: std::sync::Mutex::default(),
        };
        store.schema = store.migrate()?;
        store.timeout = settings.timeout;
        let sent = store.heard.now_ms();
        let revision = store.revision()?;
        store.heard.polled(sent, revision);
        store.handle.spawn(watch(
            Arc::clone(&store.target),
            Arc::clone(&store.heard),
            settings.poll,
            settings.timeout,
            settings.notify,
        ));
        Ok(store)
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> i32 {
        self.schema
    }

    /// The database as messages name it.
    pub fn shown(&self) -> &str {
        &self.target.shown
    }

    /// Runs `op` on the store's runtime and waits for it at most `[store] timeout`.
    fn run<T, F>(&self, doing: &'static str, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Fail>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let limit = self.timeout;
        let pool = self.pool.clone();
        self.handle.spawn(async move {
            let out = match tokio::time::timeout(limit, op).await {
                Ok(r) => r,
                Err(_) => {
                    // The connection that timed out went back to the pool with the operation
                    // dropped; it, and its idle siblings, may be dead sockets. Fresh ones are
                    // made on demand.
                    pool.retain(|_, _| false);
                    Err(Fail::TimedOut(limit))
                }
            };
            let _ = tx.send(out);
        });
        // The runtime's own timer bounds the wait; this one only covers a runtime that cannot
        // run at all.
        let wait = || match rx.recv_timeout(limit.saturating_add(Duration::from_millis(250))) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Fail::TimedOut(limit)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Fail::Gone),
        };
        // Called from an async worker of the server's runtime (the door, the ledger), the wait
        // hands that worker's other tasks to another thread first, so a slow store slows the
        // requests that need it, not every request the worker holds.
        let out = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        out.map_err(|f| Error::Shared {
            store: self.target.shown.clone(),
            doing,
            source: Box::new(f),
        })
    }

    fn migrate(&self) -> Result<i32, Error> {
        let pool = self.pool.clone();
        let found = self.run("migrating the schema", async move {
            let mut client = pool.get().await?;
            // Read first: a database already at this version needs no lock and no CREATE
            // right, so a least-privileged role (the CLI's, a replica's) can open it.
            match client
                .query_opt("SELECT version FROM capgate_schema WHERE id = 0", &[])
                .await
            {
                Ok(Some(row)) => {
                    let found: i32 = row.try_get(0)?;
                    if found >= SCHEMA_VERSION {
                        return Ok(found);
                    }
                }
                Ok(None) => {}
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
                Err(e) => return Err(e.into()),
            }
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL statement_timeout = '60s'; SET LOCAL lock_timeout = '60s'")
                .await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS capgate_schema (
                    id      INTEGER PRIMARY KEY CHECK (id = 0),
                    version INTEGER NOT NULL
                 )",
            )
            .await?;
            let found: i32 = tx
                .query_opt("SELECT version FROM capgate_schema WHERE id = 0", &[])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
                .unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Ok(found);
            }
            if found < 1 {
                tx.batch_execute(SCHEMA_V1).await?;
            }
            if found < 2 {
                tx.batch_execute(SCHEMA_V2).await?;
            }
            if found < SCHEMA_VERSION {
                tx.execute(
                    "INSERT INTO capgate_schema (id, version) VALUES (0, $1)
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version",
                    &[&SCHEMA_VERSION],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(SCHEMA_VERSION)
        })?;
        if found > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                store: self.target.shown.clone(),
                found: i64::from(found),
                known: i64::from(SCHEMA_VERSION),
            });
        }
        Ok(found)
    }

    fn revision(&self) -> Result<u64, Error> {
        let pool = self.pool.clone();
        self.run("reading the revision counter", async move {
            let client = pool.get().await?;
            let row = client
                .query_one("SELECT value FROM capgate_revision WHERE id = 0", &[])
                .await?;
            Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
        })
    }

    fn task_query(
        &self,
        doing: &'static str,
        sql: &'static str,
        param: Param,
    ) -> Result<Vec<TaskRecord>, Error> {
        let pool = self.pool.clone();
        self.run(doing, async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(sql).await?;
            let rows = match &param {
                Param::Text(s) => client.query(&stmt, &[s]).await?,
                Param::Int(n) => client.query(&stmt, &[n]).await?,
            };
            rows.iter().map(row_to_task).collect()
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which may not happen on an async thread;
        // the watcher and in-flight operations are simply abandoned.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

enum Param {
    Text(String),
    Int(i64),
}

/// Watches the store for revocations made anywhere: polls the revision every `poll` (which also
/// proves the store is there), and in between listens for notifications so that a revocation
/// is seen within milliseconds. A failed connection is replaced, with backoff.
async fn watch(
    target: Arc<PostgresTarget>,
    heard: Arc<Heard>,
    poll: Duration,
    timeout: Duration,
    notify: bool,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match tokio::time::timeout(timeout, target.config.connect(NoTls)).await {
            Ok(Ok((client, mut connection))) => {
                // A new connection may be to another server (a failover, a restore) whose
                // counter is not the one this replica compared against: the next look reloads.
                heard.generation.fetch_add(1, Ordering::AcqRel);
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
                let mut polled = false;
                let why =
                    watch_on(&client, &mut rx, &heard, poll, timeout, notify, &mut polled).await;
                driver.abort();
                // Backoff starts over only once a connection proved itself with a poll.
                if polled {
                    backoff = Duration::from_millis(50);
                }
                tracing::warn!(target: "capgate", store = %target.shown, "lost the store's revocation feed ({why}); reconnecting");
            }
            Ok(Err(e)) => {
                tracing::warn!(target: "capgate", store = %target.shown, error = %e, "cannot reach the task store; retrying");
            }
            Err(_) => {
                tracing::warn!(target: "capgate", store = %target.shown, "the task store does not answer; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Polls and listens on one connection until it fails; returns why.
async fn watch_on(
    client: &tokio_postgres::Client,
    notes: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    heard: &Heard,
    poll: Duration,
    timeout: Duration,
    notify: bool,
    polled: &mut bool,
) -> String {
    if notify {
        match tokio::time::timeout(timeout, client.batch_execute(&format!("LISTEN {CHANNEL}")))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "LISTEN timed out".into(),
        }
    }
    let stmt = match tokio::time::timeout(
        timeout,
        client.prepare("SELECT value FROM capgate_revision WHERE id = 0"),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => return "the poll timed out".into(),
    };
    loop {
        // Sent before it is answered: everything committed before this instant is counted.
        let sent = heard.now_ms();
        match tokio::time::timeout(timeout, client.query_one(&stmt, &[])).await {
            Ok(Ok(row)) => match row.try_get::<_, i64>(0) {
                Ok(v) => {
                    heard.polled(sent, v.max(0) as u64);
                    *polled = true;
                }
                Err(e) => return e.to_string(),
            },
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "the poll timed out".into(),
        }
        let next = tokio::time::sleep(poll);
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                note = notes.recv() => match note {
                    // A notification says the revision reached at least this value; it does not
                    // prove the store is still there, so only the next poll moves `at_ms`.
                    Some(p) => {
                        if let Ok(v) = p.parse::<u64>() {
                            heard.revision.fetch_max(v, Ordering::AcqRel);
                        }
                    }
                    None => return "the connection closed".into(),
                },
            }
        }
    }
}

const INSERT_TASK: &str = concat!(
    "INSERT INTO capgate_tasks (",
    task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);
const TASK_BY_ID: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM capgate_tasks WHERE id = $1"
);
const TASK_BY_REVOCATION_ID: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM capgate_tasks WHERE revocation_id = $1"
);
const RECENT_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM capgate_tasks ORDER BY created_at DESC, id LIMIT $1"
);
const EXPIRED_UNENDED: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM capgate_tasks WHERE ended_at IS NULL AND expires_at < $1"
);
const END_TASK: &str = concat!(
    "UPDATE capgate_tasks SET ended_at = $2, end_reason = $3, revoked_by = $4 \
     WHERE id = $1 AND ended_at IS NULL RETURNING ",
    task_columns!()
);
const ADD_USAGE: &str =
    "INSERT INTO capgate_usage (task_id, tool, calls, allowed, denied, out_of_intent)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (task_id, tool) DO UPDATE SET
        calls = capgate_usage.calls + excluded.calls,
        allowed = capgate_usage.allowed + excluded.allowed,
        denied = capgate_usage.denied + excluded.denied,
        out_of_intent = capgate_usage.out_of_intent + excluded.out_of_intent";

/// Usage batches kept for a store that does not answer: at one batch per 200 ms, ten minutes.
const MAX_PENDING_USAGE: usize = 3000;

/// How long the ids of written usage batches are kept.
const USAGE_BATCH_MEMORY_MS: i64 = 3_600_000;

/// Bumps the revision and announces it; the notification is delivered when (and only if) the
/// transaction commits. Returns the new revision.
const BUMP_REVISION: &str = "WITH r AS (UPDATE capgate_revision SET value = value + 1 WHERE id = 0 RETURNING value) \
     SELECT value, pg_notify('capgate_revocation', value::text)::text FROM r";

/// Bumps the revision inside `tx`; once `tx` commits, [`Heard::wrote`] with the result makes the
/// replica's own revocation a change at once, without waiting for its notification.
async fn bump_revision(tx: &tokio_postgres::Transaction<'_>) -> Result<u64, Fail> {
    let row = tx.query_one(BUMP_REVISION, &[]).await?;
    Ok(row.try_get::<_, i64>(0)?.max(0) as u64)
}

fn row_to_task(row: &Row) -> Result<TaskRecord, Fail> {
    let intent: String = row.try_get(4)?;
    let grant: String = row.try_get(5)?;
    let end_reason: Option<String> = row.try_get(9)?;
    Ok(TaskRecord {
        id: row.try_get(0)?,
        agent: row.try_get(1)?,
        tenant: row.try_get(2)?,
        revocation_id: row.try_get(3)?,
        intent: serde_json::from_str(&intent).map_err(|e| Fail::Record("intent", e))?,
        grant: serde_json::from_str(&grant).map_err(|e| Fail::Record("grant", e))?,
        created_at: from_millis(row.try_get(6)?),
        expires_at: from_millis(row.try_get(7)?),
        ended_at: row.try_get::<_, Option<i64>>(8)?.map(from_millis),
        end_reason: end_reason.as_deref().and_then(EndReason::parse),
        trace_id: row.try_get(10)?,
        span_id: row.try_get(11)?,
        revoked_by: row.try_get(12)?,
    })
}

impl TaskStore for PostgresStore {
    fn insert_task(&self, t: &TaskRecord) -> Result<(), Error> {
        let record = |what| {
            move |source| Error::Shared {
                store: self.target.shown.clone(),
                doing: what,
                source: Box::new(source),
            }
        };
        let intent = serde_json::to_string(&t.intent).map_err(record("writing a task's intent"))?;
        let grant = serde_json::to_string(&t.grant).map_err(record("writing a task's grant"))?;
        let t = t.clone();
        let pool = self.pool.clone();
        self.run("storing a task", async move {
            let client = pool.get().await?;
            let stmt = client.prepare_cached(INSERT_TASK).await?;
            let params: [&(dyn ToSql + Sync); 13] = [
                &t.id,
                &t.agent,
                &t.tenant,
                &t.revocation_id,
                &intent,
                &grant,
                &millis(t.created_at),
                &millis(t.expires_at),
                &t.ended_at.map(millis),
                &t.end_reason.map(EndReason::as_str),
                &t.trace_id,
                &t.span_id,
                &t.revoked_by,
            ];
            client.execute(&stmt, &params).await?;
            Ok(())
        })
    }

    fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        Ok(self
            .task_query("reading a task", TASK_BY_ID, Param::Text(id.to_owned()))?
            .into_iter()
            .next())
    }

    fn task_by_revocation_id(&self, revocation_id: &str) -> Result<Option<TaskRecord>, Error> {
        Ok(self
            .task_query(
                "reading a task",
                TASK_BY_REVOCATION_ID,
                Param::Text(revocation_id.to_owned()),
            )?
            .into_iter()
            .next())
    }

    fn tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        self.task_query(
            "listing tasks",
            RECENT_TASKS,
            Param::Int(limit.min(i64::MAX as usize) as i64),
        )
    }

    fn expired_unended(&self, now: SystemTime) -> Result<Vec<TaskRecord>, Error> {
        self.task_query(
            "finding expired tasks",
            EXPIRED_UNENDED,
            Param::Int(millis(now)),
        )
    }

    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
        at: SystemTime,
    ) -> Result<Option<TaskRecord>, Error> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        let revoked_by = revoked_by.map(str::to_owned);
        let heard = Arc::clone(&self.heard);
        self.run("ending a task", async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Row-locked: a replica ending the same task at the same instant waits here, then
            // finds it ended and changes nothing.
            let stmt = tx.prepare_cached(END_TASK).await?;
            let Some(row) = tx
                .query_opt(
                    &stmt,
                    &[&id, &millis(at), &reason.as_str(), &revoked_by.as_deref()],
                )
                .await?
            else {
                return Ok(None);
            };
            let task = row_to_task(&row)?;
            tx.execute(
                "INSERT INTO capgate_revocations (revocation_id, reason, task_id, revoked_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (revocation_id) DO NOTHING",
                &[
                    &task.revocation_id,
                    &revocation_reason(reason, revoked_by.as_deref()),
                    &task.id,
                    &millis(at),
                ],
            )
            .await?;
            let revision = bump_revision(&tx).await?;
            tx.commit().await?;
            heard.wrote(revision);
            Ok(Some(task))
        })
    }

    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, Error> {
        let pool = self.pool.clone();
        let id = revocation_id.to_owned();
        let reason = reason.to_owned();
        let heard = Arc::clone(&self.heard);
        self.run("revoking a block", async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // Two replicas inserting the same id: the second waits on the first's row and then
            // inserts nothing, so exactly one of them is told it revoked (spent) the block.
            let inserted = tx
                .execute(
                    "INSERT INTO capgate_revocations (revocation_id, reason, task_id, revoked_at)
                     VALUES ($1, $2, NULL, $3) ON CONFLICT (revocation_id) DO NOTHING",
                    &[&id, &reason, &millis(SystemTime::now())],
                )
                .await?;
            let revision = if inserted > 0 {
                Some(bump_revision(&tx).await?)
            } else {
                None
            };
            tx.commit().await?;
            if let Some(r) = revision {
                heard.wrote(r);
            }
            Ok(inserted > 0)
        })
    }

    fn revocations(&self) -> Result<Vec<Revocation>, Error> {
        let pool = self.pool.clone();
        self.run("reading revocations", async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT revocation_id, reason, task_id FROM capgate_revocations",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Revocation {
                        id: r.try_get(0)?,
                        reason: r.try_get(1)?,
                        task_id: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), Error> {
        // A batch that failed stays here, under its id, and is sent again (before the new one)
        // until the store confirms it: a usage write is never lost to a passing outage, and the
        // id makes sure one that did commit before its answer was lost is not added twice.
        let mut pending = self.pending_usage.lock().unwrap_or_else(|p| p.into_inner());
        if !deltas.is_empty() {
            pending.push((uuid::Uuid::new_v4().to_string(), deltas.to_vec()));
        }
        if pending.is_empty() {
            return Ok(());
        }
        if pending.len() > MAX_PENDING_USAGE {
            let dropped = pending.len() - MAX_PENDING_USAGE;
            pending.drain(..dropped);
            tracing::warn!(target: "capgate", store = %self.target.shown, batches = dropped, "the task store has been away too long: the oldest usage counts are dropped (the audit log keeps every call)");
        }
        let pool = self.pool.clone();
        let batches = pending.clone();
        self.run("writing usage", async move {
            let mut client = pool.get().await?;
            let now = millis(SystemTime::now());
            for (id, deltas) in &batches {
                let tx = client.transaction().await?;
                let fresh = tx
                    .execute(
                        "INSERT INTO capgate_usage_batches (id, written_at) VALUES ($1, $2)
                         ON CONFLICT (id) DO NOTHING",
                        &[id, &now],
                    )
                    .await?;
                if fresh > 0 {
                    let stmt = tx.prepare_cached(ADD_USAGE).await?;
                    for d in deltas {
                        tx.execute(
                            &stmt,
                            &[
                                &d.task_id,
                                &d.tool,
                                &(d.calls as i64),
                                &(d.allowed as i64),
                                &(d.denied as i64),
                                &(d.out_of_intent as i64),
                            ],
                        )
                        .await?;
                    }
                }
                tx.commit().await?;
            }
            // A batch is retried within seconds of its first try; an hour of ids is plenty.
            client
                .execute(
                    "DELETE FROM capgate_usage_batches WHERE written_at < $1",
                    &[&(now - USAGE_BATCH_MEMORY_MS)],
                )
                .await?;
            Ok(())
        })?;
        pending.clear();
        Ok(())
    }

    fn usage(&self, task_id: &str) -> Result<Vec<ToolUsage>, Error> {
        let pool = self.pool.clone();
        let task_id = task_id.to_owned();
        self.run("reading usage", async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT tool, calls, allowed, denied, out_of_intent FROM capgate_usage
                     WHERE task_id = $1 ORDER BY tool",
                    &[&task_id],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(ToolUsage {
                        tool: r.try_get(0)?,
                        calls: r.try_get::<_, i64>(1)?.max(0) as u64,
                        allowed: r.try_get::<_, i64>(2)?.max(0) as u64,
                        denied: r.try_get::<_, i64>(3)?.max(0) as u64,
                        out_of_intent: r.try_get::<_, i64>(4)?.max(0) as u64,
                    })
                })
                .collect()
        })
    }

    fn spend_budget(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        at: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, Error> {
        let pool = self.pool.clone();
        let task = task.to_owned();
        let tool = tool.to_owned();
        let budget = budget.clone();
        self.run("counting a call against a task's budget", async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            // One spender per task at a time, across replicas: the counts read below cannot
            // change before this transaction commits.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&task],
            )
            .await?;
            let exhausted = |limit: String, max: u64, used: u64| {
                Ok(Err(BudgetExhausted { limit, max, used }))
            };
            let count = |row: Row| row.try_get::<_, Option<i64>>(0).map(|n| n.unwrap_or(0).max(0) as u64);
            if let Some(max) = budget.calls {
                let row = tx
                    .query_one(
                        "SELECT SUM(calls)::BIGINT FROM capgate_budget_spent WHERE task_id = $1",
                        &[&task],
                    )
                    .await?;
                let used = count(row)?;
                if used >= max {
                    return exhausted("calls".into(), max, used);
                }
            }
            if let Some(max) = budget.per_tool.get(&tool).copied() {
                let row = tx
                    .query_one(
                        "SELECT SUM(calls)::BIGINT FROM capgate_budget_spent WHERE task_id = $1 AND tool = $2",
                        &[&task, &tool],
                    )
                    .await?;
                let used = count(row)?;
                if used >= max {
                    return exhausted(format!("per_tool.{tool}"), max, used);
                }
            }
            let now = millis(at);
            if let Some(max) = budget.per_minute {
                tx.execute(
                    "DELETE FROM capgate_budget_recent WHERE task_id = $1 AND at <= $2",
                    &[&task, &(now - 60_000)],
                )
                .await?;
                let row = tx
                    .query_one(
                        "SELECT COUNT(*)::BIGINT FROM capgate_budget_recent WHERE task_id = $1",
                        &[&task],
                    )
                    .await?;
                let used = count(row)?;
                if used >= max {
                    return exhausted("per_minute".into(), max, used);
                }
                tx.execute(
                    "INSERT INTO capgate_budget_recent (task_id, at) VALUES ($1, $2)",
                    &[&task, &now],
                )
                .await?;
            }
            tx.execute(
                "INSERT INTO capgate_budget_spent (task_id, tool, calls) VALUES ($1, $2, 1)
                 ON CONFLICT (task_id, tool) DO UPDATE SET calls = capgate_budget_spent.calls + 1",
                &[&task, &tool],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    fn budget_use(&self, task: &str) -> Result<BudgetUse, Error> {
        let pool = self.pool.clone();
        let task = task.to_owned();
        self.run("reading a task's budget", async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT tool, calls FROM capgate_budget_spent WHERE task_id = $1",
                    &[&task],
                )
                .await?;
            let mut used = BudgetUse::default();
            for r in rows {
                let tool: String = r.try_get(0)?;
                let n = r.try_get::<_, i64>(1)?.max(0) as u64;
                used.calls += n;
                used.per_tool.insert(tool, n);
            }
            Ok(used)
        })
    }

    fn change_counter(&self) -> Result<u64, Error> {
        let silent = self.heard.silent();
        if silent > self.max_staleness {
            return Err(Error::Stale {
                store: self.target.shown.clone(),
                silent: Duration::from_millis(silent.as_millis() as u64),
                max: self.max_staleness,
            });
        }
        let generation = self.heard.generation.load(Ordering::Acquire);
        Ok(self
            .heard
            .revision
            .load(Ordering::Acquire)
            .wrapping_add(generation << 48))
    }

    fn observe_definition(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        definition: &str,
        at: SystemTime,
    ) -> Result<PinRecord, Error> {
        let pool = self.pool.clone();
        let (upstream, tool) = (upstream.to_owned(), tool.to_owned());
        let (digest, definition) = (digest.to_owned(), definition.to_owned());
        self.run("recording an upstream tool's definition", async move {
            let client = pool.get().await?;
            // First sight pins; later sights only update what was seen. One statement, so two
            // replicas seeing a tool first together pin one definition.
            let row = client
                .query_one(
                    &format!(
                        "INSERT INTO capgate_upstream_pins (upstream, tool, pinned_digest,
                            pinned_definition, pinned_at, seen_digest, seen_definition, seen_at)
                         VALUES ($1, $2, $3, $4, $5, $3, $4, $5)
                         ON CONFLICT (upstream, tool) DO UPDATE SET
                            seen_digest = excluded.seen_digest,
                            seen_definition = excluded.seen_definition,
                            seen_at = excluded.seen_at
                         RETURNING {PIN_COLUMNS}"
                    ),
                    &[&upstream, &tool, &digest, &definition, &millis(at)],
                )
                .await?;
            Ok(row_to_pin(&row)?)
        })
    }

    fn pins(&self, upstream: Option<&str>) -> Result<Vec<PinRecord>, Error> {
        let pool = self.pool.clone();
        let upstream = upstream.map(str::to_owned);
        self.run("reading upstream pins", async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {PIN_COLUMNS} FROM capgate_upstream_pins
                         WHERE $1::TEXT IS NULL OR upstream = $1 ORDER BY upstream, tool"
                    ),
                    &[&upstream],
                )
                .await?;
            Ok(rows.iter().map(row_to_pin).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn pin_seen(
        &self,
        upstream: &str,
        tool: Option<&str>,
        at: SystemTime,
    ) -> Result<Vec<PinRecord>, Error> {
        let pool = self.pool.clone();
        let upstream = upstream.to_owned();
        let tool = tool.map(str::to_owned);
        self.run("pinning upstream definitions", async move {
            let client = pool.get().await?;
            let rows = client
                .query(
                    &format!(
                        "UPDATE capgate_upstream_pins SET pinned_digest = seen_digest,
                            pinned_definition = seen_definition, pinned_at = $3
                         WHERE upstream = $1 AND ($2::TEXT IS NULL OR tool = $2)
                           AND pinned_digest <> seen_digest
                         RETURNING {PIN_COLUMNS}"
                    ),
                    &[&upstream, &tool, &millis(at)],
                )
                .await?;
            Ok(rows.iter().map(row_to_pin).collect::<Result<Vec<_>, _>>()?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_shown_without_their_password() {
        let t = PostgresTarget::parse("postgres://cg:s3cret@db.internal:5433/tasks").unwrap();
        assert_eq!(t.shown(), "postgres://cg@db.internal:5433/tasks");
        assert!(PostgresTarget::parse("mysql://x@y/z").is_err());
        assert!(PostgresTarget::parse("postgres://x@y/z?sslmode=require").is_err());
    }

    #[test]
    fn variables_are_read_from_the_environment_and_escaped() {
        // PATH is always set and holds `/` and `:`, which must reach the password escaped.
        let path = std::env::var("PATH").unwrap();
        let t = PostgresTarget::parse("postgres://cg:${PATH}@h/db").unwrap();
        assert_eq!(t.config.get_password(), Some(path.as_bytes()));
        let e =
            PostgresTarget::parse("postgres://cg:${CAPGATE_TEST_PG_UNSET_VAR}@h/db").unwrap_err();
        assert!(e.contains("CAPGATE_TEST_PG_UNSET_VAR is not set"), "{e}");
    }
}
