//! capgate's own faults are reported as capgate's: a task store that fails is a 503 on HTTP
//! (never 401 `invalid_token`, never 403) and a result that says capgate is at fault on a call
//! (never a token error); nothing is issued and no tool runs meanwhile. The host here is the
//! real one, over a real socket and a real SQLite file; only the store's failure is injected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capgate_core::Operation;
use capgate_server::transport::{HttpOptions, serve_http};
use capgate_testkit::faults::FailingStore;
use capgate_testkit::inproc::{Scratch, intent, stdio_client};
use capgate_testkit::tools::counting;
use capgate_testkit::{call, init_crypto, text};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Fixture {
    scratch: Scratch,
    store: Arc<FailingStore>,
    runs: Arc<AtomicUsize>,
    _store_dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FailingStore::open(&dir.path().join("faulty.sqlite3")));
    let runs = Arc::new(AtomicUsize::new(0));
    let note = counting("note", Operation::Read, Some("/notes/"), &runs);
    let s = Arc::clone(&store);
    let scratch = Scratch::new("[guard]\nstore_poll = \"0s\"\n", move |b| {
        b.store(s).tool(note).unwrap()
    });
    Fixture {
        scratch,
        store,
        runs,
        _store_dir: dir,
    }
}

async fn serve(fx: &Fixture) -> (SocketAddr, CancellationToken) {
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let host = fx.scratch.host.clone();
    let ct = stop.clone();
    tokio::spawn(async move {
        let opts = HttpOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            headerless_token: None,
        };
        serve_http(&host, opts, ct, |a| {
            let _ = tx.send(a);
        })
        .await
        .unwrap();
    });
    (rx.await.unwrap(), stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_failure_is_a_503_on_http_not_a_401() {
    init_crypto();
    let fx = fixture();
    let (addr, stop) = serve(&fx).await;
    let agent = fx.scratch.agent("a", "acme", &["note"]);
    let http = reqwest::Client::new();
    let ask = || {
        http.post(format!("http://{addr}/v1/tasks"))
            .bearer_auth(&agent)
            .json(&json!({"purpose": "p", "tools": ["note"]}))
            .send()
    };
    // Working store: the request is served.
    assert_eq!(ask().await.unwrap().status(), 201);

    fx.store.fail(true);
    let r = ask().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "not a token problem"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable", "{body}");
    assert_eq!(body["fault"], "server", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("capgate's fault"),
        "{body}"
    );
    // MCP itself: the same answer before any MCP processing.
    let r = http
        .post(format!("http://{addr}/mcp"))
        .bearer_auth(&agent)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    // Back up: only the task issued before the fault exists.
    fx.store.fail(false);
    let tasks = fx.scratch.host.ledger().store().tasks(10).unwrap();
    assert_eq!(
        tasks.len(),
        1,
        "nothing was issued while the store was down"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_failure_is_a_server_fault_result_on_a_call() {
    let fx = fixture();
    let agent = fx.scratch.agent("a", "acme", &["note"]);
    let task = fx.scratch.issue(&agent, intent("p", &["note"])).unwrap();
    let client = stdio_client(&fx.scratch.host, &task.token).await;
    let ok = call(&client, "note", json!({"path": "a"})).await.unwrap();
    assert_eq!(ok.is_error, Some(false), "{ok:?}");
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1);

    fx.store.fail(true);
    let r = call(&client, "note", json!({"path": "a"}))
        .await
        .expect("a result, not a protocol error");
    assert_eq!(r.is_error, Some(true));
    let d = r.structured_content.clone().unwrap()["capgate"].clone();
    assert_eq!(d["fault"], "server", "{d}");
    assert_eq!(d["reason"], "store_unavailable", "{d}");
    assert_ne!(d["decision"], "deny", "capgate did not decide: {d}");
    assert!(text(&r).contains("capgate's fault"), "{}", text(&r));
    assert_eq!(fx.runs.load(Ordering::SeqCst), 1, "the tool did not run");

    fx.store.fail(false);
    let again = call(&client, "note", json!({"path": "a"})).await.unwrap();
    assert_eq!(
        again.is_error,
        Some(false),
        "served again once the store is back"
    );
    client.cancel().await.unwrap();
}

/// An anomaly rule that fires while the store cannot take the revocation: the task's calls are
/// refused (as capgate's fault) until it can, and then the revocation is written; the rule never
/// lapses because the store came back.
#[tokio::test(flavor = "multi_thread")]
async fn an_anomaly_revocation_the_store_cannot_take_yet_is_owed_not_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FailingStore::open(&dir.path().join("faulty.sqlite3")));
    let runs = Arc::new(AtomicUsize::new(0));
    let note = counting("note", Operation::Read, Some("/notes/"), &runs);
    let s = Arc::clone(&store);
    let scratch = Scratch::new(
        "[guard]\nstore_poll = \"0s\"\n[anomaly]\nrevoke_after_denials = 2\n",
        move |b| b.store(s).tool(note).unwrap(),
    );
    let agent = scratch.agent("a", "acme", &["note"]);
    let mut i = intent("p", &["note"]);
    i.resources
        .insert("note".into(), vec!["/notes/mine".into()]);
    let task = scratch.issue(&agent, i).unwrap();
    let client = stdio_client(&scratch.host, &task.token).await;
    let result = |r: rmcp::model::CallToolResult| r.structured_content.unwrap()["capgate"].clone();

    store.fail_ends(true);
    let d = result(
        call(&client, "note", json!({"path": "other"}))
            .await
            .unwrap(),
    );
    assert_eq!(d["reason"], "resource_not_granted", "{d}");
    let d = result(
        call(&client, "note", json!({"path": "other"}))
            .await
            .unwrap(),
    );
    assert_eq!(
        d["fault"], "server",
        "the revocation is not written yet: {d}"
    );
    assert!(text_of(&d).contains("revoke"), "{d}");
    // Inside the grant, the task is refused all the same while the revocation is owed.
    let d = result(
        call(&client, "note", json!({"path": "mine"}))
            .await
            .unwrap(),
    );
    assert_eq!(d["fault"], "server", "{d}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");

    store.fail_ends(false);
    let d = result(
        call(&client, "note", json!({"path": "mine"}))
            .await
            .unwrap(),
    );
    assert_eq!(d["reason"], "token_revoked", "{d}");
    let stored = scratch
        .host
        .ledger()
        .task(&task.record.id)
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.revoked_by.as_deref(),
        Some("anomaly:revoke_after_denials")
    );
    let d = result(
        call(&client, "note", json!({"path": "mine"}))
            .await
            .unwrap(),
    );
    assert_eq!(d["reason"], "token_revoked", "{d}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing ran");
    client.cancel().await.unwrap();
}

fn text_of(d: &Value) -> String {
    d["message"].as_str().unwrap_or_default().to_owned()
}
