//! The decision cache is sound: a cached allow turns into a deny the moment Datalog would deny —
//! at a time bound in the token, at a revocation (also one made by another process), and for
//! any change in the call's facts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
use capgate_host::capability::{AgentGrant, RootKey, mint_agent_token, rfc3339};
use capgate_host::guard::{CallEnv, Transport};
use capgate_host::issuance::{Channel, Intent};
use capgate_host::store::{EndReason, SqliteStore, TaskStore};
use capgate_host::{
    Config, DynamicTool, Host, HostBuilder, InProcessError, Operation, ToolOutput, ToolSpec,
};
use serde_json::{Value, json};

struct Fixture {
    _dir: tempfile::TempDir,
    host: Host,
    root: RootKey,
    runs: Arc<AtomicUsize>,
    store_file: std::path::PathBuf,
}

fn fixture() -> Fixture {
    fixture_with("store_poll = \"0s\"")
}

fn fixture_with(guard: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        &format!(
            "state_dir = \"state\"\n[tools.fs]\nenabled = false\n[tools.http_fetch]\nenabled = false\n[guard]\n{guard}\n"
        ),
        &dir.path().join("capgate.toml"),
    )
    .unwrap();
    let store_file = config.store_file();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let Value::Object(schema) = json!({"type": "object", "properties": {"append": {}}}) else {
        unreachable!()
    };
    let note = DynamicTool::new(
        ToolSpec::new("note", "counts its runs", Operation::Write, schema),
        move |_a, _r, _c| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::text("noted"))
            }
        },
    );
    let host = HostBuilder::new(config)
        .create_key_if_missing(true)
        .tool(note)
        .unwrap()
        .build()
        .unwrap();
    let root = RootKey::load(&host.config().root_key_file()).unwrap();
    Fixture {
        _dir: dir,
        host,
        root,
        runs,
        store_file,
    }
}

impl Fixture {
    /// Returns (task id, task token).
    fn task(&self) -> (String, String) {
        let agent = mint_agent_token(
            &self.root,
            &AgentGrant {
                agent: "a".into(),
                tenant: "t".into(),
                rights: vec!["note".into()],
                ttl: Some(Duration::from_secs(3600)),
                ..AgentGrant::default()
            },
        )
        .unwrap()
        .to_base64()
        .unwrap();
        let verified = self.host.verifier().verify(&agent).unwrap();
        let issued = self
            .host
            .issuer()
            .issue(
                &verified,
                Intent {
                    purpose: "cache test".into(),
                    tools: vec!["note".into()],
                    approved_by: Some("tester".into()),
                    ..Intent::default()
                },
                Channel::Cli,
            )
            .unwrap();
        (issued.record.id, issued.token)
    }

    async fn call(&self, token: &str, args: Value) -> Result<ToolOutput, InProcessError> {
        let Value::Object(map) = args else {
            unreachable!()
        };
        self.host.call(token, "note", map).await
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
        let runs = self.runs.load(Ordering::SeqCst);
        let refused = self.call(token, json!({})).await;
        assert_eq!(
            self.runs.load(Ordering::SeqCst),
            runs,
            "the tool did not run"
        );
        match refused {
            Ok(_) => panic!("the call was allowed after the date had passed"),
            Err(e) => reason(e),
        }
    }

    fn hits(&self) -> u64 {
        self.host.guard().stats().cache_hits.load(Ordering::Relaxed)
    }
}

fn attenuate(token: &str, code: &str) -> String {
    UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(BlockBuilder::new().code(code).unwrap())
        .unwrap()
        .to_base64()
        .unwrap()
}

fn reason(e: InProcessError) -> String {
    match e {
        InProcessError::Denied(d) => d.reason,
        InProcessError::Token(t) => t.kind().to_owned(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cached_allow_ends_at_a_time_bound_the_expiry_precheck_cannot_see() {
    let f = fixture();
    let (_id, task) = f.task();
    // The bound hides inside an `or`, so the token has no provable expiry and only Datalog (and
    // the cache's own time horizon) can notice it passing.
    let deadline = SystemTime::now() + Duration::from_secs(3);
    let token = attenuate(
        &task,
        &format!(
            "check if time($t), $t <= {} or tool(\"never-called\");",
            rfc3339(deadline)
        ),
    );
    assert!(
        f.host
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
    let (_id, task) = f.task();
    // The date sits in a fact, not in the check: only reading facts for dates can see it.
    let deadline = SystemTime::now() + Duration::from_secs(2);
    let token = attenuate(
        &task,
        &format!(
            "until({}); check if time($t), until($u), $t <= $u;",
            rfc3339(deadline)
        ),
    );
    f.cached_then_refused(&token, deadline).await;
}

#[tokio::test]
async fn a_cached_allow_ends_at_revocation_and_arguments_are_part_of_the_key() {
    let f = fixture();
    let (id, task) = f.task();
    let append_only = attenuate(&task, "check if arg(\"append\", true);");
    f.call(&append_only, json!({"append": true})).await.unwrap();
    f.call(&append_only, json!({"append": true})).await.unwrap();
    let runs = f.runs.load(Ordering::SeqCst);
    assert_eq!(runs, 2);
    // Same tool, same resource, another argument: never served from the allow above.
    let e = f
        .call(&append_only, json!({"append": false}))
        .await
        .unwrap_err();
    assert_eq!(reason(e), "arg_constraint");
    // A value that would collide with another key if fields were merely concatenated.
    let e = f
        .call(&append_only, json!({"append": "true"}))
        .await
        .unwrap_err();
    assert_eq!(reason(e), "arg_constraint");
    assert_eq!(f.runs.load(Ordering::SeqCst), runs);

    f.host.end_task(&id, EndReason::Completed).unwrap();
    for token in [&task, &append_only] {
        let e = f.call(token, json!({"append": true})).await.unwrap_err();
        assert_eq!(reason(e), "token_revoked");
    }
    assert_eq!(
        f.runs.load(Ordering::SeqCst),
        runs,
        "nothing ran after the revocation"
    );
}

#[tokio::test]
async fn a_revocation_written_by_another_process_applies_to_the_next_call() {
    let f = fixture();
    let (id, task) = f.task();
    f.call(&task, json!({})).await.unwrap();
    f.call(&task, json!({})).await.unwrap();
    // Another process (the CLI, another replica) ends the task through its own connection.
    let other = SqliteStore::open(Path::new(&f.store_file)).unwrap();
    assert!(
        other
            .end_task(&id, EndReason::Completed, SystemTime::now())
            .unwrap()
            .is_some()
    );
    let e = f.call(&task, json!({})).await.unwrap_err();
    assert_eq!(reason(e), "token_revoked");
    assert_eq!(f.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_a_poll_interval_a_foreign_revocation_applies_once_the_interval_has_passed() {
    let f = fixture_with("store_poll = \"20ms\"");
    let (id, task) = f.task();
    f.call(&task, json!({})).await.unwrap();
    let other = SqliteStore::open(Path::new(&f.store_file)).unwrap();
    assert!(
        other
            .end_task(&id, EndReason::Completed, SystemTime::now())
            .unwrap()
            .is_some()
    );
    // Whatever happened within the interval, once it has passed the revocation is seen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = f.call(&task, json!({})).await.unwrap_err();
    assert_eq!(reason(e), "token_revoked");
    assert_eq!(f.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_agent_token_alone_reaches_nothing() {
    let f = fixture();
    let agent = mint_agent_token(
        &f.root,
        &AgentGrant {
            agent: "a".into(),
            tenant: "t".into(),
            rights: vec!["note".into()],
            ..AgentGrant::default()
        },
    )
    .unwrap()
    .to_base64()
    .unwrap();
    let e = f.call(&agent, json!({})).await.unwrap_err();
    assert_eq!(reason(e), "task-required");
    assert_eq!(f.runs.load(Ordering::SeqCst), 0);
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
    };
    let list = |token: &str| -> Vec<String> {
        let verified = f.host.verifier().verify(token).unwrap();
        f.host
            .guard()
            .visible_tools(&verified, f.host.registry(), &env)
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
    let runs = || f.host.guard().stats().datalog_runs.load(Ordering::Relaxed);
    let before = runs();
    assert!(list(&flood).is_empty());
    let spent = runs() - before;
    assert!(spent <= 512, "{spent} Datalog runs for one listing");
}
