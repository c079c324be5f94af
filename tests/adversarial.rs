//! The adversarial suite: the real `capgate` binary under attack over HTTP and stdio.
//!
//! Every case asserts the decision *and* that the tool did not run: a denied `fs_write` left no
//! file, a denied `http_fetch` made no request to the origin server.

use std::time::Duration;

use base64::Engine;
use capgate_testkit::*;
use reqwest::Method;
use serde_json::{Value, json};

/// POSTs a raw JSON-RPC tools/call to `/mcp` with an optional bearer token.
async fn raw_call(
    server: &Server,
    token: Option<&str>,
    tool: &str,
    arguments: Value,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(server.url())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments}}));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.expect("request")
}

fn assert_401(resp: &reqwest::Response, why: &str) {
    assert_eq!(resp.status(), 401, "{why}");
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .unwrap_or_else(|| panic!("{why}: no WWW-Authenticate"))
        .to_str()
        .unwrap();
    assert!(challenge.starts_with("Bearer "), "{why}: {challenge}");
    assert!(
        challenge.contains("error=\"invalid_token\""),
        "{why}: {challenge}"
    );
}

/// Writes `x` to `path` with `fs_write` over raw HTTP presenting `token`: the request must be a
/// 401 challenge, and the tool must not have run. The response, for its body.
async fn write_gets_401(
    cg: &Capgate,
    server: &Server,
    token: Option<&str>,
    why: &str,
    path: &str,
) -> reqwest::Response {
    let resp = raw_call(
        server,
        token,
        "fs_write",
        json!({"path": path, "content": "x"}),
    )
    .await;
    assert_401(&resp, why);
    assert!(!cg.root.join(path).exists(), "{why}: the tool ran");
    resp
}

/// Asks the guard to write `x` to `path`: the denial's details, once it is sure no file was
/// written.
async fn write_denied(cg: &Capgate, client: &Client, path: &str) -> Value {
    let d = call_denied(client, "fs_write", json!({"path": path, "content": "x"})).await;
    assert!(!cg.root.join(path).exists(), "{path}: the tool ran: {d}");
    d
}

/// A task of [`acme_agent`] over `tools` and `resources`; its token.
fn acme_task(cg: &Capgate, tools: &[&str], resources: &[&str]) -> String {
    cg.task(&acme_agent(cg), tools, resources).1
}

/// Flips one byte of the token's binary form (inside the last block's signature).
fn forge(token: &str) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE;
    let mut bytes = engine.decode(token).expect("base64url token");
    let i = bytes.len() - 10;
    bytes[i] ^= 0x01;
    engine.encode(bytes)
}

/// An agent of `acme` that may read, list and write files and fetch URLs.
fn acme_agent(cg: &Capgate) -> String {
    cg.mint(
        "agent-a",
        "acme",
        &["fs_read", "fs_list", "fs_write", "fs_search", "http_fetch"],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_tokens_get_401_and_nothing_runs() {
    let cg = Capgate::new();
    let task = acme_task(&cg, &["fs_write"], &["fs_write=acme/out/"]);
    let foreign = {
        // A whole second installation: same vocabulary, another root key.
        let other = Capgate::new();
        acme_task(&other, &["fs_write"], &["fs_write=acme/out/"])
    };
    let server = cg.serve_http();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("forged signature", Some(forge(&task))),
        ("another root key", Some(foreign)),
        ("garbage", Some("this-is-not-a-token".into())),
        ("truncated", Some(task[..task.len() / 2].to_owned())),
        ("empty", Some(String::new())),
        ("missing", None),
        ("64 KiB + 1 of base64", Some("A".repeat(64 * 1024 + 1))),
    ];
    for (i, (why, token)) in cases.iter().enumerate() {
        let path = format!("acme/out/pwned-{i}.txt");
        write_gets_401(&cg, &server, token.as_deref(), why, &path).await;
    }
    // A 1 MiB bearer token never reaches capgate: the HTTP server refuses headers that large
    // (431) before any request handling, and may close the connection while the client is
    // still sending (the client then sees a broken pipe instead of the 431). Nothing runs.
    let huge = "A".repeat(1024 * 1024);
    let sent = reqwest::Client::new()
        .post(server.url())
        .header("accept", "application/json, text/event-stream")
        .header("authorization", format!("Bearer {huge}"))
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "fs_write", "arguments": {"path": "acme/out/huge.txt", "content": "x"}}}))
        .send()
        .await;
    match sent {
        Ok(resp) => assert_eq!(resp.status(), 431, "a 1 MiB token"),
        Err(e) => assert!(e.is_request(), "the server cut the request short: {e:?}"),
    }
    assert!(!cg.root.join("acme/out/huge.txt").exists());
    // The valid token still works: the refusals above were about the tokens.
    let client = server.client(&task).await;
    call_ok(
        &client,
        "fs_write",
        json!({"path": "acme/out/ok.txt", "content": "ok"}),
    )
    .await;

    // Over stdio the same tokens are refused per call, as isError results: a forged token in
    // CAPGATE_TOKEN, and (environment variables cannot hold 1 MiB) a 1 MiB token presented per
    // call in `_meta`.
    let client = cg.stdio_client(Some(&forge(&task))).await;
    let d = write_denied(&cg, &client, "acme/out/stdio-pwned.txt").await;
    assert_eq!(d["reason"], "token_bad_signature");
    assert_eq!(
        tool_names(&client).await,
        Vec::<String>::new(),
        "tools/list leaks nothing"
    );
    client.cancel().await.unwrap();
    let client = cg.stdio_client(Some(&task)).await;
    let write = call_params(
        "fs_write",
        json!({"path": "acme/out/stdio-pwned.txt", "content": "x"}),
    );
    let params = with_token_in_meta(write, &"A".repeat(1024 * 1024));
    let r = client.call_tool(params).await.unwrap();
    assert_eq!(denial(&r)["reason"], "token_too_large");
    assert!(
        !cg.root.join("acme/out/stdio-pwned.txt").exists(),
        "the tool ran"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_agent_tokens_and_expired_tasks_get_401() {
    let cg = Capgate::new();
    let short_agent = cg.stdout_of(&[
        "token", "mint", "--agent", "brief", "--tenant", "acme", "--tool", "fs_write", "--ttl",
        "3s",
    ]);
    let (_id, under_short_agent) = cg.task(&short_agent, &["fs_write"], &["fs_write=acme/out/"]);
    let agent = acme_agent(&cg);
    let v = cg
        .begin_cli(
            &agent,
            "short",
            &["fs_write"],
            &["fs_write=acme/out/"],
            &["--approved-by", "t", "--ttl", "3s"],
        )
        .unwrap();
    let short_task = v["token"].as_str().unwrap().to_owned();
    let server = cg.serve_http();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (why, token) in [
        ("expired agent token", &short_agent),
        ("task of an expired agent", &under_short_agent),
        ("expired task", &short_task),
    ] {
        let resp = write_gets_401(&cg, &server, Some(token), why, "acme/out/late.txt").await;
        let body: Value = resp.json().await.unwrap();
        assert!(
            message(&body).contains("expired") || message(&body).contains("revoked"),
            "{why}: {body}"
        );
    }
    // The reaper ends the expired task and revokes it.
    let id = v["task_id"].as_str().unwrap();
    let mut ended = false;
    for _ in 0..40 {
        if cg.show_task(id)["task"]["end_reason"] == "expired" {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ended, "the reaper ended the expired task");
}

#[tokio::test(flavor = "multi_thread")]
async fn ended_tasks_replay_as_401_with_their_derived_tokens_across_a_restart() {
    let cg = Capgate::new();
    let agent = acme_agent(&cg);
    let server = cg.serve_http();
    let intent = json!({"purpose": "write a report", "tools": ["fs_write"],
                        "resources": {"fs_write": ["acme/out/"]}, "ttl": "10m"});
    let approval = cg.approval("lead", None);
    let created: Value = server
        .post_task(&agent, Some(&approval), &intent)
        .await
        .json()
        .await
        .unwrap();
    let id = created["task_id"].as_str().unwrap().to_owned();
    let task = created["token"].as_str().unwrap().to_owned();
    // A sub-agent narrows the task token offline to one file.
    let derived = attenuate(
        &task,
        &format!(
            "check if resource($r), $r == \"{}\";",
            cg.root.join("acme/out/sub.txt").display()
        ),
    );
    let sub = server.client(&derived).await;
    // Derived tokens are accepted while valid, and can only narrow.
    let wrote = json!({"path": "acme/out/sub.txt", "content": "from the sub-agent"});
    call_ok(&sub, "fs_write", wrote).await;
    let d = write_denied(&cg, &sub, "acme/out/other.txt").await;
    assert_eq!(d["reason"], "resource_not_granted", "{d}");

    let resp = server.task_request(Method::DELETE, &id, &agent).await;
    assert_eq!(resp.status(), 200);
    let replays = [
        ("ended task", task.as_str()),
        ("token derived from the ended task", derived.as_str()),
    ];
    for (why, token) in replays {
        write_gets_401(&cg, &server, Some(token), why, "acme/out/replay.txt").await;
    }
    // An already-open session is refused too, at the HTTP layer: revocation is checked on every
    // request.
    let again = json!({"path": "acme/out/sub.txt", "content": "again"});
    call_refused(&sub, "fs_write", again).await;
    assert_eq!(
        std::fs::read_to_string(cg.root.join("acme/out/sub.txt")).unwrap(),
        "from the sub-agent"
    );

    // A restart keeps every revocation.
    assert!(server.stop().success());
    let server = cg.serve_http();
    for (why, token) in replays {
        let why = format!("{why}, after a restart");
        write_gets_401(&cg, &server, Some(token), &why, "acme/out/replay.txt").await;
    }
    // Over stdio as well.
    let client = cg.stdio_client(Some(&task)).await;
    let d = write_denied(&cg, &client, "acme/out/replay.txt").await;
    assert_eq!(d["reason"], "token_revoked");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_outside_the_grant_are_denied_and_do_not_run() {
    let cg = Capgate::new();
    let origin = Origin::start();
    let agent = acme_agent(&cg);
    let docs_prefix = format!("http_fetch={}", origin.url("/docs/"));
    let (_id, task) = cg.task(
        &agent,
        &["fs_read", "fs_write", "http_fetch"],
        &["fs_read=acme/docs/", "fs_write=acme/docs/", &docs_prefix],
    );
    std::os::unix::fs::symlink(cg.root.join("acme/out"), cg.root.join("acme/docs/link")).unwrap();
    std::os::unix::fs::symlink("../out", cg.root.join("acme/docs/rlink")).unwrap();
    let server = cg.serve_http();
    let client = server.client(&task).await;

    // A tool that is not granted.
    let d = call_denied(&client, "fs_list", json!({"path": "acme/docs"})).await;
    assert_eq!(d["reason"], "tool_not_granted");
    // A resource outside the granted prefix: by `..`, through a symlink, percent-encoded.
    for path in [
        "acme/docs/../out/dotdot.txt",
        "acme/docs/link/symlinked.txt",
        "acme/docs/rlink/relative-symlink.txt",
        "acme/docs%2F..%2Fout/encoded.txt",
    ] {
        let d = write_denied(&cg, &client, path).await;
        assert_eq!(d["reason"], "resource_not_granted", "{path}: {d}");
        assert!(
            message(&d).contains("starts_with"),
            "the failed check is named: {d}"
        );
    }
    // `..` after a component that does not exist would leave the symlink after it unchecked: the
    // path is refused while its resource is derived, before the guard and before any I/O.
    for (tool, args) in [
        (
            "fs_write",
            json!({"path": "acme/docs/nx/../rlink/s.txt", "content": "x"}),
        ),
        ("fs_read", json!({"path": "acme/docs/nx/../rlink/s.txt"})),
    ] {
        let d = call_invalid(&client, tool, args).await;
        assert!(
            message(&d).contains("does not exist"),
            "{tool}: the error says why: {d}"
        );
    }
    let written: Vec<_> = cg
        .workspace_snapshot()
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("acme/out"))
        .collect();
    assert!(
        written.is_empty(),
        "nothing was written outside the prefix: {written:?}"
    );
    assert!(!cg.root.join("acme/docs%2F..%2Fout").exists());

    // http_fetch: inside the prefix it fetches; `%2e%2e` normalizes outside it and is denied; an
    // encoded slash is refused as ambiguous. Only the allowed call reached the origin.
    let r = call_ok(
        &client,
        "http_fetch",
        json!({"url": origin.url("/docs/page")}),
    )
    .await;
    assert_eq!(text(&r), "hello from /docs/page", "{r:?}");
    let dotdot = json!({"url": origin.url("/docs/%2e%2e/admin")});
    let d = call_denied(&client, "http_fetch", dotdot).await;
    assert_eq!(d["reason"], "resource_not_granted");
    assert_eq!(d["resource"], origin.url("/admin"));
    let d = call_invalid(
        &client,
        "http_fetch",
        json!({"url": origin.url("/docs/..%2fadmin")}),
    )
    .await;
    assert_eq!(d["field"], "url", "{d}");
    assert_eq!(
        origin.hits(),
        1,
        "refused fetches made no request: {:?}",
        origin.paths.lock().unwrap()
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_boundaries_hold_at_issuance_and_at_call_time() {
    let cg = Capgate::new();
    let agent = acme_agent(&cg);
    let server = cg.serve_http();
    let peek = json!({"purpose": "peek", "tools": ["fs_read"], "resources": {"fs_read": ["globex/plans/"]}});
    let body = server.post_task_refused(&agent, &peek, 403).await;
    assert_eq!(body["reason"], "cross-tenant", "{body}");
    assert!(body.get("token").is_none());
    let other_tenant = json!({"purpose": "peek", "tools": ["fs_read"], "tenant": "globex"});
    let body = server.post_task_refused(&agent, &other_tenant, 403).await;
    assert_eq!(body["reason"], "tenant-mismatch", "{body}");

    // A task over all of fs_read would cover globex's files: it is not issued.
    let refused = cg
        .begin_cli(
            &agent,
            "everything",
            &["fs_read"],
            &[],
            &["--approved-by", "tester"],
        )
        .unwrap_err();
    assert!(refused.contains("covers-other-tenant"), "{refused}");
    // A task over acme's files cannot reach globex's by any path.
    let (_id, task) = cg.task(&agent, &["fs_read"], &["fs_read=acme/"]);
    let client = server.client(&task).await;
    for path in [
        "globex/plans/secret-plan.txt",
        "acme/../globex/plans/secret-plan.txt",
    ] {
        // Both the tenant rule and the task's grant refuse; the host policy's name comes first.
        let d = call_denied(&client, "fs_read", json!({"path": path})).await;
        assert_eq!(d["reason"], "cross-tenant", "{path}: {d}");
        assert_eq!(d["failed_checks"].as_array().unwrap().len(), 2, "{d}");
        assert!(!d["text"].as_str().unwrap().contains("globex plan"));
    }
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    client.cancel().await.unwrap();
}

/// A token of one task cannot read or end a sibling task of the same agent; a token derived
/// from a task's token, and the agent token, can.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_token_reaches_its_own_task_only() {
    let cg = Capgate::new();
    let agent = acme_agent(&cg);
    let (a, a_token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/docs/"]);
    let (b, b_token) = cg.task(&agent, &["fs_read"], &["fs_read=acme/docs/"]);
    let a_derived = attenuate(&a_token, "check if tool(\"fs_read\");");
    let server = cg.serve_http();
    // A sibling's token gets 404s (and task A runs on); then its own derived token and the
    // agent token reach their tasks.
    for (method, id, token, want) in [
        (Method::GET, &a, &b_token, 404),
        (Method::DELETE, &a, &b_token, 404),
        (Method::GET, &b, &a_derived, 404),
        (Method::GET, &a, &a_derived, 200),
        (Method::DELETE, &b, &agent, 200),
        (Method::DELETE, &a, &a_derived, 200),
    ] {
        let resp = server.task_request(method.clone(), id, token).await;
        assert_eq!(resp.status(), want, "{method} {id}");
        if want == 404 {
            let shown = cg.show_task(&a);
            assert!(shown["task"]["end_reason"].is_null(), "task A still runs");
        }
    }
}

/// A tenant's URL prefix written in another spelling (scheme case, default port, a trailing
/// dot on the host) still claims what the network tool's resources spell canonically.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_url_prefixes_hold_in_any_spelling() {
    let origin = Origin::start();
    let addr = origin.url("").trim_start_matches("http://").to_owned();
    // The task is issued over all of http_fetch before the tenant that owns part of the origin
    // is configured (issuance would refuse a prefix covering it: `covers-other-tenant`), so only
    // the call-time rule stands between it and that tenant's URLs.
    let cg = Capgate::new();
    let task = acme_task(&cg, &["http_fetch"], &[]);
    cg.append_config(&format!(
        "[tenants.initech]\nresources = [\"HTTP://{addr}/initech/\"]\n"
    ));
    let server = cg.serve_http();
    let client = server.client(&task).await;
    for url in [
        origin.url("/initech/plans"),
        format!("HTTP://{addr}/initech/plans"),
    ] {
        let d = call_denied(&client, "http_fetch", json!({"url": url})).await;
        assert_eq!(d["reason"], "cross-tenant", "{url}");
    }
    assert_eq!(origin.hits(), 0, "no request reached the other tenant");
    let page = json!({"url": origin.url("/docs/page")});
    call_ok(&client, "http_fetch", page).await;
    assert_eq!(origin.hits(), 1);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sub_agent_blocks_cannot_widen_and_datalog_bombs_stop_at_the_limits() {
    let cg = Capgate::new();
    let task = acme_task(&cg, &["fs_read"], &["fs_read=acme/docs/"]);
    let server = cg.serve_http();

    // A block that asserts rights, grants and a task of its own: facts of later blocks are not
    // trusted by earlier checks or by the host policy, so nothing widens.
    let widened = attenuate(
        &task,
        "right(\"fs_write\"); resource_prefix(\"fs_write\", \"\"); granted_prefix(\"fs_write\", \"\"); \
         granted_prefix(\"fs_read\", \"\"); task(\"forged\"); tenant(\"globex\");",
    );
    let client = server.client(&widened).await;
    assert_eq!(
        tool_names(&client).await,
        vec!["fs_read", "task_begin", "task_end"]
    );
    let d = write_denied(&cg, &client, "acme/docs/w.txt").await;
    assert_eq!(d["reason"], "tool_not_granted");
    let shared = json!({"path": "acme/out/../../shared/common.txt"});
    let d = call_denied(&client, "fs_read", shared).await;
    assert_eq!(d["reason"], "resource_not_granted");
    client.cancel().await.unwrap();

    // A block whose rules explode (50 x 50 pairs, then more) is stopped by the fact limit the
    // first time the token is read: it can never be authorized, so it is refused as a token —
    // 401 over HTTP, a denial over stdio — promptly, nothing runs, and the server keeps serving.
    let facts: String = (0..50).map(|i| format!("n({i});")).collect();
    let bomb = attenuate(
        &task,
        &format!(
            "{facts} pair($x, $y) <- n($x), n($y); triple($x, $y, $z) <- pair($x, $y), n($z); check if pair(0, 0);"
        ),
    );
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        raw_call(
            &server,
            Some(&bomb),
            "fs_write",
            json!({"path": "acme/docs/bomb.txt", "content": "x"}),
        ),
    )
    .await
    .expect("a Datalog bomb must not hang the server");
    assert_401(&resp, "a Datalog bomb");
    let body: Value = resp.json().await.unwrap();
    assert!(message(&body).contains("exceeds the run limits"), "{body}");
    assert!(!cg.root.join("acme/docs/bomb.txt").exists());
    let client = cg.stdio_client(Some(&bomb)).await;
    stopped_by_run_limit(&client).await;
    client.cancel().await.unwrap();
    // A bomb that only goes off with the call's facts (its rules need `tool($t)`) reads fine,
    // and is stopped by the guard's own run limits instead: an isError denial naming them.
    let delayed = attenuate(
        &task,
        &format!(
            "{facts} pair($x, $y) <- n($x), n($y), tool($t); triple($x, $y, $z) <- pair($x, $y), n($z); check if pair(0, 0);"
        ),
    );
    let client = server.client(&delayed).await;
    let d = stopped_by_run_limit(&client).await;
    assert!(message(&d).contains("[guard] limits"), "{d}");
    client.cancel().await.unwrap();
    // A legitimate token passes under the same limits.
    let client = server.client(&task).await;
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    client.cancel().await.unwrap();
}

/// Reads a file under a token whose Datalog explodes: the guard must answer promptly, with a
/// `run_limit` denial (its details returned).
async fn stopped_by_run_limit(client: &Client) -> Value {
    let read = call_denied(client, "fs_read", json!({"path": "acme/docs/readme.txt"}));
    let d = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a Datalog bomb must not hang the guard");
    assert_eq!(d["reason"], "run_limit", "{d}");
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn arg_constraints_are_enforced_before_the_tool_runs() {
    let cg = Capgate::new();
    let task = acme_task(&cg, &["fs_write"], &["fs_write=acme/out/"]);
    // The sub-agent may only append.
    let append_only = attenuate(&task, "check if arg(\"append\", true);");
    let client = cg.stdio_client(Some(&append_only)).await;
    let replace = json!({"path": "acme/out/log.txt", "content": "replace"});
    let d = call_denied(&client, "fs_write", replace).await;
    assert_eq!(d["reason"], "arg_constraint");
    assert!(!cg.root.join("acme/out/log.txt").exists());
    let append = json!({"path": "acme/out/log.txt", "content": "line\n", "append": true});
    call_ok(&client, "fs_write", append).await;
    assert_eq!(
        std::fs::read_to_string(cg.root.join("acme/out/log.txt")).unwrap(),
        "line\n"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tools_list_shows_exactly_what_the_token_can_call() {
    let cg = Capgate::new();
    let agent = acme_agent(&cg);
    let (_id, task) = cg.task(
        &agent,
        &["fs_read", "fs_list"],
        &["fs_read=acme/docs/", "fs_list=acme/"],
    );
    let narrower = attenuate(&task, "check if tool($t), [\"fs_read\"].contains($t);");
    let server = cg.serve_http();
    // The agent token alone reaches no tool.
    let client = server.client(&agent).await;
    let d = call_denied(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    assert_eq!(d["reason"], "task-required");
    client.cancel().await.unwrap();
    for (token, want) in [
        (&agent, vec!["task_begin", "task_end"]),
        (&task, vec!["fs_list", "fs_read", "task_begin", "task_end"]),
        (&narrower, vec!["fs_read", "task_begin", "task_end"]),
    ] {
        let client = server.client(token).await;
        assert_eq!(tool_names(&client).await, want);
        client.cancel().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_task_requests_mint_nothing() {
    let cg = Capgate::new();
    // Writing is among its rights, but needs an approval it never has.
    let rights = ["fs_read", "fs_write"];
    let reader = cg.mint("reader", "acme", &rights, &["fs_read=acme/docs/"]);
    let server = cg.serve_http();
    let cases = [
        (
            "ttl-too-long",
            json!({"purpose": "p", "tools": ["fs_read"], "ttl": "2h"}),
        ),
        (
            "tool-not-in-rights",
            json!({"purpose": "p", "tools": ["http_fetch"]}),
        ),
        (
            "approval-required",
            json!({"purpose": "p", "tools": ["fs_write"], "resources": {"fs_write": ["acme/out/"]}}),
        ),
        (
            "resource-outside-agent-prefix",
            json!({"purpose": "p", "tools": ["fs_read"], "resources": {"fs_read": ["acme/"]}}),
        ),
        (
            "purpose-required",
            json!({"purpose": "", "tools": ["fs_read"]}),
        ),
    ];
    for (rule, intent) in cases {
        let resp = server.post_task(&reader, None, &intent).await;
        assert_eq!(resp.status(), 403, "{rule}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], rule, "{body}");
        assert!(message(&body).contains(rule), "the rule is named: {body}");
        assert!(body.get("token").is_none());
    }
    // Malformed requests are 400 with a message, not a refusal or a crash.
    for bad in [
        json!({"tools": ["fs_read"]}),
        json!({"purpose": "p", "tools": ["nope"]}),
        json!({"purpose": "p", "tools": ["fs_read"], "ttl": "soon"}),
    ] {
        let resp = server.post_task(&reader, None, &bad).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }
    // The CLI refuses the same way, with the rule.
    let err = cg
        .begin_cli(&reader, "p", &["fs_read"], &[], &["--ttl", "3h"])
        .unwrap_err();
    assert!(err.contains("ttl-too-long"), "{err}");
    // No task record exists.
    assert_eq!(cg.task_list(), "", "no task was recorded");
    // Every refusal is in the audit log: five policy refusals and two invalid requests over
    // HTTP, one from the CLI. (The body without `purpose` never became a request.)
    let refusals = cg
        .audit()
        .into_iter()
        .filter(|r| r["kind"] == "issuance" && r["decision"] == "deny")
        .count();
    assert_eq!(refusals, 8);
}
