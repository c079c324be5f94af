//! Faults on demand: a task store that works (it is the real SQLite store underneath) until a
//! test switches it to failing, to show that capgate reports its own faults as its own.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};
use capgate_server::Error;
use capgate_server::store::{PinRecord, Revocation, SqliteStore, TaskStore, ToolUsage, UsageDelta};

/// The SQLite store, failing every operation while [`FailingStore::fail`] is on (or only the
/// reading of revocations, with [`FailingStore::fail_revocations`]), and counting task
/// look-ups by revocation id.
pub struct FailingStore {
    inner: SqliteStore,
    failing: AtomicBool,
    failing_revocations: AtomicBool,
    failing_ends: AtomicBool,
    lookups: AtomicU64,
}

impl FailingStore {
    /// Opens the real store at `path`; it works until told otherwise.
    pub fn open(path: &Path) -> Self {
        FailingStore {
            inner: SqliteStore::open(path).expect("open the store"),
            failing: AtomicBool::new(false),
            failing_revocations: AtomicBool::new(false),
            failing_ends: AtomicBool::new(false),
            lookups: AtomicU64::new(0),
        }
    }

    /// Switches failing on or off.
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }

    /// Switches failing on or off for reading revocations only (the change counter still
    /// answers, so a reader learns that something changed and then cannot read it).
    pub fn fail_revocations(&self, on: bool) {
        self.failing_revocations.store(on, Ordering::SeqCst);
    }

    /// Switches failing on or off for ending tasks only (everything else keeps working).
    pub fn fail_ends(&self, on: bool) {
        self.failing_ends.store(on, Ordering::SeqCst);
    }

    /// How many times a task was looked up by revocation id.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), Error> {
        self.check_if(&self.failing)
    }

    fn check_if(&self, switch: &AtomicBool) -> Result<(), Error> {
        if switch.load(Ordering::SeqCst) {
            return Err(Error::io(
                "reading the task store",
                std::io::Error::other("injected fault: the disk is gone"),
            ));
        }
        Ok(())
    }
}

impl TaskStore for FailingStore {
    fn insert_task(&self, task: &TaskRecord) -> Result<(), Error> {
        self.check()?;
        self.inner.insert_task(task)
    }
    fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        self.check()?;
        self.inner.task(id)
    }
    fn task_by_revocation_id(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        self.check()?;
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.task_by_revocation_id(id)
    }
    fn tasks(&self, limit: usize) -> Result<Vec<TaskRecord>, Error> {
        self.check()?;
        self.inner.tasks(limit)
    }
    fn expired_unended(&self, now: SystemTime) -> Result<Vec<TaskRecord>, Error> {
        self.check()?;
        self.inner.expired_unended(now)
    }
    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
        at: SystemTime,
    ) -> Result<Option<TaskRecord>, Error> {
        self.check()?;
        self.check_if(&self.failing_ends)?;
        self.inner.end_task(id, reason, revoked_by, at)
    }
    fn spend_budget(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        at: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, Error> {
        self.check()?;
        self.inner.spend_budget(task, tool, budget, at)
    }
    fn budget_use(&self, task: &str) -> Result<BudgetUse, Error> {
        self.check()?;
        self.inner.budget_use(task)
    }
    fn revoke(&self, id: &str, reason: &str) -> Result<bool, Error> {
        self.check()?;
        self.inner.revoke(id, reason)
    }
    fn revocations(&self) -> Result<Vec<Revocation>, Error> {
        self.check()?;
        self.check_if(&self.failing_revocations)?;
        self.inner.revocations()
    }
    fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), Error> {
        self.check()?;
        self.inner.add_usage(deltas)
    }
    fn usage(&self, task_id: &str) -> Result<Vec<ToolUsage>, Error> {
        self.check()?;
        self.inner.usage(task_id)
    }
    fn change_counter(&self) -> Result<u64, Error> {
        self.check()?;
        self.inner.change_counter()
    }
    fn observe_definition(
        &self,
        upstream: &str,
        tool: &str,
        digest: &str,
        definition: &str,
        at: SystemTime,
    ) -> Result<PinRecord, Error> {
        self.check()?;
        self.inner
            .observe_definition(upstream, tool, digest, definition, at)
    }
    fn pins(&self, upstream: Option<&str>) -> Result<Vec<PinRecord>, Error> {
        self.check()?;
        self.inner.pins(upstream)
    }
    fn pin_seen(
        &self,
        upstream: &str,
        tool: Option<&str>,
        at: SystemTime,
    ) -> Result<Vec<PinRecord>, Error> {
        self.check()?;
        self.inner.pin_seen(upstream, tool, at)
    }
}
