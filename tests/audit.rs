//! The audit log against the real binary: it survives `kill -9` mid-stream with every complete
//! line parseable and every answered call recorded; when it cannot be written, calls are refused
//! before the tool runs; and `capgate task show` reads it back as intent beside action.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use capgate_testkit::*;
use serde_json::{Value, json};

/// An agent of `acme` called `name`, and a task of it that may read and write all of `acme/`:
/// (agent token, task id, task token).
fn read_write_task(cg: &Capgate, name: &str) -> (String, String, String) {
    let tools = ["fs_read", "fs_write"];
    let agent = cg.mint(name, "acme", &tools, &[]);
    let (id, token) = cg.task(&agent, &tools, &["fs_read=acme/", "fs_write=acme/"]);
    (agent, id, token)
}

/// SIGKILL while four clients stream calls: the log's complete lines all parse, and each call a
/// client got an answer for is in it (the line is written before the answer is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_complete_audit_line_parses() {
    let cg = Capgate::new();
    let (_agent, task_id, token) = read_write_task(&cg, "agent-kill");
    let server = cg.serve_http();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let client = server.client(&token).await;
        let answered = Arc::clone(&answered);
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let r = if i % 2 == 0 {
                    call(
                        &client,
                        "fs_write",
                        json!({"path": format!("acme/out/w{w}.txt"), "content": "line\n", "append": true}),
                    )
                    .await
                } else {
                    call(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await
                };
                match r {
                    Ok(r) => {
                        assert_eq!(r.is_error, Some(false), "{r:?}");
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    // The server is gone (when the client notices at all).
                    Err(_) => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < 60 {
        assert!(Instant::now() < deadline, "the calls did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Calls are in flight on every client at this moment.
    server.kill9();
    // rmcp's HTTP client keeps retrying a vanished server, so the clients are stopped here; no
    // call can be answered after the kill, so the count below is final.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for w in &workers {
        w.abort();
    }
    for w in workers {
        if let Err(e) = w.await {
            assert!(e.is_cancelled(), "a client panicked: {e}");
        }
    }
    let answered = answered.load(Ordering::SeqCst);

    let raw = std::fs::read(cg.state().join("audit.log")).unwrap();
    let text = String::from_utf8(raw).expect("the log is UTF-8");
    // Everything up to the last newline is complete lines; anything after it is torn.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut calls = 0;
    for (n, line) in complete.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} does not parse ({e}): {line}", n + 1));
        for key in ["time", "kind", "decision", "tool"] {
            assert!(v.get(key).is_some(), "line {} lacks `{key}`: {line}", n + 1);
        }
        if v["kind"] == "call" && v["task"] == task_id.as_str() {
            assert_eq!(v["decision"], "allow", "{line}");
            calls += 1;
        }
    }
    assert!(
        calls >= answered,
        "{answered} calls were answered but only {calls} are in the audit log"
    );

    // The chain holds after the kill (a torn last line is a crash, not a tamper) ...
    let verified = cg.run(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{said}");
    let torn = !text.ends_with('\n');
    assert_eq!(said.contains("torn"), torn, "{said}");
    // ... and after a restart, which cuts a torn line off and says so in the log.
    let server = cg.serve_http();
    let client = server.client(&token).await;
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    client.cancel().await.unwrap();
    assert!(server.stop().success());
    let log = cg.audit();
    assert_eq!(
        log.iter().filter(|l| l["kind"] == "recovered").count(),
        usize::from(torn),
        "a repair is recorded exactly when one was made"
    );
    let verified = cg.run(&["audit", "verify"]);
    let said = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert!(verified.status.success(), "{said}");
    assert!(
        !said.contains("torn") && !said.contains("not yet signed"),
        "{said}"
    );
}

/// `capgate audit verify` on a log the binary wrote: passes untouched, and names the line that
/// was edited, deleted or inserted (exit status 2), with the public key alone too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_names_the_line_changed_removed_or_inserted() {
    let cg = Capgate::new();
    let (_agent, _id, token) = read_write_task(&cg, "agent-verify");
    let server = cg.serve_http();
    let client = server.client(&token).await;
    for _ in 0..5 {
        call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    }
    call_denied(
        &client,
        "fs_read",
        json!({"path": "globex/plans/secret-plan.txt"}),
    )
    .await;
    client.cancel().await.unwrap();
    assert!(server.stop().success());

    let path = cg.state().join("audit.log");
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify"];
        args.extend_from_slice(extra);
        let out = cg.run(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, said) = verify(&[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.starts_with("ok: "), "{said}");
    // The security team's copy: the public key and the file, no private key.
    let public = cg.stdout_of(&["keys", "show"]);
    let public = public
        .split_whitespace()
        .find(|w| w.starts_with("ed25519/"))
        .unwrap();
    let copy = cg.base().join("copy.log");
    std::fs::write(&copy, &original).unwrap();
    let (code, said) = verify(&[copy.to_str().unwrap(), "--public-key", public]);
    assert_eq!(code, Some(0), "{said}");

    let denied = lines
        .iter()
        .position(|l| l.contains(r#""decision":"deny""#) && l.contains(r#""kind":"call""#))
        .expect("the denial is logged");
    assert!(denied + 1 < lines.len(), "a line follows the denial");
    let write = |ls: &[String]| std::fs::write(&copy, ls.join("\n") + "\n").unwrap();
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let name = format!("{}:{}", copy.display(), denied + 1);

    // Edited: the denial turned into an allow.
    let mut edited = owned.clone();
    edited[denied] = edited[denied].replace(r#""decision":"deny""#, r#""decision":"allow""#);
    write(&edited);
    let (code, said) = verify(&[copy.to_str().unwrap(), "--public-key", public]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&name) && said.contains("changed"), "{said}");

    // Deleted: the denial removed; the line now in its place is named.
    let mut deleted = owned.clone();
    deleted.remove(denied);
    write(&deleted);
    let (code, said) = verify(&[copy.to_str().unwrap(), "--public-key", public]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&name) && said.contains("removed"), "{said}");

    // Inserted: a copy of an allow put before the denial.
    let mut inserted = owned.clone();
    inserted.insert(denied, owned[denied - 1].clone());
    write(&inserted);
    let (code, said) = verify(&[copy.to_str().unwrap(), "--public-key", public]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains(&name) && said.contains("inserted"), "{said}");

    // Against another root key, the first checkpoint does not verify.
    let other = Capgate::new();
    let other_public = other.stdout_of(&["keys", "show"]);
    let other_public = other_public
        .split_whitespace()
        .find(|w| w.starts_with("ed25519/"))
        .unwrap();
    std::fs::write(&copy, &original).unwrap();
    let (code, said) = verify(&[copy.to_str().unwrap(), "--public-key", other_public]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("signature"), "{said}");
}

/// `[audit] path` on a full device: the call is denied with `audit_unavailable`, and the tool
/// did not run (the file it would have written does not exist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_log_refuses_calls_before_they_run() {
    let cg = Capgate::new();
    let (agent, _id, token) = read_write_task(&cg, "agent-full");
    // From here on the audit log cannot be written.
    cg.append_config("[audit]\npath = \"/dev/full\"\n");
    // An issuance that cannot be recorded does not stand: no token is handed out, and the task
    // that was stored is ended at once.
    let refused = cg
        .begin_cli(&agent, "unrecorded", &["fs_read"], &["fs_read=acme/"], &[])
        .unwrap_err();
    assert!(refused.contains("audit log"), "{refused}");
    let tasks = cg.task_list();
    let unrecorded: Vec<&str> = tasks.lines().filter(|l| l.contains("unrecorded")).collect();
    assert_eq!(unrecorded.len(), 1, "{tasks}");
    assert!(unrecorded[0].contains("revoked"), "{tasks}");
    let server = cg.serve_http();
    let client = server.client(&token).await;

    let write = json!({"path": "acme/out/new.txt", "content": "must not land"});
    let d = call_denied(&client, "fs_write", write).await;
    assert_eq!(d["reason"], "audit_unavailable", "{d}");
    let told = d["text"].as_str().unwrap();
    assert!(told.contains("audit log"), "the agent is told why: {told}");
    assert!(
        !cg.root.join("acme/out/new.txt").exists(),
        "fs_write did not run"
    );

    let d = call_denied(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    assert_eq!(d["reason"], "audit_unavailable");
    let told = d["text"].as_str().unwrap();
    assert!(!told.contains("acme readme"), "fs_read did not run: {told}");
    client.cancel().await.unwrap();
}

/// The last four columns of a `task show` row: used, calls, denied, beyond.
fn counts(table: &str, tool: &str) -> Vec<String> {
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(tool))
        .unwrap_or_else(|| panic!("no row for `{tool}` in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    cells[cells.len() - 4..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// `capgate task show` after a real run: requested, granted, used, unused and denied, with
/// counts and the last denials; `--json` carries the same numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_show_puts_intent_beside_action() {
    let cg = Capgate::new();
    let agent = cg.mint(
        "agent-show",
        "acme",
        &["fs_read", "fs_list", "fs_write"],
        &[],
    );
    let v = cg
        .begin_cli(
            &agent,
            "read the acme docs",
            &["fs_read", "fs_list"],
            &["fs_read=acme/docs/", "fs_list=acme/"],
            &[],
        )
        .expect("task begin");
    let task_id = v["task_id"].as_str().unwrap().to_owned();
    let token = v["token"].as_str().unwrap().to_owned();

    let server = cg.serve_http();
    let client = server.client(&token).await;
    for path in ["acme/docs/readme.txt", "acme/docs/notes.md"] {
        call_ok(&client, "fs_read", json!({"path": path})).await;
    }
    // One call outside the grant, one of a tool never asked for.
    let secret = json!({"path": "globex/plans/secret-plan.txt"});
    call_denied(&client, "fs_read", secret).await;
    let report = json!({"path": "acme/out/report.txt", "content": "x"});
    call_denied(&client, "fs_write", report).await;
    client.cancel().await.unwrap();

    let shown = cg.stdout_of(&["task", "show", &task_id]);
    assert!(
        shown.contains(&format!("task      {task_id}  [active]")),
        "{shown}"
    );
    assert!(
        shown.contains("agent     agent-show (tenant acme)"),
        "{shown}"
    );
    assert!(shown.contains("purpose   read the acme docs"), "{shown}");
    let header = shown
        .lines()
        .find(|l| l.starts_with("tool "))
        .unwrap_or_else(|| panic!("no table header:\n{shown}"));
    for col in ["requested", "granted", "used", "calls", "denied", "beyond"] {
        assert!(header.contains(col), "{header}");
    }
    // fs_read: used, three calls, the globex one denied and outside the intent.
    assert_eq!(counts(&shown, "fs_read"), ["yes", "3", "1", "1"]);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("fs_read") && l.contains("acme/docs/")),
        "requested prefix shown: {shown}"
    );
    // fs_list: granted, never used.
    assert_eq!(counts(&shown, "fs_list"), ["no", "0", "0", "0"]);
    // fs_write: neither requested nor granted, tried once.
    assert_eq!(counts(&shown, "fs_write"), ["no", "1", "1", "1"]);
    let fs_write_row = shown.lines().find(|l| l.starts_with("fs_write")).unwrap();
    assert!(
        fs_write_row.contains("(not requested)") && fs_write_row.contains("(not granted)"),
        "{fs_write_row}"
    );
    assert!(shown.contains("unused grants: fs_list"), "{shown}");
    assert!(
        shown.contains("denied attempts: 2 (last 2 shown)"),
        "{shown}"
    );
    let denials: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.starts_with("denied attempts"))
        .skip(1)
        .collect();
    assert_eq!(denials.len(), 2, "{shown}");
    assert!(denials[0].contains("fs_read") && denials[0].contains("secret-plan.txt"));
    assert!(denials[1].contains("fs_write") && denials[1].contains("report.txt"));

    let j = cg.show_task(&task_id);
    assert_eq!(j["actions"]["fs_read"]["calls"], 3);
    assert_eq!(j["actions"]["fs_read"]["allowed"], 2);
    assert_eq!(j["actions"]["fs_read"]["denied"], 1);
    assert_eq!(j["actions"]["fs_write"]["denied"], 1);
    assert_eq!(j["unused_grants"], json!(["fs_list"]));
    assert_eq!(j["denials"].as_array().unwrap().len(), 2);

    // Ended, the header says so.
    cg.stdout_of(&["task", "end", &task_id]);
    let shown = cg.stdout_of(&["task", "show", &task_id]);
    assert!(shown.contains("[ended (completed)]"), "{shown}");
    drop(server);
}
