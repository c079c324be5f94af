//! The ledger over a store that fails on demand: a revocation another process wrote is never
//! lost to a failed reload, and a block that is not a task's costs one store look-up, not one
//! per call.

use std::sync::Arc;
use std::time::Duration;

use capgate_authz::TokenError;
use capgate_server::ledger::TaskLedger;
use capgate_server::store::{SqliteStore, TaskStore};
use capgate_testkit::attenuate;
use capgate_testkit::faults::FailingStore;
use capgate_testkit::inproc::Scratch;

/// A revocation written by another process is not lost when the first reload after it fails:
/// the next look reloads again.
#[test]
fn a_failed_reload_is_retried_at_the_next_look() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite3");
    let store = Arc::new(FailingStore::open(&path));
    let ledger = TaskLedger::open(store.clone(), Duration::ZERO).unwrap();
    let other = SqliteStore::open(&path).unwrap();
    assert!(other.revoke("aa", "ended elsewhere").unwrap());
    store.fail_revocations(true);
    assert!(ledger.sync().is_err(), "the failure is reported");
    store.fail_revocations(false);
    ledger.sync().unwrap();
    let refused = ledger.check_revocation_ids(&["aa".to_owned()]);
    assert!(
        matches!(refused, Err(TokenError::Revoked { .. })),
        "{refused:?}"
    );
}

/// A block that is not a task's is looked up in the store once, then remembered.
#[test]
fn a_block_that_is_not_a_task_is_looked_up_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FailingStore::open(&dir.path().join("s.sqlite3")));
    let s = Arc::clone(&store);
    let scratch = Scratch::new("", move |b| b.store(s));
    let agent = scratch.agent("a", "t", &["x"]);
    let narrowed = attenuate(&agent, "check if time($t);");
    let token = scratch.host.verifier().verify(&narrowed).unwrap();
    let ledger = scratch.host.ledger();
    let before = store.lookups();
    for _ in 0..3 {
        assert!(ledger.task_of(&token).unwrap().is_none());
    }
    assert_eq!(store.lookups() - before, 1);
}
