//! capgate under load and faults, against the real binary on loopback (bounded in count and
//! time): 64 HTTP sessions × 10,000 calls lose nothing (every call answered, one audit line per
//! decision, usage counted to the call); an OTLP endpoint that accepts and never answers costs no
//! call; `kill -9` in the middle of the load loses no revocation, no task and no complete audit
//! line; an audit log on a full disk refuses calls, with the reason, until space returns.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capgate_server::store::{SqliteStore, TaskStore};
use capgate_testkit::*;
use serde_json::{Value, json};

const CLIENTS: usize = 64;

/// What a load run saw.
struct Load {
    answered: usize,
    errors: Vec<String>,
}

/// `clients` raw MCP sessions presenting `token`, each making `calls` `fs_read` calls in a closed
/// loop (or until `stop` is set); every answer must be a successful read of the file.
async fn drive(
    server: &Server,
    token: &str,
    clients: usize,
    calls: usize,
    answered: Arc<AtomicUsize>,
) -> Load {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        sessions.push(server.raw_session(token).await);
    }
    let mut workers = Vec::new();
    for session in sessions {
        let answered = Arc::clone(&answered);
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..calls {
                let r = session
                    .try_call(
                        i as u64 + 100,
                        "fs_read",
                        json!({"path": "acme/docs/readme.txt"}),
                    )
                    .await;
                match r {
                    Ok(r)
                        if r["isError"] == false
                            && r["content"][0]["text"]
                                .as_str()
                                .is_some_and(|t| t.contains("acme readme")) =>
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => errors.push(format!("call {i}: {r}")),
                    Err(e) => {
                        errors.push(format!("call {i}: {e}"));
                        // A server that is gone stays gone.
                        if errors.len() > 3 {
                            break;
                        }
                    }
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for w in workers {
        match w.await {
            Ok(e) => errors.extend(e),
            Err(e) => errors.push(format!("a client failed: {e}")),
        }
    }
    Load {
        answered: answered.load(Ordering::Relaxed),
        errors,
    }
}

/// [`CLIENTS`] sessions × `per_client` calls that must all succeed; how many were made.
async fn drive_to_the_end(server: &Server, token: &str, per_client: usize, label: &str) -> usize {
    let load = drive(
        server,
        token,
        CLIENTS,
        per_client,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    assert!(
        load.errors.is_empty(),
        "{label}: {:?}",
        &load.errors[..load.errors.len().min(5)]
    );
    let total = CLIENTS * per_client;
    assert_eq!(load.answered, total, "{label}");
    total
}

/// The audit lines of calls under task `id`, by decision.
fn audited(cg: &Capgate, id: &str) -> (usize, usize) {
    let calls = cg.audited_calls(id);
    let allowed = calls.iter().filter(|l| l["decision"] == "allow").count();
    (allowed, calls.len() - allowed)
}

/// Calls of `tool` under task `id` as the store counted them.
fn usage(cg: &Capgate, id: &str, tool: &str) -> u64 {
    let store = SqliteStore::open(&cg.state().join("tasks.sqlite3")).expect("the store opens");
    store
        .usage(id)
        .expect("usage reads")
        .into_iter()
        .filter(|u| u.tool == tool)
        .map(|u| u.calls)
        .sum()
}

fn verify_audit(cg: &Capgate) -> String {
    let out = cg.run(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "audit verify: {said}");
    said
}

/// A big audit log that never rotates during the run (so every line can be counted).
const NO_ROTATION: &str = "[audit]\nmax_bytes = 4294967296\n";

/// 64 sessions × 10,000 calls: no error, one audit line per call, usage equal to calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sessions_ten_thousand_calls_each_lose_nothing() {
    let cg = Capgate::with_config(NO_ROTATION);
    let agent = cg.mint("agent-load", "acme", &["fs_read"], &[]);
    let (id, token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
    let server = cg.serve_http();
    let total = drive_to_the_end(&server, &token, 10_000, "plain").await;
    // A graceful stop flushes the usage tally and signs the end of the log.
    assert!(server.stop().success());
    assert_eq!(audited(&cg, &id), (total, 0), "one audit line per decision");
    assert_eq!(
        usage(&cg, &id, "fs_read"),
        total as u64,
        "usage counts every call"
    );
    let said = verify_audit(&cg);
    assert!(!said.contains("not yet signed"), "{said}");
}

/// An OTLP endpoint that accepts connections and never answers: every call is served, and the
/// server still stops when told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_otlp_endpoint_costs_no_call() {
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", hole.local_addr().unwrap());
    // Accept and hold every connection; read nothing, answer nothing.
    let accepted = Arc::new(AtomicUsize::new(0));
    {
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in hole.incoming().flatten() {
                accepted.fetch_add(1, Ordering::Relaxed);
                held.push(c);
            }
        });
    }
    for protocol in ["grpc", "http/protobuf"] {
        let cg = Capgate::with_config(NO_ROTATION);
        let agent = cg.mint("agent-otlp", "acme", &["fs_read"], &[]);
        let (id, token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
        let server = cg.serve_http_with(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ],
        );
        let total = drive_to_the_end(&server, &token, 300, protocol).await;
        let stopped = server.stop();
        assert!(
            stopped.success(),
            "{protocol}: the server stops though its exporter hangs: {stopped}"
        );
        assert_eq!(audited(&cg, &id), (total, 0), "{protocol}");
        verify_audit(&cg);
    }
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "the exporters did try the black hole"
    );
}

/// `kill -9` while 64 sessions call and a task is ended mid-load; then a restart: every
/// revocation holds (before and during the load), every task is still in the store, the audit
/// log verifies (a torn last line is cut off and said so) and has every answered call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_keeps_revocations_tasks_and_the_log() {
    let cg = Capgate::with_config(NO_ROTATION);
    let agent = cg.mint("agent-crash", "acme", &["fs_read"], &[]);
    let (busy, busy_token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
    let (ended_before, ended_before_token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
    let (ended_during, ended_during_token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
    cg.stdout_of(&["task", "end", &ended_before]);
    let server = cg.serve_http();
    let answered = Arc::new(AtomicUsize::new(0));
    let load = {
        let answered = Arc::clone(&answered);
        let server = &server;
        let busy_token = busy_token.clone();
        async move { drive(server, &busy_token, CLIENTS, 1_000_000, answered).await }
    };
    let crash = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while answered.load(Ordering::Relaxed) < 2_000 {
            assert!(Instant::now() < deadline, "the load did not get going");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Ended while calls stream, over the task API of the serving process.
        let resp = server
            .task_request(reqwest::Method::DELETE, &ended_during, &ended_during_token)
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
        while answered.load(Ordering::Relaxed) < 4_000 {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (load, ()) = tokio::join!(
        // The load ends when the server is killed under it.
        load,
        async {
            crash.await;
            // No call can be answered after this point, so the count is final.
            let pid = server.pid();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    );
    drop(server);
    let answered = load.answered;
    assert!(answered >= 4_000);
    assert!(!load.errors.is_empty(), "the kill was seen by the clients");

    // The audit log verifies as it was left, then the restart repairs it.
    let raw = std::fs::read(cg.state().join("audit.log")).unwrap();
    let torn = !raw.ends_with(b"\n");
    let said = verify_audit(&cg);
    assert_eq!(said.contains("torn"), torn, "{said}");
    let (allowed, _) = audited(&cg, &busy);
    assert!(
        allowed >= answered,
        "{answered} answered, {allowed} in the log"
    );

    let server = cg.serve_http();
    for (id, token) in [
        (&ended_before, &ended_before_token),
        (&ended_during, &ended_during_token),
    ] {
        // A revoked task token does not even open a session.
        let resp = reqwest::Client::new()
            .post(server.url())
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "after-crash", "version": "1"}}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "task {id} stays revoked");
        let said = resp.text().await.unwrap();
        assert!(said.contains("revoked"), "task {id}: {said}");
    }
    let client = server.raw_session(&busy_token).await;
    let r = client
        .try_call(1, "fs_read", json!({"path": "acme/docs/readme.txt"}))
        .await
        .expect("an answer");
    assert_eq!(r["isError"], false, "the busy task still works: {r}");
    assert!(server.stop().success());
    let tasks = cg.task_list();
    for id in [&busy, &ended_before, &ended_during] {
        assert!(
            tasks.contains(id.as_str()),
            "task {id} is in the store: {tasks}"
        );
    }
    let log = cg.audit();
    assert_eq!(
        log.iter().filter(|l| l["kind"] == "recovered").count(),
        usize::from(torn)
    );
    let said = verify_audit(&cg);
    assert!(!said.contains("torn"), "{said}");
}

/// The audit log's disk is full (its path leads to `/dev/full`): calls and task requests are
/// refused with the reason and nothing runs; once the path leads to a disk with space again,
/// service resumes without a restart, and the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_refuses_then_service_resumes() {
    let cg = Capgate::new();
    let agent = cg.mint("agent-full", "acme", &["fs_read", "fs_write"], &[]);
    let (_id, token) = cg.task(
        &agent,
        &["fs_read", "fs_write"],
        &["fs_read=acme/", "fs_write=acme/"],
    );
    let link = cg.base().join("audit-disk");
    let real = cg.state().join("audit.log");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    cg.append_config(&format!("[audit]\npath = \"{}\"\n", link.display()));
    let server = cg.serve_http();
    let client = server.raw_session(&token).await;
    for i in 0..3 {
        let r = client
            .try_call(
                i,
                "fs_write",
                json!({"path": "acme/out/full.txt", "content": "must not land"}),
            )
            .await
            .expect("an answer, not a hang");
        assert_eq!(r["isError"], true, "{r}");
        assert_eq!(
            r["structuredContent"]["capgate"]["reason"], "audit_unavailable",
            "{r}"
        );
    }
    assert!(!cg.root.join("acme/out/full.txt").exists(), "nothing ran");
    // A task request cannot be recorded either: a server fault, not the client's.
    let resp = server
        .post_task(
            &agent,
            None,
            &json!({"purpose": "p", "tools": ["fs_read"], "resources": {"fs_read": ["acme/"]}}),
        )
        .await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("audit"), "{body}");

    // Space returns.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let r = client
        .try_call(
            10,
            "fs_write",
            json!({"path": "acme/out/full.txt", "content": "landed"}),
        )
        .await
        .expect("an answer");
    assert_eq!(r["isError"], false, "service resumed: {r}");
    assert_eq!(
        std::fs::read_to_string(cg.root.join("acme/out/full.txt")).unwrap(),
        "landed"
    );
    assert!(server.stop().success());
    let out = cg.run(&["audit", "verify", link.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}");
}
