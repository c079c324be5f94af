//! One contract, two stores: every `TaskStore` behaviour the host relies on, run against the
//! SQLite file and against a real PostgreSQL started by the test. Then what only a shared store
//! must do: several processes (here, several store handles, each with its own pool and
//! watcher, as replicas have) racing to end a task, to spend the last of a budget, to revoke,
//! and a revocation made by one seen by the others.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use capgate_core::task::{Budget, EndReason};
use capgate_server::config::StoreConfig;
use capgate_server::error::Error;
use capgate_server::store::{PostgresStore, PostgresTarget, SqliteStore, TaskStore, UsageDelta};
use capgate_testkit::Postgres;
use capgate_testkit::inproc::task_record as record;

fn settings(url: &str) -> StoreConfig {
    StoreConfig {
        url: Some(url.to_owned()),
        ..StoreConfig::default()
    }
}

fn postgres(url: &str) -> PostgresStore {
    PostgresStore::open(PostgresTarget::parse(url).unwrap(), &settings(url)).unwrap()
}

/// What every store does, whichever it is.
fn contract(s: &dyn TaskStore) {
    s.insert_task(&record("t1", "aa01", 60)).unwrap();
    s.insert_task(&record("old", "aa02", -5)).unwrap();
    let t = s.task("t1").unwrap().expect("stored");
    assert_eq!(t.agent, "agent-1");
    assert_eq!(t.intent.purpose, "read the docs");
    assert_eq!(t.grant.tools["fs_read"], vec!["/ws/".to_owned()]);
    assert!(t.is_active(SystemTime::now()));
    assert!(s.task("nope").unwrap().is_none());
    assert_eq!(s.task_by_revocation_id("aa01").unwrap().unwrap().id, "t1");
    let listed: Vec<String> = s.tasks(10).unwrap().into_iter().map(|t| t.id).collect();
    assert_eq!(listed.len(), 2);
    let expired: Vec<String> = s
        .expired_unended(SystemTime::now())
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(expired, vec!["old".to_owned()]);

    let before = s.change_counter().unwrap();
    let ended = s
        .end_task("t1", EndReason::Revoked, Some("rule-x"), SystemTime::now())
        .unwrap()
        .expect("ended by this call");
    assert_eq!(ended.end_reason, Some(EndReason::Revoked));
    assert_eq!(ended.revoked_by.as_deref(), Some("rule-x"));
    assert!(
        s.end_task("t1", EndReason::Completed, None, SystemTime::now())
            .unwrap()
            .is_none(),
        "a task ends once"
    );
    assert!(
        s.end_task("nope", EndReason::Completed, None, SystemTime::now())
            .unwrap()
            .is_none()
    );
    assert_ne!(s.change_counter().unwrap(), before, "ending is a change");
    let revs = s.revocations().unwrap();
    assert_eq!(revs.len(), 1);
    assert_eq!(revs[0].id, "aa01");
    assert_eq!(revs[0].task_id.as_deref(), Some("t1"));
    assert!(s.revoke("bb01", "agent token revoked").unwrap());
    assert!(!s.revoke("bb01", "again").unwrap(), "revoked once");
    assert_eq!(s.revocations().unwrap().len(), 2);

    let mut d = UsageDelta::new("old", "fs_read");
    d.add_call(true, false);
    d.add_call(false, true);
    s.add_usage(&[d.clone(), d]).unwrap();
    let u = s.usage("old").unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(
        (u[0].calls, u[0].allowed, u[0].denied, u[0].out_of_intent),
        (4, 2, 2, 2)
    );

    let budget = Budget {
        calls: Some(3),
        per_tool: BTreeMap::from([("fs_write".to_owned(), 1)]),
        per_minute: None,
    };
    let now = SystemTime::now();
    assert!(
        s.spend_budget("old", "fs_write", &budget, now)
            .unwrap()
            .is_ok()
    );
    let over = s.spend_budget("old", "fs_write", &budget, now).unwrap();
    assert_eq!(over.unwrap_err().limit, "per_tool.fs_write");
    assert!(
        s.spend_budget("old", "fs_read", &budget, now)
            .unwrap()
            .is_ok()
    );
    assert!(
        s.spend_budget("old", "fs_read", &budget, now)
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        s.spend_budget("old", "fs_read", &budget, now)
            .unwrap()
            .unwrap_err()
            .limit,
        "calls"
    );
    let used = s.budget_use("old").unwrap();
    assert_eq!(used.calls, 3, "a refused call is not counted");
    assert_eq!(used.per_tool["fs_write"], 1);
    let rate = Budget {
        per_minute: Some(2),
        ..Budget::default()
    };
    assert!(s.spend_budget("r", "x", &rate, now).unwrap().is_ok());
    assert!(s.spend_budget("r", "x", &rate, now).unwrap().is_ok());
    assert!(s.spend_budget("r", "x", &rate, now).unwrap().is_err());
    let later = now + Duration::from_secs(61);
    assert!(
        s.spend_budget("r", "x", &rate, later).unwrap().is_ok(),
        "the rate recovers"
    );

    // Pins: the first sight pins; a later, different sight is recorded beside the pin and
    // changes it only when accepted; accepting twice changes nothing the second time.
    let first = s
        .observe_definition("notes", "read", "d1", "{\"v\":1}", now)
        .unwrap();
    assert_eq!(
        (first.pinned_digest.as_str(), first.matches()),
        ("d1", true)
    );
    s.observe_definition("notes", "other", "o1", "{}", now)
        .unwrap();
    s.observe_definition("wiki", "read", "w1", "{}", now)
        .unwrap();
    let changed = s
        .observe_definition("notes", "read", "d2", "{\"v\":2}", later)
        .unwrap();
    assert_eq!(changed.pinned_digest, "d1", "a change does not pin itself");
    assert_eq!(changed.seen_digest, "d2");
    assert_eq!(changed.seen_definition, "{\"v\":2}");
    assert!(!changed.matches());
    assert_eq!(s.pins(Some("notes")).unwrap().len(), 2);
    assert_eq!(s.pins(None).unwrap().len(), 3);
    assert!(
        s.pin_seen("notes", Some("other"), later)
            .unwrap()
            .is_empty()
    );
    let accepted = s.pin_seen("notes", None, later).unwrap();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].tool, "read");
    assert_eq!(accepted[0].pinned_digest, "d2");
    assert_eq!(accepted[0].pinned_definition, "{\"v\":2}");
    assert!(s.pin_seen("notes", None, later).unwrap().is_empty());
    let back = s
        .observe_definition("notes", "read", "d1", "{\"v\":1}", later)
        .unwrap();
    assert_eq!(back.pinned_digest, "d2", "going back is a change too");
    assert!(!back.matches());
}

#[test]
fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(&SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap());
}

#[test]
fn the_postgres_store_keeps_the_contract_and_its_data_across_reopen() {
    let pg = Postgres::start();
    let url = pg.database("contract");
    {
        let s = postgres(&url);
        assert_eq!(s.schema_version(), 2);
        contract(&s);
    }
    // A second open applies no migration again and sees what the first wrote.
    let s = postgres(&url);
    assert_eq!(s.revocations().unwrap().len(), 2);
    assert_eq!(
        pg.sql("contract", "SELECT count(*) FROM capgate_schema"),
        "1"
    );
}

/// Eight handles racing on one task, one budget and one revocation: each thing happens once.
#[test]
fn racing_replicas_end_spend_and_revoke_exactly_once() {
    let pg = Postgres::start();
    let url = pg.database("race");
    let stores: Vec<Arc<PostgresStore>> = (0..8).map(|_| Arc::new(postgres(&url))).collect();
    stores[0].insert_task(&record("t", "cc01", 60)).unwrap();
    let budget = Budget {
        calls: Some(5),
        ..Budget::default()
    };
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .map(|s| {
            let barrier = barrier.clone();
            let budget = budget.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let ended = s
                    .end_task("t", EndReason::Expired, None, SystemTime::now())
                    .unwrap()
                    .is_some();
                barrier.wait();
                let revoked = s.revoke("dd01", "raced").unwrap();
                barrier.wait();
                let spent = (0..3)
                    .filter(|_| {
                        s.spend_budget("t", "fs_read", &budget, SystemTime::now())
                            .unwrap()
                            .is_ok()
                    })
                    .count();
                let mut d = UsageDelta::new("t", "fs_read");
                d.add_call(true, false);
                s.add_usage(&[d]).unwrap();
                (ended, revoked, spent)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.0).count(), 1, "ended once");
    assert_eq!(results.iter().filter(|r| r.1).count(), 1, "revoked once");
    assert_eq!(results.iter().map(|r| r.2).sum::<usize>(), 5, "budget of 5");
    assert_eq!(stores[3].budget_use("t").unwrap().calls, 5);
    assert_eq!(stores[5].usage("t").unwrap()[0].calls, 8, "usage adds up");
    assert_eq!(
        pg.sql("race", "SELECT count(*) FROM capgate_revocations"),
        "2"
    );
}

/// A revocation written through one handle changes what the others report within a second,
/// with notifications and, when they are off, by polling alone.
#[test]
fn a_revocation_made_on_one_is_heard_by_the_others() {
    let pg = Postgres::start();
    let url = pg.database("heard");
    for notify in [true, false] {
        let cfg = StoreConfig {
            notify,
            ..settings(&url)
        };
        let a = PostgresStore::open(PostgresTarget::parse(&url).unwrap(), &cfg).unwrap();
        let b = PostgresStore::open(PostgresTarget::parse(&url).unwrap(), &cfg).unwrap();
        // Past b's watcher's first poll, so that what is measured is propagation.
        std::thread::sleep(Duration::from_millis(400));
        let seen = b.change_counter().unwrap();
        assert!(a.revoke(&format!("ee{notify}"), "heard?").unwrap());
        let start = Instant::now();
        while b.change_counter().unwrap() == seen {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "not heard within 1 s (notify = {notify})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("notify = {notify}: heard after {:?}", start.elapsed());
    }
}

/// A counter that went down (a database restored from an older backup, a failover to a
/// standby that lagged) still reads as a change, so revocations made after it are loaded.
#[test]
fn a_revision_counter_that_went_down_still_reads_as_a_change() {
    let pg = Postgres::start();
    let url = pg.database("restored");
    let (a, b) = (postgres(&url), postgres(&url));
    for i in 0..3 {
        a.revoke(&format!("aa0{i}"), "before the restore").unwrap();
    }
    let wait_change = |from: u64| {
        let start = Instant::now();
        loop {
            let now = b.change_counter().unwrap();
            if now != from {
                return now;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "no change seen");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    std::thread::sleep(Duration::from_millis(400));
    let before = b.change_counter().unwrap();
    pg.sql("restored", "UPDATE capgate_revision SET value = 0");
    a.revoke("bb01", "after the restore").unwrap();
    wait_change(before);
}

/// Every connection of a replica killed by the server (a restart, a failover, an operator's
/// `pg_terminate_backend`): the pool and the watcher reconnect, and revocations are heard again.
#[test]
fn killed_connections_are_replaced_and_revocations_heard_again() {
    let pg = Postgres::start();
    let url = pg.database("killed");
    let (a, b) = (postgres(&url), postgres(&url));
    b.insert_task(&record("k", "ab01", 60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pg.sql(
        "killed",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'capgate'",
    );
    let start = Instant::now();
    // The first use of a dead pooled connection may fail; the store recovers on its own.
    while b.task("k").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the pool never recovered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = b.change_counter().unwrap();
    let start = Instant::now();
    while a.revoke("ab02", "after the kill").is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "writes never recovered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    while b.change_counter().unwrap() == before {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the watcher never came back"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A paused database: operations fail within the timeout naming the store, the change counter
/// turns stale after `max_staleness`, and everything works again once it resumes.
#[test]
fn a_paused_database_fails_fast_and_closed_then_recovers() {
    let pg = Postgres::start();
    let url = pg.database("paused");
    let cfg = StoreConfig {
        timeout: Duration::from_millis(500),
        max_staleness: Duration::from_secs(1),
        ..settings(&url)
    };
    let s = PostgresStore::open(PostgresTarget::parse(&url).unwrap(), &cfg).unwrap();
    s.insert_task(&record("p", "ff01", 60)).unwrap();
    s.change_counter().unwrap();
    let mut one = UsageDelta::new("p", "fs_read");
    one.add_call(true, false);
    s.add_usage(std::slice::from_ref(&one)).unwrap();
    pg.pause();
    // A usage batch written while the store is away is kept, and counted once it is back.
    assert!(s.add_usage(std::slice::from_ref(&one)).is_err());
    let start = Instant::now();
    let err = s.insert_task(&record("q", "ff02", 60)).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "bounded: {took:?}");
    assert!(
        err.to_string().contains("postgres://capgate@127.0.0.1"),
        "{err}"
    );
    let start = Instant::now();
    loop {
        match s.change_counter() {
            Err(Error::Stale { .. }) => break,
            // max_staleness (1 s) + a poll + a timeout, with slack for a loaded machine.
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(4), "never stale"),
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.resume();
    let start = Instant::now();
    while s.change_counter().is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "never recovered");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The write that timed out is either there once or not at all; a retry settles it.
    match s.insert_task(&record("q", "ff02", 60)) {
        Ok(()) => {}
        Err(e) => assert!(s.task("q").unwrap().is_some(), "{e}"),
    }
    assert_eq!(
        pg.sql(
            "paused",
            "SELECT count(*) FROM capgate_tasks WHERE id = 'q'"
        ),
        "1"
    );
    assert!(s.task("p").unwrap().is_some());
    s.add_usage(&[]).unwrap();
    s.add_usage(&[]).unwrap();
    assert_eq!(s.usage("p").unwrap()[0].calls, 2, "the kept batch, once");
}

/// A schema newer than this capgate knows is refused, naming the store.
#[test]
fn a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let url = pg.database("newer");
    drop(postgres(&url));
    pg.sql("newer", "UPDATE capgate_schema SET version = 99");
    let err = PostgresStore::open(PostgresTarget::parse(&url).unwrap(), &settings(&url))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("newer") && text.contains("postgres://"),
        "{text}"
    );
}
