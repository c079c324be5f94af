//! Gateway mode against the real binary: a python `mcp` SDK server (tests/support/
//! upstream_server.py, the SDK installed by this test into `target/mcp-py`) behind capgate, as a
//! stdio child and as a streamable-HTTP server. The upstream logs every tool call and every HTTP
//! request it receives, so each refusal is checked for what did not happen: the upstream never
//! saw the call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capgate_testkit::*;
use serde_json::{Value, json};

/// The python MCP SDK, installed once into `target/mcp-py`.
fn python_path() -> PathBuf {
    pip_target("mcp-py", "mcp==2.3.0", "mcp")
}

fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/upstream_server.py")
}

/// What the upstream logged: tool calls and HTTP requests, one JSON value each.
fn upstream_log(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tool_calls(log: &Path) -> Vec<Value> {
    upstream_log(log)
        .into_iter()
        .filter(|v| v.get("tool").is_some())
        .collect()
}

fn pids(log: &Path) -> Vec<i32> {
    let mut p = log.as_os_str().to_owned();
    p.push(".pid");
    std::fs::read_to_string(PathBuf::from(p))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie (exited, not yet reaped) counts as gone.
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = status
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("");
    !status.is_empty() && state != "Z" && state != "X"
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The `[[upstream]]` table of a stdio upstream named `notes`, logging to `log`; `extra` adds
/// `, KEY = "value"` pairs to its environment.
fn stdio_upstream(log: &Path, extra: &str) -> String {
    format!(
        r#"
[[upstream]]
name = "notes"
command = "python3"
args = [{script:?}, "stdio"]
cwd = "workspace"
env = {{ PYTHONPATH = {py:?}, UPSTREAM_LOG = {log:?}, FIXED = "from-config"{extra} }}
timeout = "5s"

[upstream.tools.read_note]
operation = "read"
resource = {{ path = "path" }}

[upstream.tools.save_note]
operation = "read"
resource = {{ path = "path" }}

[upstream.tools.ticket]
operation = "read"
resource = {{ template = "ticket:{{project}}/{{id}}" }}

[upstream.tools.environment]
operation = "read"

[upstream.tools.slow]
operation = "read"

[upstream.tools.crash]
operation = "read"

[upstream.tools.steps]
operation = "read"

[upstream.tools.wait]
operation = "read"

[upstream.tools.broken]
operation = "read"

[upstream.tools.publish]
operation = "read"
"#,
        script = server_script().display().to_string(),
        py = python_path().display().to_string(),
        log = log.display().to_string(),
    )
}

const TOOLS: &[&str] = &[
    "notes__read_note",
    "notes__save_note",
    "notes__ticket",
    "notes__environment",
    "notes__slow",
    "notes__crash",
    "notes__broken",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_stdio_upstream_answers_only_what_the_task_grants() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let cg = Capgate::with_config(&stdio_upstream(&log, ""));
    // A link inside the granted folder that points out of the tenant's files.
    std::os::unix::fs::symlink(
        cg.outside.join("secret.txt"),
        cg.root.join("acme/docs/link"),
    )
    .unwrap();

    // The CLI knows the hosted names from the config alone: no upstream runs yet.
    let agent = cg.mint("agent-1", "acme", TOOLS, &[]);
    assert!(pids(&log).is_empty(), "the CLI must not start an upstream");
    let (_, task) = cg.task(
        &agent,
        &[
            "notes__read_note",
            "notes__ticket",
            "notes__environment",
            "notes__slow",
            "notes__crash",
            "notes__broken",
        ],
        &["notes__read_note=acme/docs/", "notes__ticket=ticket:ops/"],
    );

    let server = cg.serve_http_with(&[], &[("CAPGATE_SECRET_OF_MY_OWN", "hunter2")]);
    let client = server.client(&task).await;

    // tools/list shows what the task may call, under the hosted names.
    let names = tool_names(&client).await;
    assert!(names.contains(&"notes__read_note".to_owned()), "{names:?}");
    assert!(!names.contains(&"notes__save_note".to_owned()), "{names:?}");

    // Granted: the upstream's answer, for the canonical path it was sent.
    let r = call_ok(
        &client,
        "notes__read_note",
        json!({"path": "acme/docs/readme.txt"}),
    )
    .await;
    assert!(text(&r).contains("acme readme"), "{r:?}");
    let calls = tool_calls(&log);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0]["path"],
        cg.root.join("acme/docs/readme.txt").display().to_string(),
        "the upstream acts on the path the guard authorized"
    );

    // Refused, and never sent: another tenant's file, a `..` escape, a link out, a `..`
    // past a missing folder, an ungranted tool.
    for path in [
        "globex/plans/secret-plan.txt",
        "acme/docs/../../globex/plans/secret-plan.txt",
        "acme/docs/link",
    ] {
        let d = call_denied(&client, "notes__read_note", json!({ "path": path })).await;
        let said = d["text"].as_str().unwrap_or("");
        assert!(
            !said.contains("globex plan") && !said.contains("outside secret"),
            "{d}"
        );
    }
    let r = call(
        &client,
        "notes__read_note",
        json!({"path": "acme/docs/nothing/../../../outside/secret.txt"}),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    call_denied(
        &client,
        "notes__save_note",
        json!({"path": "acme/docs/x", "text": "pwned"}),
    )
    .await;
    assert!(!cg.root.join("acme/docs/x").exists());

    // A template value cannot climb into another project.
    call_ok(&client, "notes__ticket", json!({"project": "ops", "id": 7})).await;
    call_denied(&client, "notes__ticket", json!({"project": "hr", "id": 7})).await;
    let r = call(
        &client,
        "notes__ticket",
        json!({"project": "ops/../hr", "id": 7}),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let calls = tool_calls(&log);
    assert_eq!(
        calls.len(),
        2,
        "only the granted calls reached the upstream: {calls:?}"
    );
    assert_eq!(calls[1]["project"], "ops");

    // The upstream's environment is its config's, PATH and HOME: no token, no secret.
    let r = call_ok(&client, "notes__environment", json!({})).await;
    let env: Value = serde_json::from_str(&text(&r)).expect("the environment as JSON");
    assert_eq!(env["FIXED"], "from-config", "{env}");
    assert!(env.get("PATH").is_some(), "{env}");
    for (k, v) in env.as_object().unwrap() {
        assert!(
            !k.starts_with("CAPGATE") && !v.as_str().unwrap_or("").contains("hunter2"),
            "capgate's environment leaked into the upstream: {k}={v}"
        );
        assert!(
            !v.as_str().unwrap_or("").contains(&task),
            "the caller's token leaked"
        );
    }

    // The upstream's own failure is the caller's isError, naming the upstream.
    let r = call(&client, "notes__broken", json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("upstream `notes`"), "{r:?}");

    // A call past the timeout is an isError, not a hang.
    let r = call(&client, "notes__slow", json!({"seconds": 30}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("no answer within"), "{r:?}");

    // A crashed upstream is restarted, and serves again.
    let before = pids(&log);
    let r = call(&client, "notes__crash", json!({})).await.unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    wait_until("the upstream to restart", Duration::from_secs(30), || {
        pids(&log).len() > before.len()
    });
    let r = call_ok(
        &client,
        "notes__read_note",
        json!({"path": "acme/docs/notes.md"}),
    )
    .await;
    assert!(text(&r).contains("needle"), "{r:?}");

    // No upstream outlives capgate.
    drop(client);
    let all = pids(&log);
    assert!(all.iter().any(|p| alive(*p)), "the current upstream runs");
    server.stop();
    wait_until("every upstream to exit", Duration::from_secs(15), || {
        all.iter().all(|p| !alive(*p))
    });
}

/// Rug-pull protection: a definition is pinned at first sight; when the restarted upstream
/// lists `read_note` with another description, the tool is hidden and refused
/// (`definition_changed`, audited, never sent upstream) until an operator pins it, and a
/// capgate that started on the old definition serves the new one only after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_definition_is_held_back_until_pinned() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let rug = scratch.path().join("rugpull");
    let extra = format!(", UPSTREAM_RUGPULL = {:?}", rug.display().to_string());
    // Two denied attempts would revoke the task; the refusals of a held-back tool are the
    // upstream's doing and do not count, so the task lives through all of them.
    let cg = Capgate::with_config(&format!(
        "{}\n[anomaly]\nrevoke_after_denials = 2\nrevoke_after_out_of_intent = 0\nwindow = \"10m\"\n",
        stdio_upstream(&log, &extra)
    ));
    let agent = cg.mint("agent-1", "acme", TOOLS, &[]);
    let (task_id, task) = cg.task(
        &agent,
        &["notes__read_note", "notes__crash"],
        &["notes__read_note=acme/docs/"],
    );
    let read = json!({"path": "acme/docs/readme.txt"});
    let reads = || {
        tool_calls(&log)
            .iter()
            .filter(|c| c["tool"] == "read_note")
            .count()
    };

    let server = cg.serve_http();
    let client = server.client(&task).await;
    call_ok(&client, "notes__read_note", read.clone()).await;
    let listed = cg.stdout_of(&["upstream", "list"]);
    assert!(
        listed.contains("read_note") && listed.contains("pinned") && !listed.contains("CHANGED"),
        "{listed}"
    );

    // The upstream comes back with a new description for the same tool.
    std::fs::write(&rug, "").unwrap();
    let before = pids(&log);
    let _ = call(&client, "notes__crash", json!({})).await;
    wait_until("the upstream to restart", Duration::from_secs(30), || {
        pids(&log).len() > before.len()
    });
    let mut d = Value::Null;
    for _ in 0..100 {
        let r = call(&client, "notes__read_note", read.clone())
            .await
            .unwrap();
        if r.is_error == Some(true) && denial(&r)["reason"] == "definition_changed" {
            d = denial(&r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(d["reason"], "definition_changed", "{d}");
    assert!(message(&d).contains("capgate upstream pin notes"), "{d}");
    assert_eq!(reads(), 1, "no call reached the changed tool");
    let names = tool_names(&client).await;
    assert!(
        !names.contains(&"notes__read_note".to_owned()),
        "hidden: {names:?}"
    );
    assert!(names.contains(&"notes__crash".to_owned()), "{names:?}");
    let audited = cg.audited_calls(&task_id);
    assert!(
        audited.iter().any(|l| l["decision"] == "deny"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("definition_changed"))),
        "the refusal is audited: {audited:?}"
    );
    let listed = cg.stdout_of(&["upstream", "list"]);
    assert!(listed.contains("CHANGED"), "{listed}");
    let json: Value = serde_json::from_str(&cg.stdout_of(&["upstream", "list", "--json"])).unwrap();
    let pin = json["upstreams"][0]["pins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == "read_note")
        .unwrap()
        .clone();
    assert_ne!(pin["pinned_digest"], pin["seen_digest"], "{pin}");
    assert!(
        pin["seen_definition"].as_str().unwrap().contains("id_rsa"),
        "the operator can read what changed: {pin}"
    );

    // Not an upstream capgate knows; not a tool it has seen.
    let err = cg.stderr_of_failure(&["upstream", "pin", "nope"]);
    assert!(err.contains("no upstream `nope`"), "{err}");
    let err = cg.stderr_of_failure(&["upstream", "pin", "notes", "--tool", "nope"]);
    assert!(err.contains("no tool `nope`"), "{err}");

    // Pinned: this capgate still hosts the old definition, so it keeps refusing, and says why.
    let out = cg.stdout_of(&["upstream", "pin", "notes"]);
    assert!(out.contains("pinned `read_note`"), "{out}");
    let mut d = Value::Null;
    for _ in 0..50 {
        let r = call(&client, "notes__read_note", read.clone())
            .await
            .unwrap();
        d = denial(&r);
        if message(&d).contains("restarts") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(message(&d).contains("restarts"), "{d}");
    assert_eq!(reads(), 1, "still nothing reached it");
    let out = cg.stdout_of(&["upstream", "pin", "notes"]);
    assert!(out.contains("nothing to pin"), "{out}");
    drop(client);
    server.stop();

    // A capgate started now hosts and serves the accepted definition.
    let server = cg.serve_http();
    let client = server.client(&task).await;
    let listed = client.list_all_tools().await.unwrap();
    let tool = listed
        .iter()
        .find(|t| t.name == "notes__read_note")
        .expect("listed again");
    assert!(tool.description.as_deref().unwrap_or("").contains("id_rsa"));
    call_ok(&client, "notes__read_note", read).await;
    assert_eq!(reads(), 2);
    drop(client);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_capgate_takes_its_upstream_with_it() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    // This upstream outlives its input and ignores SIGTERM: only the parent-death signal
    // capgate asked the kernel for can stop it once capgate is gone.
    let cg = Capgate::with_config(&stdio_upstream(&log, r#", UPSTREAM_LINGER = "1""#));
    let server = cg.serve_http();
    let child = *pids(&log).last().expect("serve started the upstream");
    assert!(alive(child));
    server.kill9();
    wait_until(
        "the orphaned upstream to die",
        Duration::from_secs(15),
        || !alive(child),
    );
}

#[test]
fn the_cli_knows_hosted_names_and_refuses_others() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let cg = Capgate::with_config(&stdio_upstream(&log, ""));
    cg.mint(
        "a",
        "acme",
        &["notes__read_note"],
        &["notes__read_note=acme/"],
    );
    for bad in ["notes__nope", "other__read_note", "notes_read_note"] {
        let err = cg.stderr_of_failure(&[
            "token", "mint", "--agent", "a", "--tenant", "acme", "--tool", bad,
        ]);
        assert!(err.contains(bad), "{bad}: {err}");
    }
    assert!(pids(&log).is_empty(), "the CLI must not start an upstream");
}

/// With `expose = "all"`, the names an upstream hosts beyond the declared ones are known to
/// the CLI from the pins a running capgate wrote: refused before the first `serve`, accepted
/// after it.
#[test]
fn the_cli_learns_exposed_names_from_the_pins() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let table = stdio_upstream(&log, "").replacen(
        "timeout = \"5s\"",
        "timeout = \"5s\"\nexpose = \"all\"",
        1,
    );
    // Only read_note stays declared: the others come from the listing.
    let table = table[..table.find("[upstream.tools.save_note]").unwrap()].to_owned();
    let cg = Capgate::with_config(&table);
    let mint = [
        "token", "mint", "--agent", "a", "--tenant", "acme", "--tool",
    ];
    let err = cg.stderr_of_failure(&[&mint[..], &["notes__ticket"]].concat());
    assert!(err.contains("notes__ticket"), "{err}");
    cg.serve_http().stop();
    cg.stdout_of(&[&mint[..], &["notes__ticket"]].concat());
    let listed = cg.stdout_of(&["upstream", "list"]);
    assert!(listed.contains("notes__ticket"), "{listed}");
    let err = cg.stderr_of_failure(&[&mint[..], &["notes__nope"]].concat());
    assert!(err.contains("notes__nope"), "{err}");
}

#[test]
fn a_bad_upstream_table_names_its_key() {
    let cg = Capgate::new();
    cg.append_config("[[upstream]]\nname = \"Bad Name\"\ncommand = \"x\"\n");
    let err = cg.stderr_of_failure(&[
        "token", "mint", "--agent", "a", "--tenant", "acme", "--tool", "fs_read",
    ]);
    assert!(err.contains("upstream[0].name"), "{err}");
}

struct HttpUpstream {
    child: Child,
    url: String,
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_upstream(log: &Path) -> HttpUpstream {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .arg(server_script())
        .args(["http", &port.to_string()])
        .env("PYTHONPATH", python_path())
        .env("UPSTREAM_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the HTTP upstream to listen",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    HttpUpstream {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_upstream_gets_capgates_credential_never_the_callers() {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let upstream = http_upstream(&log);
    let cg = Capgate::with_config(&format!(
        r#"
[[upstream]]
name = "remote"
url = "{url}"
headers = {{ Authorization = "Bearer ${{REMOTE_TOKEN}}" }}

[upstream.tools.ticket]
operation = "read"
resource = {{ template = "ticket:{{project}}/{{id}}" }}

[upstream.tools.read_note]
operation = "read"
resource = {{ path = "path" }}
"#,
        url = upstream.url
    ));
    let agent = cg.mint(
        "agent-1",
        "acme",
        &["remote__ticket", "remote__read_note"],
        &[],
    );
    let (_, task) = cg.task(
        &agent,
        &["remote__ticket", "remote__read_note"],
        &["remote__ticket=ticket:ops/", "remote__read_note=acme/"],
    );
    let server = cg.serve_http_with(&[], &[("REMOTE_TOKEN", "capgates-own-credential")]);
    let client = server.client(&task).await;

    let r = call_ok(
        &client,
        "remote__ticket",
        json!({"project": "ops", "id": 3}),
    )
    .await;
    assert!(text(&r).contains("ticket ops/3"), "{r:?}");
    call_denied(&client, "remote__ticket", json!({"project": "hr", "id": 3})).await;
    call_denied(&client, "remote__read_note", json!({"path": "/etc/passwd"})).await;

    let entries = upstream_log(&log);
    let calls: Vec<&Value> = entries.iter().filter(|v| v.get("tool").is_some()).collect();
    assert_eq!(calls.len(), 1, "only the granted call was sent: {calls:?}");
    let requests: Vec<&Value> = entries.iter().filter(|v| v.get("http").is_some()).collect();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r["authorization"], "Bearer capgates-own-credential", "{r}");
    }
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains(&task),
        "the caller's token reached the upstream"
    );
    drop(client);
    server.stop();
}

#[test]
fn an_unset_credential_variable_stops_serve_naming_it() {
    let cg = Capgate::with_config(
        r#"
[[upstream]]
name = "remote"
url = "http://127.0.0.1:9/mcp"
headers = { Authorization = "Bearer ${CAPGATE_TEST_UNSET_VARIABLE}" }
"#,
    );
    let out = cg
        .cmd()
        .args(["serve", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAPGATE_TEST_UNSET_VARIABLE"), "{err}");
    assert!(err.contains("headers.Authorization"), "{err}");
}

/// An npm MCP server (`server-filesystem`, `server-everything`), installed once with npm into
/// `target/upstream-node`; the path of its entry point (run with `node` itself, not `npx`, so
/// the process capgate supervises is the server).
fn npm_server(package: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/upstream-node");
    let entry = dir.join(format!(
        "node_modules/@modelcontextprotocol/{package}/dist/index.js"
    ));
    let _ = std::fs::create_dir_all(&dir);
    let f = std::fs::File::create(dir.with_extension("lock")).unwrap();
    f.lock().unwrap();
    if !entry.exists() {
        let out = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("@modelcontextprotocol/{package}@2026.8.31"))
            .output()
            .expect("npm is needed by this test");
        assert!(
            out.status.success(),
            "npm install @modelcontextprotocol/{package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    entry
}

#[tokio::test(flavor = "multi_thread")]
async fn the_npm_filesystem_server_behind_capgate_stays_in_its_grant() {
    let entry = npm_server("server-filesystem");
    // The upstream itself may reach the whole workspace (`.` in its working directory); the
    // task narrows it to acme/docs/.
    let cg = Capgate::with_config(&format!(
        r#"
[[upstream]]
name = "files"
command = "node"
args = [{entry:?}, "."]
cwd = "workspace"

[upstream.tools.read_text_file]
operation = "read"
resource = {{ path = "path" }}

[upstream.tools.write_file]
operation = "write"
resource = {{ path = "path" }}
"#,
        entry = entry.display().to_string()
    ));
    std::os::unix::fs::symlink(
        cg.outside.join("secret.txt"),
        cg.root.join("acme/docs/link"),
    )
    .unwrap();
    let agent = cg.mint(
        "agent-1",
        "acme",
        &["files__read_text_file", "files__write_file"],
        &[],
    );
    let (_, task) = cg.task(
        &agent,
        &["files__read_text_file"],
        &["files__read_text_file=acme/docs/"],
    );
    let server = cg.serve_http();
    let client = server.client(&task).await;
    let before = cg.outside_snapshot();
    let workspace = cg.workspace_snapshot();

    let r = call_ok(
        &client,
        "files__read_text_file",
        json!({"path": "acme/docs/readme.txt"}),
    )
    .await;
    assert!(text(&r).contains("acme readme"), "{r:?}");
    for path in [
        "globex/plans/secret-plan.txt",
        "acme/docs/../../globex/plans/secret-plan.txt",
        "acme/docs/link",
    ] {
        let d = call_denied(&client, "files__read_text_file", json!({ "path": path })).await;
        let said = d["text"].as_str().unwrap_or("");
        assert!(
            !said.contains("globex plan") && !said.contains("outside secret"),
            "{d}"
        );
    }
    call_denied(
        &client,
        "files__write_file",
        json!({"path": "acme/docs/readme.txt", "content": "pwned"}),
    )
    .await;
    assert_eq!(cg.workspace_snapshot(), workspace, "nothing was written");
    assert_eq!(cg.outside_snapshot(), before);
    drop(client);
    server.stop();
}

/// A client that keeps the progress notifications it receives.
#[derive(Clone, Default)]
struct ProgressSeen(std::sync::Arc<std::sync::Mutex<Vec<Step>>>);

/// One progress notification: its value and message.
type Step = (f64, Option<String>);

impl rmcp::ClientHandler for ProgressSeen {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0
            .lock()
            .unwrap()
            .push((params.progress, params.message));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_comes_back_and_cancellation_goes_up() {
    use rmcp::ServiceExt;
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let cg = Capgate::with_config(&stdio_upstream(&log, ""));
    let agent = cg.mint("agent-1", "acme", &["notes__steps", "notes__wait"], &[]);
    let (_, task) = cg.task(&agent, &["notes__steps", "notes__wait"], &[]);
    let server = cg.serve_http();
    let seen = ProgressSeen::default();
    let client = seen.clone().serve(server.transport(&task)).await.unwrap();

    let r = call_ok(&client, "notes__steps", json!({"n": 3})).await;
    assert!(text(&r).contains("done"), "{r:?}");
    wait_until(
        "three progress notifications",
        Duration::from_secs(10),
        || seen.0.lock().unwrap().len() >= 3,
    );
    let got = seen.0.lock().unwrap().clone();
    assert_eq!(
        got.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0],
        "{got:?}"
    );
    assert_eq!(got[2].1.as_deref(), Some("step 3"));

    // The client gives up (rmcp sends notifications/cancelled when the call is dropped);
    // capgate passes the cancellation to the upstream, whose tool stops.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(1500),
        call(&client, "notes__wait", json!({"seconds": 60})),
    )
    .await;
    assert!(gave_up.is_err(), "the call should still be running");
    wait_until(
        "the upstream to see the cancellation",
        Duration::from_secs(15),
        || {
            upstream_log(&log)
                .iter()
                .any(|v| v.get("cancelled").is_some())
        },
    );
    drop(client);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_npm_everything_server_hosts_only_what_is_declared() {
    let entry = npm_server("server-everything");
    let cg = Capgate::with_config(&format!(
        r#"
[[upstream]]
name = "every"
command = "node"
args = [{entry:?}, "stdio"]
env = {{ GIVEN = "by-config" }}

[upstream.tools.echo]
operation = "read"

[upstream.tools.get-env]
operation = "read"
"#,
        entry = entry.display().to_string()
    ));
    let agent = cg.mint("agent-1", "acme", &["every__echo", "every__get-env"], &[]);
    let (_, only_echo) = cg.task(&agent, &["every__echo"], &[]);
    let (_, env_task) = cg.task(&agent, &["every__get-env"], &[]);
    let server = cg.serve_http_with(&[], &[("CAPGATE_SECRET_OF_MY_OWN", "hunter2")]);

    let client = server.client(&only_echo).await;
    let r = call_ok(&client, "every__echo", json!({"message": "hello upstream"})).await;
    assert!(text(&r).contains("hello upstream"), "{r:?}");
    call_denied(&client, "every__get-env", json!({})).await;
    // Undeclared tools of the upstream are not hosted at all.
    let e = call(&client, "every__get-sum", json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(rpc_code(&e), -32602, "{e:?}");
    drop(client);

    let client = server.client(&env_task).await;
    let r = call_ok(&client, "every__get-env", json!({})).await;
    let env: Value = serde_json::from_str(&text(&r)).unwrap();
    assert_eq!(env["GIVEN"], "by-config", "{env}");
    for (k, v) in env.as_object().unwrap() {
        assert!(
            !k.starts_with("CAPGATE") && !v.as_str().unwrap_or("").contains("hunter2"),
            "capgate's environment leaked into the upstream: {k}={v}"
        );
        assert!(!v.as_str().unwrap_or("").contains(&env_task));
    }
    drop(client);
    server.stop();
}

/// What reached the upstream besides tool calls: resource reads and prompt fetches.
fn content_requests(log: &Path) -> Vec<Value> {
    upstream_log(log)
        .into_iter()
        .filter(|v| v.get("resource").is_some() || v.get("prompt").is_some())
        .collect()
}

/// An upstream's resources and prompts are guarded like its tools: authorized as the
/// pseudo-tools `notes__resources` (on the URI) and `notes__prompts` (on `prompt:<name>`),
/// listed only as far as the task could read them, and a refused read or fetch never reaches
/// the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_resources_and_prompts_answer_only_what_the_task_grants() {
    use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams, ResourceContents};

    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let cg = Capgate::with_config(&stdio_upstream(&log, ""));
    // The CLI knows the pseudo-tools from the config alone.
    let agent = cg.mint(
        "agent-1",
        "acme",
        &["notes__resources", "notes__prompts", "notes__read_note"],
        &[],
    );
    let (task_id, task) = cg.task(
        &agent,
        &["notes__resources", "notes__prompts"],
        &[
            "notes__resources=notes://acme/",
            "notes__prompts=prompt:summarize",
        ],
    );
    let server = cg.serve_http_with(&[], &[]);
    let client = server.client(&task).await;

    // Lists show only what the task could read; the pseudo-tools are not tools.
    let listed: Vec<String> = client
        .list_all_resources()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.uri.clone())
        .collect();
    assert_eq!(listed, vec!["notes://acme/readme".to_owned()], "{listed:?}");
    let templates = client.list_all_resource_templates().await.unwrap();
    assert!(
        templates.is_empty(),
        "no grant covers `notes://{{tenant}}/`: {templates:?}"
    );
    let prompts: Vec<String> = client
        .list_all_prompts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(prompts, vec!["notes__summarize".to_owned()], "{prompts:?}");
    let names = tool_names(&client).await;
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("__resources") || n.ends_with("__prompts")),
        "{names:?}"
    );

    // Granted: the upstream's answer.
    let read = client
        .read_resource(ReadResourceRequestParams::new("notes://acme/readme"))
        .await
        .expect("a granted read");
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("{read:?}")
    };
    assert_eq!(text, "acme resource text");
    let mut params = GetPromptRequestParams::new("notes__summarize");
    params.arguments = Some(args(json!({"topic": "the roadmap"})));
    let got = client.get_prompt(params).await.expect("a granted prompt");
    assert!(format!("{got:?}").contains("the roadmap"), "{got:?}");
    assert_eq!(content_requests(&log).len(), 2, "{:?}", upstream_log(&log));

    // Refused, and never sent: another tenant's resource, a template instance outside the
    // grant, a dot-segment walk out of the granted prefix, an ungranted prompt.
    for uri in [
        "notes://globex/plan",
        "notes://globex/ticket/7",
        "notes://acme/../globex/plan",
        "notes://acme/%2e%2e/globex/plan",
    ] {
        let e = client
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .expect_err(uri);
        let said = format!("{e:?}");
        assert!(!said.contains("globex plan text"), "{said}");
    }
    let e = client
        .get_prompt(GetPromptRequestParams::new("notes__exfiltrate"))
        .await
        .expect_err("an ungranted prompt");
    assert!(format!("{e:?}").contains("prompt:exfiltrate"), "{e:?}");
    // A tools/call cannot reach a pseudo-tool around resources/read.
    let r = call(
        &client,
        "notes__resources",
        json!({"uri": "notes://globex/plan"}),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        content_requests(&log).len(),
        2,
        "only the granted read and fetch reached the upstream: {:?}",
        upstream_log(&log)
    );

    // Every decision is audited under the pseudo-tool, with the URI or prompt as resource.
    let audited = cg.audited_calls(&task_id);
    let on = |tool: &str, resource: &str, decision: &str| {
        audited
            .iter()
            .any(|l| l["tool"] == tool && l["resource"] == resource && l["decision"] == decision)
    };
    assert!(
        on("notes__resources", "notes://acme/readme", "allow"),
        "{audited:#?}"
    );
    assert!(
        on("notes__resources", "notes://globex/plan", "deny"),
        "{audited:#?}"
    );
    assert!(
        on("notes__prompts", "prompt:summarize", "allow"),
        "{audited:#?}"
    );
    assert!(
        on("notes__prompts", "prompt:exfiltrate", "deny"),
        "{audited:#?}"
    );
    drop(client);
    server.stop();

    // The same over stdio: capgate as the client's child, the upstream as capgate's.
    let stdio = cg.stdio_client(Some(&task)).await;
    let read = stdio
        .read_resource(ReadResourceRequestParams::new("notes://acme/readme"))
        .await
        .expect("a granted read over stdio");
    assert!(
        format!("{read:?}").contains("acme resource text"),
        "{read:?}"
    );
    let before = content_requests(&log).len();
    let e = stdio
        .read_resource(ReadResourceRequestParams::new("notes://globex/plan"))
        .await
        .expect_err("another tenant's resource over stdio");
    assert_eq!(rpc_code(&e), -32003, "{e:?}");
    assert_eq!(
        content_requests(&log).len(),
        before,
        "the refused read was never sent"
    );
    drop(stdio);
}

/// The npm everything server over streamable HTTP: its declared tool, one folder of its
/// resources and one of its prompts, each granted separately and refused past the grant.
#[tokio::test(flavor = "multi_thread")]
async fn the_npm_everything_server_over_http_serves_tools_resources_and_prompts() {
    use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams};

    let entry = npm_server("server-everything");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("node")
        .arg(&entry)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _upstream = HttpUpstream {
        child,
        url: String::new(),
    };
    wait_until(
        "the everything server to listen",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let cg = Capgate::with_config(&format!(
        r#"
[[upstream]]
name = "every"
url = "http://127.0.0.1:{port}/mcp"

[upstream.tools.echo]
operation = "read"
"#
    ));
    let agent = cg.mint(
        "agent-1",
        "acme",
        &["every__echo", "every__resources", "every__prompts"],
        &[],
    );
    let (_, task) = cg.task(
        &agent,
        &["every__echo", "every__resources", "every__prompts"],
        &[
            "every__resources=demo://resource/static/document/",
            "every__prompts=prompt:simple-prompt",
        ],
    );
    let server = cg.serve_http_with(&[], &[]);
    let client = server.client(&task).await;

    let r = call_ok(&client, "every__echo", json!({"message": "over http"})).await;
    assert!(text(&r).contains("over http"), "{r:?}");

    let listed = client.list_all_resources().await.unwrap();
    assert!(!listed.is_empty(), "the granted documents are listed");
    assert!(
        listed
            .iter()
            .all(|r| r.uri.starts_with("demo://resource/static/document/")),
        "{listed:?}"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new(listed[0].uri.clone()))
        .await
        .expect("a granted read");
    assert!(!read.contents.is_empty(), "{read:?}");
    let e = client
        .read_resource(ReadResourceRequestParams::new(
            "demo://resource/dynamic/text/1",
        ))
        .await
        .expect_err("a template instance outside the grant");
    assert_eq!(rpc_code(&e), -32003, "{e:?}");

    let prompts: Vec<String> = client
        .list_all_prompts()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(
        prompts,
        vec!["every__simple-prompt".to_owned()],
        "{prompts:?}"
    );
    let got = client
        .get_prompt(GetPromptRequestParams::new("every__simple-prompt"))
        .await
        .expect("a granted prompt");
    assert!(!got.messages.is_empty(), "{got:?}");
    client
        .get_prompt(GetPromptRequestParams::new("every__args-prompt"))
        .await
        .expect_err("an ungranted prompt");
    drop(client);
    server.stop();
}

/// A client that counts the `notifications/resources/list_changed` it hears.
#[derive(Clone, Default)]
struct Listening(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl rmcp::ClientHandler for Listening {
    async fn on_resource_list_changed(
        &self,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An upstream that publishes a resource at run time and says so: capgate lists it again,
/// tells its own clients, and the new resource is listed and readable within the grant.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstreams_list_changed_is_followed_and_passed_on() {
    use rmcp::ServiceExt;
    use rmcp::model::ReadResourceRequestParams;
    use std::sync::atomic::Ordering;

    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("upstream.log");
    let cg = Capgate::with_config(&stdio_upstream(&log, ""));
    let agent = cg.mint(
        "agent-1",
        "acme",
        &["notes__resources", "notes__publish"],
        &[],
    );
    let (_, task) = cg.task(
        &agent,
        &["notes__resources", "notes__publish"],
        &["notes__resources=notes://acme/"],
    );
    let server = cg.serve_http_with(&[], &[]);
    let heard = Listening::default();
    let client = heard
        .clone()
        .serve(server.transport(&task))
        .await
        .expect("initialize");
    let uris = |c: &rmcp::service::RunningService<rmcp::RoleClient, Listening>| {
        let c = c.peer().clone();
        async move {
            c.list_all_resources()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.uri)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(uris(&client).await, vec!["notes://acme/readme".to_owned()]);

    let r = call_ok(&client, "notes__publish", json!({})).await;
    assert!(text(&r).contains("published"), "{r:?}");
    wait_until(
        "capgate to pass the list change on",
        Duration::from_secs(15),
        || heard.0.load(Ordering::SeqCst) > 0,
    );
    let listed = uris(&client).await;
    assert!(
        listed.contains(&"notes://acme/new".to_owned()),
        "{listed:?}"
    );
    let read = client
        .read_resource(ReadResourceRequestParams::new("notes://acme/new"))
        .await
        .expect("the new resource is readable within the grant");
    assert!(
        format!("{read:?}").contains("freshly published"),
        "{read:?}"
    );
    drop(client);
    server.stop();
}

/// A client with a user and a model: it answers elicitation and sampling, and records what it
/// was asked.
#[derive(Clone, Default)]
struct Answering {
    elicited: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    sampled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[allow(deprecated)]
impl rmcp::ClientHandler for Answering {
    async fn create_elicitation(
        &self,
        request: rmcp::model::ElicitRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        if let rmcp::model::ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.elicited.lock().unwrap().push(message.clone());
        }
        Ok(
            rmcp::model::ElicitResult::new(rmcp::model::ElicitationAction::Accept)
                .with_content(json!({"answer": "blue"})),
        )
    }

    async fn create_message(
        &self,
        _params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<rmcp::RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        self.sampled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(rmcp::ErrorData::internal_error(
            "this test's model must never be asked",
            None,
        ))
    }

    fn get_info(&self) -> rmcp::model::ClientConfig {
        rmcp::model::ClientConfig::new(
            rmcp::model::ClientCapabilities::builder()
                .enable_elicitation()
                .enable_sampling()
                .build(),
            rmcp::model::Implementation::new("answering-client", "1.0.0"),
        )
    }
}

/// What an upstream asks of the client side goes to the calling client only for what its
/// config's `allow` names (here elicitation); sampling is refused without reaching the client's
/// model; without `allow`, elicitation is refused too and the client's user is never asked.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_asks_the_calling_client_only_what_its_config_allows() {
    let ask = "\n[upstream.tools.ask]\noperation = \"read\"\n";
    for allowed in [true, false] {
        let scratch = tempfile::tempdir().unwrap();
        let log = scratch.path().join("upstream.log");
        let mut config = stdio_upstream(&log, "") + ask;
        if allowed {
            config = config.replacen(
                "timeout = \"5s\"",
                "timeout = \"30s\"\nallow = [\"elicitation\"]",
                1,
            );
        }
        let cg = Capgate::with_config(&config);
        let agent = cg.mint("agent-1", "acme", &["notes__ask", "notes__wait"], &[]);
        let (_, task) = cg.task(&agent, &["notes__ask", "notes__wait"], &[]);
        let human = Answering::default();
        let client = rmcp::ServiceExt::serve(human.clone(), cg.stdio_transport(Some(&task), &[]))
            .await
            .expect("initialize");

        let r = call_ok(&client, "notes__ask", json!({"question": "Which colour?"})).await;
        let answer = text(&r);
        let elicited = human.elicited.lock().unwrap().clone();
        if allowed {
            assert!(answer.contains("elicitation accept: blue"), "{answer}");
            assert_eq!(elicited, vec!["Which colour?".to_owned()]);
        } else {
            assert!(
                answer.contains("elicitation refused: capgate does not grant elicitation"),
                "{answer}"
            );
            assert!(elicited.is_empty(), "the user was asked: {elicited:?}");
        }
        assert!(
            answer.contains("sampling refused: capgate does not grant sampling"),
            "{answer}"
        );
        assert_eq!(
            human.sampled.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the client's model was asked"
        );
        // The upstream got the call once, and what came back is what it logged.
        assert_eq!(tool_calls(&log).len(), 1);

        if allowed {
            // With another call in flight on the same upstream, whose question this is cannot be
            // told: refused, and the user is not asked again.
            // It outlasts the rest of the test (and stops with capgate), so a loaded machine
            // cannot end it before the second question is asked.
            let slow = {
                let peer = client.peer().clone();
                tokio::spawn(
                    async move { call(&peer, "notes__wait", json!({"seconds": 25})).await },
                )
            };
            wait_until(
                "the slow call to reach the upstream",
                Duration::from_secs(10),
                || tool_calls(&log).iter().any(|c| c["tool"] == "wait"),
            );
            let r = call_ok(&client, "notes__ask", json!({"question": "And now?"})).await;
            let answer = text(&r);
            assert!(
                answer.contains("elicitation refused")
                    && answer.contains("2 requests are in flight"),
                "{answer}"
            );
            assert_eq!(human.elicited.lock().unwrap().len(), 1, "asked again");
            slow.abort();
        }
        drop(client);
    }
}
