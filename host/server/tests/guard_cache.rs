//! The decision cache is sound: a cached allow turns into a deny the moment Datalog would deny —
//! at a time bound in the token, at a revocation (also one made by another process), and for
//! any change in the call's facts. And it is bounded without being fragile: a flood of distinct
//! calls and tokens does not push a steady client's entries out.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use capgate_authz::{CallEnv, CredentialError, Transport};
use capgate_core::Operation;
use capgate_core::task::EndReason;
use capgate_core::time::rfc3339;
use capgate_server::InProcessError;
use capgate_server::store::{SqliteStore, TaskStore};
use capgate_testkit::attenuate;
use capgate_testkit::inproc::{Scratch, intent};
use capgate_testkit::tools::counting;
use serde_json::{Value, json};

struct Fixture {
    scratch: Scratch,
    runs: Arc<AtomicUsize>,
    store_file: PathBuf,
}

fn fixture() -> Fixture {
    fixture_with("store_poll = \"0s\"")
}

fn fixture_with(guard: &str) -> Fixture {
    let runs = Arc::new(AtomicUsize::new(0));
    let note = counting("note", Operation::Write, None, &runs);
    let scratch = Scratch::new(&format!("[guard]\n{guard}\n"), |b| b.tool(note).unwrap());
    let store_file = scratch.host.config().store_file();
    Fixture {
        scratch,
        runs,
        store_file,
    }
}

impl Fixture {
    /// Returns (task id, task token).
    fn task(&self) -> (String, String) {
        let agent = self.scratch.agent("a", "t", &["note"]);
        let issued = self
            .scratch
            .issue(&agent, intent("cache test", &["note"]))
            .unwrap();
        (issued.record.id, issued.token)
    }

    /// A task token narrowed by the block `block` writes around a date `secs` from now (given
    /// in RFC 3339); the token and the date.
    fn task_bounded(&self, secs: u64, block: impl FnOnce(&str) -> String) -> (String, SystemTime) {
        let (_id, task) = self.task();
        let deadline = SystemTime::now() + Duration::from_secs(secs);
        (attenuate(&task, &block(&rfc3339(deadline))), deadline)
    }

    /// Ends task `id` through a connection of its own to the store, as another process (the
    /// CLI, another replica) would.
    fn end_elsewhere(&self, id: &str) {
        let other = SqliteStore::open(&self.store_file).unwrap();
        let ended = other.end_task(id, EndReason::Completed, None, SystemTime::now());
        assert!(ended.unwrap().is_some(), "task {id} was running");
    }

    fn host(&self) -> &capgate_server::Host {
        &self.scratch.host
    }

    async fn call(
        &self,
        token: &str,
        args: Value,
    ) -> Result<capgate_core::ToolOutput, InProcessError> {
        let Value::Object(map) = args else {
            unreachable!()
        };
        self.host().call(token, "note", map).await
    }

    /// Calls `token` twice (the second answered from the decision cache), waits until the
    /// second after `deadline` has begun, and calls again: the call must be refused without
    /// the tool running. Returns the refusal's reason.
    async fn cached_then_refused(&self, token: &str, deadline: SystemTime) -> String {
        self.call(token, json!({})).await.unwrap();
        let before = self.hits();
        self.call(token, json!({})).await.unwrap();
        assert_eq!(
            self.hits(),
            before + 1,
            "the second identical call was answered from the cache"
        );
        let wait = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            + Duration::from_millis(1200);
        tokio::time::sleep(wait).await;
        self.refused(token, json!({})).await
    }

    /// Calls `token` with `args`: the call must be refused without the tool running. Returns
    /// the refusal's reason.
    async fn refused(&self, token: &str, args: Value) -> String {
        let runs = self.runs();
        let refused = self.call(token, args).await;
        assert_eq!(self.runs(), runs, "the tool did not run");
        reason(refused.expect_err("the call must be refused"))
    }

    /// How many times the tool has run.
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn hits(&self) -> u64 {
        self.host()
            .guard()
            .stats()
            .cache_hits
            .load(Ordering::Relaxed)
    }
}

fn reason(e: InProcessError) -> String {
    match e {
        InProcessError::Denied(d) => d.reason,
        InProcessError::Credential(CredentialError::Token(t)) => t.kind().to_owned(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cached_allow_ends_at_a_time_bound_the_expiry_precheck_cannot_see() {
    let f = fixture();
    // The bound hides inside an `or`, so the token has no provable expiry and only Datalog (and
    // the cache's own time horizon) can notice it passing.
    let (token, deadline) = f.task_bounded(3, |date| {
        format!("check if time($t), $t <= {date} or tool(\"never-called\");")
    });
    assert!(
        f.host()
            .verifier()
            .verify(&token)
            .unwrap()
            .expires_at()
            .is_some(),
        "the task block's own expiry is known"
    );
    let reason = f.cached_then_refused(&token, deadline).await;
    assert_eq!(reason, "expired");
}

#[tokio::test]
async fn a_cached_allow_ends_at_a_time_bound_held_in_a_fact() {
    let f = fixture();
    // The date sits in a fact, not in the check: only reading facts for dates can see it.
    let (token, deadline) = f.task_bounded(2, |date| {
        format!("until({date}); check if time($t), until($u), $t <= $u;")
    });
    f.cached_then_refused(&token, deadline).await;
}

#[tokio::test]
async fn a_cached_allow_ends_at_revocation_and_arguments_are_part_of_the_key() {
    let f = fixture();
    let (id, task) = f.task();
    let append_only = attenuate(&task, "check if arg(\"append\", true);");
    f.call(&append_only, json!({"append": true})).await.unwrap();
    f.call(&append_only, json!({"append": true})).await.unwrap();
    let runs = f.runs();
    assert_eq!(runs, 2);
    // Same tool, same resource, another argument: never served from the allow above.
    let refused = f.refused(&append_only, json!({"append": false})).await;
    assert_eq!(refused, "arg_constraint");
    // A value that would collide with another key if fields were merely concatenated.
    let refused = f.refused(&append_only, json!({"append": "true"})).await;
    assert_eq!(refused, "arg_constraint");
    assert_eq!(f.runs(), runs);

    f.host().end_task(&id, EndReason::Completed).unwrap();
    for token in [&task, &append_only] {
        let refused = f.refused(token, json!({"append": true})).await;
        assert_eq!(refused, "token_revoked");
    }
    assert_eq!(f.runs(), runs, "nothing ran after the revocation");
}

#[tokio::test]
async fn a_revocation_written_by_another_process_applies_to_the_next_call() {
    let f = fixture();
    let (id, task) = f.task();
    f.call(&task, json!({})).await.unwrap();
    f.call(&task, json!({})).await.unwrap();
    f.end_elsewhere(&id);
    assert_eq!(f.refused(&task, json!({})).await, "token_revoked");
    assert_eq!(f.runs(), 2);
}

#[tokio::test]
async fn with_a_poll_interval_a_foreign_revocation_applies_once_the_interval_has_passed() {
    let f = fixture_with("store_poll = \"20ms\"");
    let (id, task) = f.task();
    f.call(&task, json!({})).await.unwrap();
    f.end_elsewhere(&id);
    // Whatever happened within the interval, once it has passed the revocation is seen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(f.refused(&task, json!({})).await, "token_revoked");
    assert_eq!(f.runs(), 1);
}

#[tokio::test]
async fn the_agent_token_alone_reaches_nothing() {
    let f = fixture();
    let agent = f.scratch.agent("a", "t", &["note"]);
    assert_eq!(f.refused(&agent, json!({})).await, "task-required");
    assert_eq!(f.runs(), 0);
}

/// `tools/list` tries each string a token names as a resource, one Datalog run each: a token
/// spelling thousands of strings (none of them a resource it reaches) stops at the listing's
/// budget, and lists nothing it cannot prove (closed).
#[tokio::test]
async fn tools_list_stops_at_its_budget() {
    let f = fixture();
    let (_id, task) = f.task();
    let env = CallEnv {
        transport: Transport::InProcess,
        session: Arc::from("list-test"),
        holder: None,
    };
    let list = |token: &str| -> Vec<String> {
        let verified = f.host().verifier().verify(token).unwrap();
        f.host()
            .guard()
            .visible_tools(&verified, f.host().catalog(), &env)
            .into_iter()
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(list(&task), ["note"]);
    let strings: Vec<String> = (0..2000).map(|i| format!("\"n{i}\"")).collect();
    let flood = attenuate(
        &task,
        &format!(
            "check if resource($r), $r.starts_with(\"/x/\"), $r.ends_with(\"!\");\n\
             check if [{}].length() > 0;",
            strings.join(", ")
        ),
    );
    let runs = || {
        f.host()
            .guard()
            .stats()
            .datalog_runs
            .load(Ordering::Relaxed)
    };
    let before = runs();
    assert!(list(&flood).is_empty());
    let spent = runs() - before;
    assert!(spent <= 512, "{spent} Datalog runs for one listing");
}

/// The caches are bounded and evict: they never empty themselves. A client flooding the
/// verifier with 100,000 distinct garbage tokens, then with a couple of thousand distinct tokens
/// that do verify (blocks it appended offline to its own task token) and distinct allowed calls
/// on each, pushes out its own entries, not those of a steady client that keeps calling
/// meanwhile: the steady client's token stays verified and its decision stays cached.
#[tokio::test]
async fn a_flood_of_distinct_tokens_and_calls_does_not_flush_a_steady_client() {
    let runs = Arc::new(AtomicUsize::new(0));
    let note = counting("note", Operation::Write, Some("/notes/"), &runs);
    let scratch = Scratch::new(
        "[guard]\nstore_poll = \"0s\"\ntoken_cache_entries = 64\ndecision_cache_entries = 64\n",
        |b| b.tool(note).unwrap(),
    );
    let host = &scratch.host;
    let agent = scratch.agent("a", "t", &["note"]);
    let steady = scratch
        .issue(&agent, intent("steady", &["note"]))
        .unwrap()
        .token;
    let attacker = scratch
        .issue(&agent, intent("flood", &["note"]))
        .unwrap()
        .token;
    let env = CallEnv {
        transport: Transport::InProcess,
        session: Arc::from("steady"),
        holder: None,
    };
    let verifier = host.verifier();
    let guard = host.guard();
    let steady_call = || {
        let token = verifier.verify(&steady).expect("the steady token verifies");
        let call = host
            .catalog()
            .prepare(
                "note",
                Some(capgate_testkit::tools::object(json!({"path": "a"}))),
            )
            .unwrap();
        guard
            .decide(&token, &call, &env)
            .expect("the steady call is allowed")
    };
    steady_call();
    steady_call();
    let verified = || verifier.stats().verified.load(Ordering::Relaxed);
    let misses = || guard.stats().datalog_runs.load(Ordering::Relaxed);

    // 100,000 distinct garbage tokens: refused, each of them, and nothing of the steady
    // client's is lost.
    let (v0, d0) = (verified(), misses());
    for i in 0..100_000u32 {
        let garbage = format!("En0KEwoEbm90ZRgDIgkKBwgKEgMYgAg{i:08}");
        assert!(verifier.verify(&garbage).is_err());
        if i % 1_000 == 0 {
            let grant = steady_call();
            assert!(
                grant.cached,
                "the steady decision is still cached after {i} garbage tokens"
            );
        }
    }
    assert_eq!(misses(), d0, "no steady decision was re-run");

    // 2,000 distinct tokens that verify, each making a distinct allowed call: 30 times what
    // either cache holds.
    for i in 0..2_000u32 {
        let token = attenuate(&attacker, &format!("flood({i});"));
        let token = verifier
            .verify(&token)
            .expect("an attenuated token verifies");
        let call = host
            .catalog()
            .prepare(
                "note",
                Some(capgate_testkit::tools::object(
                    json!({"path": format!("f{i}")}),
                )),
            )
            .unwrap();
        let flood_env = CallEnv {
            transport: Transport::InProcess,
            session: Arc::from("attacker"),
            holder: None,
        };
        guard
            .decide(&token, &call, &flood_env)
            .expect("the flood's calls are allowed");
        if i % 50 == 0 {
            let before = verified();
            let grant = steady_call();
            assert_eq!(
                verified(),
                before,
                "the steady token was not verified again"
            );
            assert!(
                grant.cached,
                "the steady decision is still cached after {i} flood calls"
            );
        }
    }
    assert_eq!(
        verified() - v0,
        2_000,
        "every flood token was verified once, the steady one never"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0, "deciding ran no tool");
}
