//! The task book: the only I/O the guard and the issuer do, as a trait this crate declares and
//! capgate-server implements (its ledger, over SQLite or another store).
//!
//! Invariant: a fault of the book is a [`StoreFault`], never a token error: the guard turns it
//! into a denial that says capgate could not decide, and the transports into 503, never 401.

use std::sync::Arc;

use std::time::SystemTime;

use capgate_core::task::{Budget, BudgetExhausted, BudgetUse, EndReason, TaskRecord};

use crate::token::{TokenError, VerifiedToken};

/// The task store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the task store is unavailable")]
pub struct StoreFault {
    #[source]
    source: Arc<dyn std::error::Error + Send + Sync>,
}

impl StoreFault {
    /// A fault caused by `source`.
    pub fn new(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreFault {
            source: Arc::new(source),
        }
    }
}

/// Live tasks and revocations, as the guard and the issuer read and write them.
pub trait TaskBook: Send + Sync {
    /// Picks up changes other processes made (revocations, ended tasks). Cheap when nothing
    /// changed.
    fn sync(&self) -> Result<(), StoreFault>;

    /// Refuses when any of these blocks is revoked (from what `sync` last saw).
    fn check_revocation(&self, ids: &[String]) -> Result<(), TokenError>;

    /// Changes whenever a revocation is seen; decisions cached in an older epoch are void.
    fn epoch(&self) -> u64;

    /// The task whose block this token carries (the first such block), live or not.
    fn task_of(&self, token: &VerifiedToken) -> Result<Option<Arc<TaskRecord>>, StoreFault>;

    /// Records a newly issued task (before its token leaves capgate).
    fn insert(&self, task: TaskRecord) -> Result<(), StoreFault>;

    /// Ends a task and revokes its block; `None` when it had already ended. `revoked_by` names
    /// the rule that revoked it, when a rule did (`anomaly:<rule>`).
    fn end_task(
        &self,
        id: &str,
        reason: EndReason,
        revoked_by: Option<&str>,
    ) -> Result<Option<TaskRecord>, StoreFault>;

    /// Counts one call of `tool` against `task`'s `budget`, unless that would go over one of
    /// its limits (then nothing is counted). Atomic: two calls racing for the last unit of a
    /// budget cannot both get it.
    fn spend(
        &self,
        task: &str,
        tool: &str,
        budget: &Budget,
        now: SystemTime,
    ) -> Result<Result<(), BudgetExhausted>, StoreFault>;

    /// What has been counted against a task's budget.
    fn budget_use(&self, task: &str) -> Result<BudgetUse, StoreFault>;

    /// Revokes a block that is not a task's; `false` when it already was.
    fn revoke(&self, revocation_id: &str, reason: &str) -> Result<bool, StoreFault>;
}
