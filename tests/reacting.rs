//! Tasks that react, against the real binary: budgets granted at issuance and counted by the
//! guard (across processes sharing the store), anomaly rules that revoke a probing task with
//! every token derived from it, and denials that say what would have been needed.
//!
//! Every refusal is checked for what did not happen as well: the file not written, the budget
//! not spent, the task not left alive.

use capgate_testkit::*;
use serde_json::{Value, json};

/// `fs_write` of `path`, which must be refused; asserts the file was not written.
async fn write_refused(cg: &Capgate, client: &Client, path: &str) -> Value {
    let d = call_denied(client, "fs_write", json!({"path": path, "content": "x"})).await;
    assert!(!cg.root.join(path).exists(), "{path}: the tool ran: {d}");
    d
}

async fn write_ok(client: &Client, path: &str) {
    call_ok(client, "fs_write", json!({"path": path, "content": "x"})).await;
}

fn writer(cg: &Capgate) -> String {
    cg.mint("writer", "acme", &["fs_read", "fs_write", "fs_list"], &[])
}

/// A budget of 3 calls admits 3 and denies the 4th with `budget_exhausted` naming the limit;
/// the count is the store's, so a second process (a new stdio session) sees the same budget
/// spent; a sub-agent's block cannot raise it and can lower it; `tools/list` stops showing what
/// the budget no longer admits.
#[tokio::test(flavor = "multi_thread")]
async fn a_budget_of_three_admits_three_calls() {
    let cg = Capgate::new();
    let agent = writer(&cg);
    let v = cg
        .begin_cli(
            &agent,
            "three writes",
            &["fs_write", "fs_list"],
            &["fs_write=acme/out/", "fs_list=acme/"],
            &[
                "--approved-by",
                "tester",
                "--budget-calls",
                "3",
                "--budget-tool",
                "fs_list=1",
            ],
        )
        .expect("task begin");
    let (id, task) = (v["task_id"].as_str().unwrap(), v["token"].as_str().unwrap());
    assert_eq!(
        cg.show_task(id)["task"]["grant"]["budget"],
        json!({"calls": 3, "per_tool": {"fs_list": 1}})
    );

    // Two calls in one process, the third in another: one budget.
    let client = cg.stdio_client(Some(task)).await;
    write_ok(&client, "acme/out/1.txt").await;
    call_ok(&client, "fs_list", json!({"path": "acme/out"})).await;
    let d = call_denied(&client, "fs_list", json!({"path": "acme/out"})).await;
    assert_eq!(d["reason"], "budget_exhausted", "{d}");
    assert_eq!(
        d["budget"],
        json!({"limit": "per_tool.fs_list", "max": 1, "used": 1})
    );
    assert_eq!(
        tool_names(&client).await,
        vec!["fs_write", "task_begin", "task_end"],
        "a tool whose budget is spent is no longer listed"
    );
    client.cancel().await.unwrap();
    let client = cg.stdio_client(Some(task)).await;
    write_ok(&client, "acme/out/2.txt").await;
    let d = write_refused(&cg, &client, "acme/out/3.txt").await;
    assert_eq!(d["reason"], "budget_exhausted", "{d}");
    assert_eq!(d["budget"], json!({"limit": "calls", "max": 3, "used": 3}));
    assert!(
        d["text"].as_str().unwrap().contains("`calls` = 3"),
        "the text names the limit: {d}"
    );
    assert_eq!(tool_names(&client).await, vec!["task_begin", "task_end"]);
    client.cancel().await.unwrap();

    // A sub-agent's block claiming a bigger budget changes nothing.
    let raised = attenuate(task, "budget_calls(1000);");
    let client = cg.stdio_client(Some(&raised)).await;
    let d = write_refused(&cg, &client, "acme/out/4.txt").await;
    assert_eq!(d["reason"], "budget_exhausted", "{d}");
    client.cancel().await.unwrap();
    let denied = cg
        .audited_calls(id)
        .into_iter()
        .filter(|l| l["decision"] == "deny")
        .count();
    assert_eq!(denied, 3, "every refusal is audited");
    // Without a tracing backend the lines still name their span and their JSON-RPC request.
    for line in cg.audited_calls(id) {
        let span = line["span_id"].as_str().unwrap_or_default();
        assert_eq!(span.len(), 16, "{line}");
        assert!(
            line["jsonrpc_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{line}"
        );
    }

    // A fresh task of 10, narrowed to 1 by the sub-agent: the lower limit holds for the
    // derived token, and a malformed budget fact admits nothing.
    let v = cg
        .begin_cli(
            &agent,
            "ten writes",
            &["fs_write"],
            &["fs_write=acme/out/"],
            &["--approved-by", "tester", "--budget-calls", "10"],
        )
        .unwrap();
    let task = v["token"].as_str().unwrap();
    let narrowed = attenuate(task, "budget_calls(1);");
    let client = cg.stdio_client(Some(&narrowed)).await;
    write_ok(&client, "acme/out/5.txt").await;
    let d = write_refused(&cg, &client, "acme/out/6.txt").await;
    assert_eq!(d["budget"]["max"], 1, "{d}");
    client.cancel().await.unwrap();
    let garbled = attenuate(task, "budget_calls(\"lots\");");
    let client = cg.stdio_client(Some(&garbled)).await;
    let d = write_refused(&cg, &client, "acme/out/7.txt").await;
    assert_eq!(d["reason"], "budget_exhausted", "{d}");
    client.cancel().await.unwrap();
}

/// Two processes racing for one budget (an HTTP server and a stdio session on the same store,
/// 12 calls each at once): exactly the budget's worth of calls runs.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_from_two_processes_spend_one_budget_exactly() {
    let cg = Capgate::new();
    let agent = writer(&cg);
    let v = cg
        .begin_cli(
            &agent,
            "seven writes",
            &["fs_write"],
            &["fs_write=acme/out/"],
            &["--approved-by", "tester", "--budget-calls", "7"],
        )
        .unwrap();
    let task = v["token"].as_str().unwrap();
    let server = cg.serve_http();
    let http = server.client(task).await;
    let stdio = cg.stdio_client(Some(task)).await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..24 {
        let client = if i % 2 == 0 { &http } else { &stdio }.peer().clone();
        calls.spawn(async move {
            let args = json!({"path": format!("acme/out/race{i}.txt"), "content": "x"});
            call(&client, "fs_write", args).await.expect("answered")
        });
    }
    let results = calls.join_all().await;
    let ran = results.iter().filter(|r| r.is_error == Some(false)).count();
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.is_error == Some(true))
        .collect();
    assert_eq!(ran, 7, "{results:#?}");
    for r in refused {
        assert_eq!(denial(r)["reason"], "budget_exhausted", "{r:?}");
    }
    let written = (0..24)
        .filter(|i| cg.root.join(format!("acme/out/race{i}.txt")).exists())
        .count();
    assert_eq!(written, 7, "exactly the admitted calls wrote");
    http.cancel().await.unwrap();
    stdio.cancel().await.unwrap();
}

/// Over HTTP the budget is part of the request body; a rate limit recovers by itself and says
/// so; bad budgets are refused before anything is issued.
#[tokio::test(flavor = "multi_thread")]
async fn budgets_over_http() {
    let cg = Capgate::new();
    let agent = writer(&cg);
    let server = cg.serve_http();
    let approval = cg.approval("bob", None);
    let body = json!({"purpose": "rate limited", "tools": ["fs_write"],
                      "resources": {"fs_write": ["acme/out/"]}, "budget": {"per_minute": 2}});
    let resp = server.post_task(&agent, Some(&approval), &body).await;
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["budget"], json!({"per_minute": 2}));
    let client = server.client(v["token"].as_str().unwrap()).await;
    write_ok(&client, "acme/out/a.txt").await;
    write_ok(&client, "acme/out/b.txt").await;
    let d = write_refused(&cg, &client, "acme/out/c.txt").await;
    assert_eq!(d["budget"]["limit"], "per_minute", "{d}");
    assert!(
        d["remedy"]["advice"].as_str().unwrap().contains("retry"),
        "{d}"
    );
    assert!(
        d["remedy"].get("task_begin").is_none(),
        "a rate needs no new task: {d}"
    );
    assert!(
        tool_names(&client).await.contains(&"fs_write".to_owned()),
        "a rate recovers on its own: the tool stays listed"
    );
    client.cancel().await.unwrap();

    for (budget, says) in [
        (json!({"calls": 0}), "between 1 and"),
        (json!({"per_tool": {"fs_read": 3}}), "not in `tools`"),
        (json!({"calls": 3, "burst": 9}), "unknown field"),
        (json!({"calls": "three"}), "invalid type"),
    ] {
        let mut b = body.clone();
        b["budget"] = budget.clone();
        let e = server.post_task_refused(&agent, &b, 400).await;
        assert!(e.to_string().contains(says), "{budget}: {e}");
    }
    assert_eq!(cg.task_list().lines().count(), 1, "nothing else was issued");
}

/// An agent that keeps trying what it was not granted is revoked at the threshold: the denial
/// that crosses it says so, the task and every token derived from it are refused from then on,
/// also after a restart, and `task show`, the audit log and the deny say which rule fired.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_denials_revoke_the_task_and_its_derived_tokens() {
    let cg = Capgate::with_config(
        "[anomaly]\nrevoke_after_denials = 3\nrevoke_after_out_of_intent = 0\nwindow = \"10m\"\n",
    );
    let agent = writer(&cg);
    let (id, task) = cg.task(&agent, &["fs_write"], &["fs_write=acme/out/"]);
    // The sub-agent works with its own derived token; the parent keeps the task token.
    let derived = attenuate(&task, "check if operation(\"write\");");
    let client = cg.stdio_client(Some(&derived)).await;
    write_ok(&client, "acme/out/fine.txt").await;
    for i in 0..2 {
        let d = write_refused(&cg, &client, &format!("acme/docs/probe{i}.txt")).await;
        assert_eq!(d["reason"], "resource_not_granted");
        assert!(d.get("task_revoked").is_none(), "not yet: {d}");
    }
    let d = write_refused(&cg, &client, "acme/docs/probe2.txt").await;
    assert_eq!(
        d["reason"], "resource_not_granted",
        "the refusal itself stands: {d}"
    );
    assert_eq!(
        d["task_revoked"]["revoked_by"], "anomaly:revoke_after_denials",
        "{d}"
    );
    assert!(
        d["text"].as_str().unwrap().contains("ended the task"),
        "the agent is told: {d}"
    );
    // Revoked at once: inside the grant, with the derived token and with the task token.
    let d = write_refused(&cg, &client, "acme/out/after.txt").await;
    assert_eq!(d["reason"], "token_revoked", "{d}");
    assert!(message(&d).contains("anomaly:revoke_after_denials"), "{d}");
    client.cancel().await.unwrap();
    let client = cg.stdio_client(Some(&task)).await;
    let d = write_refused(&cg, &client, "acme/out/after.txt").await;
    assert_eq!(d["reason"], "token_revoked", "{d}");
    client.cancel().await.unwrap();

    let shown = cg.show_task(&id);
    assert_eq!(shown["task"]["end_reason"], "revoked");
    assert_eq!(shown["task"]["revoked_by"], "anomaly:revoke_after_denials");
    let text = cg.stdout_of(&["task", "show", &id]);
    assert!(
        text.contains("revoked   by anomaly:revoke_after_denials"),
        "{text}"
    );
    let ends: Vec<Value> = cg
        .audit()
        .into_iter()
        .filter(|l| l["kind"] == "end" && l["task"] == id.as_str())
        .collect();
    assert_eq!(ends.len(), 1, "one end line: {ends:?}");
    assert_eq!(ends[0]["reason"], "anomaly:revoke_after_denials");

    // A served HTTP process (a restart from the store) refuses the task too.
    let server = cg.serve_http();
    let resp = reqwest::Client::new()
        .post(server.url())
        .bearer_auth(&derived)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "a revoked task's token is refused at the door"
    );
    assert!(!cg.root.join("acme/out/after.txt").exists());
}

/// One denied attempt on a tool or a resource the operator marks sensitive revokes the task;
/// a call outside the declared intent counts toward its own rule; an agent working inside its
/// task is never revoked however much it works.
#[tokio::test(flavor = "multi_thread")]
async fn sensitive_attempts_and_calls_outside_the_intent_revoke() {
    let cg = Capgate::with_config(
        "[anomaly]\nrevoke_after_denials = 0\nrevoke_after_out_of_intent = 2\nsensitive = [\"acme/docs/secret/\"]\n",
    );
    std::fs::create_dir_all(cg.root.join("acme/docs/secret")).unwrap();
    std::fs::write(cg.root.join("acme/docs/secret/key"), "k").unwrap();
    let agent = writer(&cg);

    // Working inside the task: many calls, never revoked.
    let (id, task) = cg.task(&agent, &["fs_read"], &["fs_read=acme/docs/readme.txt"]);
    let client = cg.stdio_client(Some(&task)).await;
    for _ in 0..20 {
        call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    }
    // One try at the sensitive prefix: revoked.
    let d = call_denied(&client, "fs_read", json!({"path": "acme/docs/secret/key"})).await;
    assert_eq!(d["task_revoked"]["revoked_by"], "anomaly:sensitive", "{d}");
    assert!(
        !d["text"].as_str().unwrap().contains("\"k\""),
        "nothing was read: {d}"
    );
    client.cancel().await.unwrap();
    assert_eq!(cg.show_task(&id)["task"]["revoked_by"], "anomaly:sensitive");

    // Two calls of a tool the task did not declare: revoked.
    let (id, task) = cg.task(&agent, &["fs_read"], &["fs_read=acme/docs/"]);
    let client = cg.stdio_client(Some(&task)).await;
    let d = write_refused(&cg, &client, "acme/out/x.txt").await;
    assert!(d.get("task_revoked").is_none(), "{d}");
    let d = write_refused(&cg, &client, "acme/out/y.txt").await;
    assert_eq!(
        d["task_revoked"]["revoked_by"], "anomaly:revoke_after_out_of_intent",
        "{d}"
    );
    client.cancel().await.unwrap();
    assert_eq!(cg.show_task(&id)["task"]["end_reason"], "revoked");
}

/// Rules are checked at startup like every other key.
#[test]
fn anomaly_rules_are_validated_at_startup() {
    for (toml, key) in [
        ("[anomaly]\nwindow = \"0s\"\n", "anomaly.window"),
        ("[anomaly]\nsensitive = [\"\"]\n", "anomaly.sensitive[0]"),
        ("[anomaly]\nrevoke_after = 3\n", "revoke_after"),
        (
            "[anomaly]\nrevoke_after_denials = -1\n",
            "anomaly.revoke_after_denials",
        ),
    ] {
        // The installation starts valid (its own `[anomaly]` comes after); then the operator edits.
        let cg = Capgate::with_config("# [anomaly] is appended below\n");
        cg.append_config(toml);
        let e = cg.stderr_of_failure(&["serve", "--stdio"]);
        assert!(e.contains(key), "{toml}: {e}");
        assert!(e.contains("capgate.toml"), "the file is named: {e}");
    }
}

/// A denial says what would have been needed and, when a new task could grant it, the
/// `task_begin` arguments to ask for; it never offers what the agent's own rights or the
/// tenant boundary rule out.
#[tokio::test(flavor = "multi_thread")]
async fn a_denial_says_what_a_new_task_would_need() {
    let cg = Capgate::new();
    let agent = cg.mint("reader", "acme", &["fs_read"], &[]);
    let client = cg.stdio_client(Some(&agent)).await;
    let begun = call_ok(
        &client,
        "task_begin",
        json!({"purpose": "read the docs", "tools": ["fs_read"], "resources": {"fs_read": ["acme/docs/"]}}),
    )
    .await;
    assert_eq!(begun.is_error, Some(false));
    std::fs::create_dir_all(cg.root.join("acme/out")).unwrap();
    std::fs::write(cg.root.join("acme/out/r.txt"), "r").unwrap();

    // Outside the task, inside the agent's rights: the arguments of a task that would grant it.
    let d = call_denied(&client, "fs_read", json!({"path": "acme/out/r.txt"})).await;
    assert_eq!(d["reason"], "resource_not_granted");
    let resource = cg.root.join("acme/out/r.txt").display().to_string();
    assert_eq!(
        d["remedy"]["needed"],
        json!({"tool": "fs_read", "resource": resource})
    );
    let args = d["remedy"]["task_begin"].clone();
    assert_eq!(args["tools"], json!(["fs_read"]), "{d}");
    assert!(
        d["text"].as_str().unwrap().contains("task_begin"),
        "the model reads it: {d}"
    );
    // Following the advice works.
    call_ok(&client, "task_begin", args).await;
    call_ok(&client, "fs_read", json!({"path": "acme/out/r.txt"})).await;

    // A tool the agent holds no right to: no task would grant it, and it says so.
    let d = call_denied(
        &client,
        "fs_write",
        json!({"path": "acme/out/w.txt", "content": "x"}),
    )
    .await;
    assert!(d["remedy"].get("task_begin").is_none(), "{d}");
    assert!(
        d["remedy"]["advice"].as_str().unwrap().contains("no right"),
        "{d}"
    );
    assert!(!cg.root.join("acme/out/w.txt").exists());

    // Another tenant's file: refused, no task offered, and nothing about that tenant said.
    std::fs::write(cg.root.join("globex/plans/p.txt"), "secret plan").unwrap();
    let d = call_denied(&client, "fs_read", json!({"path": "globex/plans/p.txt"})).await;
    assert!(d["remedy"].get("task_begin").is_none(), "{d}");
    let said = d.to_string();
    assert!(!said.contains("secret plan"), "{said}");
    assert!(
        !said.contains("\"globex\""),
        "no other tenant is named: {said}"
    );
    client.cancel().await.unwrap();
}

/// The issuance policy sees the requested budget, so an operator can demand one: here a
/// writing task must carry `budget.calls` of at most 100.
#[tokio::test(flavor = "multi_thread")]
async fn an_issuance_policy_can_demand_a_budget() {
    let cg = Capgate::new();
    let shipped = include_str!("../policies/issuance.datalog");
    let policy = shipped.replace(
        "allow if true;",
        "// rule: budget-required — writing tasks say how much they will do.\n\
         check if operation(\"read\") or budget_calls($n), $n <= 100;\n\
         allow if true;",
    );
    let file = cg.base().join("issuance.datalog");
    std::fs::write(&file, policy).unwrap();
    cg.append_config(&format!(
        "[policy]\nissuance = {:?}\n",
        file.display().to_string()
    ));
    let out = cg.run(&["policy", "check", "--strict"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = writer(&cg);
    let begin = |extra: &[&str]| {
        let mut flags = vec!["--approved-by", "tester"];
        flags.extend(extra);
        cg.begin_cli(
            &agent,
            "write",
            &["fs_write"],
            &["fs_write=acme/out/"],
            &flags,
        )
    };
    let e = begin(&[]).unwrap_err();
    assert!(e.contains("budget-required"), "{e}");
    let e = begin(&["--budget-calls", "500"]).unwrap_err();
    assert!(e.contains("budget-required"), "{e}");
    let v = begin(&["--budget-calls", "50"]).expect("a budgeted task is issued");
    assert_eq!(v["task_id"].as_str().map(str::len), Some(36));
    // Reading needs no budget under this policy.
    cg.begin_cli(&agent, "read", &["fs_read"], &["fs_read=acme/docs/"], &[])
        .expect("a read task");
}

/// Refusals that are not the task misbehaving do not count toward the anomaly rules: a budget
/// reached, and a sub-agent's own narrower token running out (its block expired). A sub-agent
/// block that derives a budget by a rule admits nothing (the budget is read without the call's
/// facts, so a conditional limit cannot be honoured as written).
#[tokio::test(flavor = "multi_thread")]
async fn budgets_reached_and_expired_sub_tokens_do_not_revoke_the_task() {
    let cg = Capgate::with_config("[anomaly]\nrevoke_after_denials = 2\n");
    let agent = writer(&cg);
    let v = cg
        .begin_cli(
            &agent,
            "one write",
            &["fs_write"],
            &["fs_write=acme/out/"],
            &["--approved-by", "tester", "--budget-calls", "1"],
        )
        .unwrap();
    let (id, task) = (v["task_id"].as_str().unwrap(), v["token"].as_str().unwrap());
    let client = cg.stdio_client(Some(task)).await;
    write_ok(&client, "acme/out/1.txt").await;
    for i in 2..6 {
        let d = write_refused(&cg, &client, &format!("acme/out/{i}.txt")).await;
        assert_eq!(d["reason"], "budget_exhausted", "{d}");
        assert!(d.get("task_revoked").is_none(), "{d}");
    }
    client.cancel().await.unwrap();
    let expired = attenuate(task, "check if time($t), $t <= 2001-01-01T00:00:00Z;");
    let client = cg.stdio_client(Some(&expired)).await;
    for i in 0..4 {
        let d = write_refused(&cg, &client, &format!("acme/out/e{i}.txt")).await;
        assert_eq!(d["reason"], "token_expired", "{d}");
    }
    client.cancel().await.unwrap();
    assert!(
        cg.show_task(id)["task"]["end_reason"].is_null(),
        "the task is still live"
    );

    let (_, task) = cg.task(&agent, &["fs_write"], &["fs_write=acme/out/"]);
    let ruled = attenuate(&task, "budget_calls(1000) <- tool(\"fs_write\");");
    let client = cg.stdio_client(Some(&ruled)).await;
    let d = write_refused(&cg, &client, "acme/out/r.txt").await;
    assert_eq!(d["reason"], "budget_exhausted", "{d}");
    client.cancel().await.unwrap();
}
