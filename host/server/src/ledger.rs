//! The ledger: which tasks are live and which blocks are revoked, as this process sees them.
//!
//! It is a cache over the [`TaskStore`] so that the guard answers "is this token revoked?" and
//! "which live task does it carry?" without a database round trip on every call.
//! Invariant: a revocation made through this process is visible to the very next call; one made
//! by another process (the CLI, another replica) is picked up at the next call after the store
//! reports a revocation (looked for at most every `[guard] store_poll`). Every revocation
//! bumps [`TaskLedger::epoch`], which invalidates every cached allow at once.
//!
//! The ledger is the [`TaskBook`] the guard and the issuer see: a store failure reaches them as
//! a [`StoreFault`], which they answer as capgate's own fault.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use capgate_authz::{StoreFault, TaskBook, TokenError, VerifiedToken};
use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};

use crate::error::Error;
use crate::store::{Revocation, TaskStore};

/// Revocation ids remembered as "not a task's block". Bounded and evicting: a flood of tokens
/// with junk blocks pushes out other junk, not the memory as a whole.
const MAX_REMEMBERED_MISSES: usize = 16 * 1024;

/// Told when a task ends, whoever ended it.
pub trait TaskObserver: Send + Sync {
    /// `task` has just ended (its block is revoked).
    fn task_ended(&self, task: &TaskRecord);
}

/// Live tasks and revocations.
pub struct TaskLedger {
    store: Arc<dyn TaskStore>,
    revoked: RwLock<HashMap<String, Revocation>>,
    tasks: RwLock<HashMap<String, Arc<TaskRecord>>>,
    not_tasks: quick_cache::sync::Cache<String, ()>,
    epoch: AtomicU64,
    counter: AtomicU64,
    reloading: Mutex<()>,
    poll: Duration,
    last_poll: Mutex<Instant>,
    observers: RwLock<Vec<Arc<dyn TaskObserver>>>,
}

impl TaskLedger {
    /// Loads every revocation from the store.
    pub fn open(store: Arc<dyn TaskStore>, poll: Duration) -> Result<Self, Error> {
        let counter = store.change_counter()?;
        let ledger = TaskLedger {
            store,
            revoked: RwLock::new(HashMap::new()),
            tasks: RwLock::new(HashMap::new()),
            not_tasks: quick_cache::sync::Cache::new(MAX_REMEMBERED_MISSES),
            epoch: AtomicU64::new(0),
            counter: AtomicU64::new(counter),
            reloading: Mutex::new(()),
            poll,
            last_poll: Mutex::new(Instant::now()),
            observers: RwLock::new(Vec::new()),
        };
        ledger.reload()?;
        Ok(ledger)
    }

    /// The store behind the ledger.
    pub fn store(&self) -> &Arc<dyn TaskStore> {
        &self.store
    }

    /// Adds an observer of task ends.
    pub fn observe(&self, observer: Arc<dyn TaskObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(observer);
    }

    /// Changes whenever a revocation is seen; cached decisions from an older epoch are void.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn reload(&self) -> Result<(), Error> {
        let all = self.store.revocations()?;
        let mut revoked = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        let grew = all.len() != revoked.len();
        *revoked = all.into_iter().map(|r| (r.id.clone(), r)).collect();
        drop(revoked);
        // Task records may have ended elsewhere; forget them so they are re-read.
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        if grew {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Picks up changes other processes made to the store. Cheap when nothing changed.
    pub fn sync(&self) -> Result<(), Error> {
        if !self.poll.is_zero() {
            let mut last = self.last_poll.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < self.poll {
                return Ok(());
            }
            *last = Instant::now();
        }
        let now = self.store.change_counter()?;
        if self.counter.load(Ordering::Acquire) == now {
            return Ok(());
        }
        // One reload at a time, and the counter moves only once it succeeded: a failed reload is
        // retried at the next look instead of being forgotten, and no caller is told "in sync"
        // while another is still reading the revocations.
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        if self.counter.load(Ordering::Acquire) == now {
            return Ok(());
        }
        self.reload()?;
        self.counter.store(now, Ordering::Release);
        Ok(())
    }

    /// Refuses a token any of whose blocks is revoked.
    pub fn check_revocation(&self, token: &VerifiedToken) -> Result<(), TokenError> {
        self.check_revocation_ids(token.revocation_ids())
    }

    /// Refuses when any of these blocks is revoked.
    pub fn check_revocation_ids(&self, ids: &[String]) -> Result<(), TokenError> {
        let revoked = self.revoked.read().unwrap_or_else(|p| p.into_inner());
        if revoked.is_empty() {
            return Ok(());
        }
        for (block, id) in ids.iter().enumerate() {
            if let Some(r) = revoked.get(id) {
                return Err(TokenError::Revoked {
                    block,
                    id: id.clone(),
                    reason: Some(r.reason.clone()),
                });
            }
        }
        Ok(())
    }

    /// The live task whose block this token carries, if any (the first such block).
    pub fn active_task(
        &self,
        token: &VerifiedToken,
        now: SystemTime,
    ) -> Result<Option<Arc<TaskRecord>>, Error> {
        Ok(self.task_of(token)?.filter(|t| t.is_active(now)))
    }

    /// Whether `token` may see and end `task`: it must speak for the task's agent and tenant,
    /// and either carry the task's own block (the task token, or one derived from it) or carry
    /// no task block at all (the agent token itself). A token of one task never reaches a
    /// sibling task of the same agent.
    pub fn speaks_for(&self, token: &VerifiedToken, task: &TaskRecord) -> Result<bool, Error> {
        let who = token.identity();
        if who.agent != task.agent || who.tenant != task.tenant {
            return Ok(false);
        }
        // A workload and an operator-minted agent (or two issuers' workloads) that share an
        // agent id never speak for each other's tasks.
        let workload = task
            .grant
            .workload
            .as_ref()
            .map(|w| (w.issuer.clone(), w.subject.clone()));
        if who.workload != workload {
            return Ok(false);
        }
        if token.revocation_ids().contains(&task.revocation_id) {
            return Ok(true);
        }
        Ok(self.task_of(token)?.is_none())
    }

    /// The task whose block this token carries (the first such block), live or not.
    pub fn task_of(&self, token: &VerifiedToken) -> Result<Option<Arc<TaskRecord>>, Error> {
        // The authority block is never a task block.
        for id in token.revocation_ids().iter().skip(1) {
            if let Some(task) = self.task_by_revocation_id(id)? {
                return Ok(Some(task));
            }
        }
        Ok(None)
    }

    fn task_by_revocation_id(&self, id: &str) -> Result<Option<Arc<TaskRecord>>, Error> {
        if let Some(t) = self.tasks.read().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(Some(Arc::clone(t)));
        }
        if self.not_tasks.get(id).is_some() {
            return Ok(None);
        }
        // Unknown here: ask the store (the task may have been issued by another process).
        // A miss is remembered: a revocation id is a block's signature, unknowable before the
        // block exists, and a task is stored before its token is handed out, so a block that
        // was not a task when presented never becomes one. Without this, a token of many
        // non-task blocks would cost a store lookup per block on every call.
        match self.store.task_by_revocation_id(id)? {
            Some(t) => {
                let t = Arc::new(t);
                self.tasks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.to_owned(), Arc::clone(&t));
                Ok(Some(t))
            }
            None => {
                self.not_tasks.insert(id.to_owned(), ());
                Ok(None)
            }
        }
    }

    /// Records a newly issued task.
    pub fn insert(&self, task: TaskRecord) -> Result<Arc<TaskRecord>, Error> {
        self.store.insert_task(&task)?;
        let task = Arc::new(task);
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.revocation_id.clone(), Arc::clone(&task));
        Ok(task)
    }

    /// A task by id, from the store.
    pub fn task(&self, id: &str) -> Result<Option<TaskRecord>, Error> {
        self.store.task(id)
    }

    /// Ends a task: marks it ended and revokes its block (and so every token derived from it),
    /// then tells observers. Returns `None` when it had already ended.
    pub fn end_task(&self, id: &str, reason: EndReason) -> Result<Option<TaskRecord>, Error> {
        self.end_task_by(id, reason, None)
    }

    /// [`TaskLedger::end_task`], naming the rule that revoked the task.
    pub fn end_task_by(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
    ) -> Result<Option<TaskRecord>, Error> {
        // Held while the store and the in-memory set change together, so that a concurrent
        // reload (which replaces the set with what it read) cannot drop this revocation.
        let reloading = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let Some(task) = self
            .store
            .end_task(id, reason, revoked_by, SystemTime::now())?
        else {
            return Ok(None);
        };
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                task.revocation_id.clone(),
                Revocation {
                    id: task.revocation_id.clone(),
                    reason: crate::store::revocation_reason(reason, revoked_by),
                    task_id: Some(task.id.clone()),
                },
            );
        self.tasks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(task.revocation_id.clone(), Arc::new(task.clone()));
        self.epoch.fetch_add(1, Ordering::AcqRel);
        drop(reloading);
        let observers = self
            .observers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for o in observers {
            o.task_ended(&task);
        }
        Ok(Some(task))
    }

    /// Revokes a block that is not a task's (for instance an agent token's authority block).
    /// Returns `false` when it already was revoked: used once, an approval is spent this way.
    pub fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, Error> {
        let _reloading = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = self.store.revoke(revocation_id, reason)?;
        self.revoked
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                revocation_id.to_owned(),
                Revocation {
                    id: revocation_id.to_owned(),
                    reason: reason.to_owned(),
                    task_id: None,
                },
            );
        self.epoch.fetch_add(1, Ordering::AcqRel);
        Ok(fresh)
    }

    /// Ends every task whose time has run out. Returns how many it ended.
    pub fn reap_expired(&self) -> Result<usize, Error> {
        let expired = self.store.expired_unended(SystemTime::now())?;
        let mut n = 0;
        for t in expired {
            if self.end_task(&t.id, EndReason::Expired)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

impl TaskBook for TaskLedger {
    fn sync(&self) -> Result<(), StoreFault> {
        TaskLedger::sync(self).map_err(StoreFault::new)
    }

    fn check_revocation(&self, ids: &[String]) -> Result<(), TokenError> {
        self.check_revocation_ids(ids)
    }

    fn epoch(&self) -> u64 {
        TaskLedger::epoch(self)
    }

    fn task_of(&self, token: &VerifiedToken) -> Result<Option<Arc<TaskRecord>>, StoreFault> {
        TaskLedger::task_of(self, token).map_err(StoreFault::new)
    }

    fn insert(&self, task: TaskRecord) -> Result<(), StoreFault> {
        TaskLedger::insert(self, task)
            .map(|_| ())
            .map_err(StoreFault::new)
    }

    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
    ) -> Result<Option<TaskRecord>, StoreFault> {
        TaskLedger::end_task_by(self, id, reason, revoked_by).map_err(StoreFault::new)
    }

    fn spend(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        now: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, StoreFault> {
        self.store
            .spend_budget(task, tool, budget, now)
            .map_err(StoreFault::new)
    }

    fn budget_use(&self, task: &str) -> Result<BudgetUse, StoreFault> {
        self.store.budget_use(task).map_err(StoreFault::new)
    }

    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, StoreFault> {
        TaskLedger::revoke(self, revocation_id, reason).map_err(StoreFault::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// Revoking twice reports that the second changed nothing (an approval is spent once).
    #[test]
    fn a_second_revocation_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap());
        let ledger = TaskLedger::open(store, Duration::ZERO).unwrap();
        assert!(ledger.revoke("cc", "spent").unwrap());
        assert!(!ledger.revoke("cc", "spent again").unwrap());
    }
}
