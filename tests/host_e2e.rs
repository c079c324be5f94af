//! The host over real transports: the `capgate` binary driven by rmcp's client over stdio (child
//! process) and streamable HTTP. Built-in tools' happy paths, and every kind of bad input, each
//! asserting the exact error and that nothing outside the root was read or written.

use capgate_testkit::*;
use serde_json::json;

/// A task over every built-in tool: the fs tools confined to `acme/`, `http_fetch` to the
/// origin server (write and network tools approved).
fn full_task(cg: &Capgate, origin: &Origin) -> (String, String) {
    let tools = ["fs_read", "fs_list", "fs_write", "fs_search", "http_fetch"];
    let agent = cg.mint("agent-e2e", "acme", &tools, &[]);
    let fetch = format!("http_fetch={}", origin.url("/"));
    cg.task(
        &agent,
        &tools,
        &[
            "fs_read=acme/",
            "fs_list=acme/",
            "fs_write=acme/",
            "fs_search=acme/",
            &fetch,
        ],
    )
}

async fn happy_paths(client: &Client, cg: &Capgate, origin: &Origin) {
    let names = tool_names(client).await;
    assert_eq!(
        names,
        vec![
            "fs_list",
            "fs_read",
            "fs_search",
            "fs_write",
            "http_fetch",
            "task_begin",
            "task_end"
        ],
        "exactly the granted tools plus the in-band task tools"
    );

    let r = call(client, "http_fetch", json!({"url": origin.url("/page")}))
        .await
        .unwrap();
    assert_eq!(text(&r), "hello from /page", "{r:?}");
    assert_eq!(structured(&r)["status"], 200);
    let long = json!({"url": origin.url("/long"), "max_bytes": 5});
    let r = call(client, "http_fetch", long).await.unwrap();
    assert_eq!(text(&r), "hello");
    assert_eq!(structured(&r)["truncated"], true);
    let before = origin.hits();
    let redirect = json!({"url": origin.url("/redirect")});
    let r = call(client, "http_fetch", redirect).await.unwrap();
    assert!(text(&r).contains("not followed"), "{r:?}");
    assert_eq!(
        origin.hits(),
        before + 1,
        "the redirect target was not fetched"
    );
    assert!(
        !origin
            .paths
            .lock()
            .unwrap()
            .iter()
            .any(|p| p == "/elsewhere")
    );

    let r = call_ok(client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    assert_eq!(text(&r), "acme readme\nline two has a needle\n");
    assert_eq!(structured(&r)["size"], 34);

    let r = call(client, "fs_list", json!({"path": "acme/docs"}))
        .await
        .unwrap();
    assert_eq!(text(&r), "notes.md\nreadme.txt");

    let report = cg.root.join("acme/out/report.txt");
    let write = json!({"path": "acme/out/report.txt", "content": "done"});
    call_ok(client, "fs_write", write).await;
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "done");
    let append = json!({"path": "acme/out/report.txt", "content": "+more", "append": true});
    call_ok(client, "fs_write", append).await;
    assert_eq!(std::fs::read_to_string(&report).unwrap(), "done+more");
    let deep = json!({"path": "acme/out/deep/x.txt", "content": "x", "create_dirs": true});
    call_ok(client, "fs_write", deep).await;
    assert!(cg.root.join("acme/out/deep/x.txt").is_file());

    let hits = search(client, json!({"path": "acme", "pattern": "needle"})).await;
    assert_eq!(hits.len(), 2, "{hits:?}");
    let regex = json!({"path": "acme", "pattern": "ne+dle h", "regex": true});
    let hits = search(client, regex).await;
    assert_eq!(hits.len(), 1, "{hits:?}");
}

/// Runs `fs_search`, which must succeed; the matches it found.
async fn search(client: &Client, arguments: serde_json::Value) -> Vec<serde_json::Value> {
    let r = call_ok(client, "fs_search", arguments).await;
    structured(&r)["matches"].as_array().unwrap().clone()
}

/// Asserts that refused arguments name `field` and the `rule` (of the schema, or the tool's)
/// they broke.
fn assert_names(d: &serde_json::Value, field: &str, rule: &str) {
    assert_eq!(
        (d["field"].as_str(), d["rule"].as_str()),
        (Some(field), Some(rule)),
        "{d}"
    );
}

async fn bad_inputs(client: &Client, cg: &Capgate) {
    let before = cg.outside_snapshot();

    // Unknown tool.
    let e = call(client, "fs_delete", json!({})).await.unwrap_err();
    assert_eq!(rpc_code(&e), -32602);
    assert!(
        rpc_message(&e).contains("unknown tool `fs_delete`"),
        "{}",
        rpc_message(&e)
    );

    // Missing field, wrong type, unexpected field: a tool execution error (SEP-1303) the model
    // reads, naming the field and the schema rule it broke.
    let d = call_invalid(client, "fs_read", json!({})).await;
    assert_names(&d, "path", "required");
    let model_reads = d["text"].as_str().unwrap();
    assert!(model_reads.contains("missing required field `path`"), "{d}");
    let d = call_invalid(client, "fs_read", json!({"path": 42})).await;
    assert_names(&d, "path", "type");
    assert!(message(&d).contains("field `path`"), "{d}");
    let d = call_invalid(
        client,
        "fs_write",
        json!({"path": "acme/out/a", "content": "x", "mode": "0777"}),
    )
    .await;
    assert_names(&d, "mode", "additionalProperties");
    assert!(message(&d).contains("unexpected field `mode`"), "{d}");

    // Escapes from the root: refused while the resource is derived, before authorization and
    // before any I/O; the model reads why.
    for path in [
        "../outside/secret.txt",
        "acme/../../outside/secret.txt",
        cg.outside.join("secret.txt").to_str().unwrap(),
        "/etc/passwd",
    ] {
        let d = call_invalid(client, "fs_read", json!({"path": path})).await;
        assert_names(&d, "path", "tool");
        assert!(
            message(&d).contains("resolves outside the tool root"),
            "{path}: {d}"
        );
        call_invalid(
            client,
            "fs_write",
            json!({"path": path, "content": "pwned"}),
        )
        .await;
    }
    // A symlink inside the root that points out.
    std::os::unix::fs::symlink(&cg.outside, cg.root.join("acme/escape")).unwrap();
    let d = call_invalid(client, "fs_read", json!({"path": "acme/escape/secret.txt"})).await;
    assert!(
        message(&d).contains("resolves outside the tool root"),
        "{d}"
    );
    call_invalid(
        client,
        "fs_write",
        json!({"path": "acme/escape/new.txt", "content": "pwned"}),
    )
    .await;
    call_invalid(client, "fs_list", json!({"path": "acme/escape"})).await;
    call_invalid(
        client,
        "fs_search",
        json!({"path": "acme/escape", "pattern": "secret"}),
    )
    .await;
    // A search over a tree holding that symlink does not follow it.
    let hits = search(client, json!({"path": "acme", "pattern": "outside secret"})).await;
    assert!(hits.is_empty(), "{hits:?}");
    std::fs::remove_file(cg.root.join("acme/escape")).unwrap();

    // A bad regular expression names the field.
    let d = call_invalid(
        client,
        "fs_search",
        json!({"path": "acme", "pattern": "(", "regex": true}),
    )
    .await;
    assert_names(&d, "pattern", "tool");

    assert_eq!(
        cg.outside_snapshot(),
        before,
        "nothing outside the root was written"
    );
    assert!(!cg.base().join("outside/new.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_happy_paths_and_bad_inputs() {
    let cg = Capgate::new();
    let origin = Origin::start();
    let (_task, token) = full_task(&cg, &origin);
    let client = cg.stdio_client(Some(&token)).await;
    happy_paths(&client, &cg, &origin).await;
    bad_inputs(&client, &cg).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_happy_paths_and_bad_inputs() {
    let cg = Capgate::new();
    let origin = Origin::start();
    let (_task, token) = full_task(&cg, &origin);
    let server = cg.serve_http();
    let client = server.client(&token).await;
    happy_paths(&client, &cg, &origin).await;
    bad_inputs(&client, &cg).await;
    client.cancel().await.unwrap();
    assert!(server.stop().success(), "graceful shutdown on SIGTERM");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_and_change_nothing() {
    let cg = Capgate::new();
    let (_task, token) = full_task(&cg, &Origin::start());
    let server = cg.serve_http();
    let http = reqwest::Client::new();
    let big = "x".repeat(1024 * 1024 + 10);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "fs_write", "arguments": {"path": "acme/out/big.txt", "content": big}}});
    let resp = http
        .post(server.url())
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let resp = http
        .post(format!("{}/v1/tasks", server.base()))
        .bearer_auth(&token)
        .json(&json!({"purpose": "x".repeat(1024 * 1024 + 10), "tools": ["fs_read"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(!cg.root.join("acme/out/big.txt").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_rebinding_is_refused() {
    let cg = Capgate::new();
    let server = cg.serve_http();
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    for (host, origin) in [
        ("evil.example.com", None),
        (server.addr.as_str(), Some("http://evil.example.com")),
    ] {
        let mut req = http
            .post(server.url())
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(&init);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "host {host}, origin {origin:?}");
    }
}

#[test]
fn config_typos_are_refused_with_file_and_key() {
    let cg = Capgate::new();
    cg.append_config("[guard]\nmax_fact = 10\n");
    let err = cg.stderr_of_failure(&["serve", "--http", "127.0.0.1:0"]);
    // The file, the key and what is wrong with it.
    for says in ["capgate.toml", "guard.max_fact", "unknown field"] {
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn the_embedded_default_needs_no_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(capgate_bin())
        .current_dir(dir.path())
        .args(["serve", "--http", "127.0.0.1:0"])
        .env_remove("CAPGATE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let server = {
        use std::io::BufRead;
        let stderr = child.stderr.take().unwrap();
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("serving MCP at") {
                break;
            }
        }
        seen
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(server.contains("embedded default"), "{server}");
    assert!(server.contains("created a new root key"), "{server}");
    assert!(dir.path().join("workspace").is_dir());
    assert!(dir.path().join(".capgate/root.key").is_file());
}

/// SEP-1303 on the wire, with no MCP library in between: arguments the schema or the tool
/// refuses come back as a tool result with `isError: true` whose structured content names the
/// field and the rule (the model reads it); only an unknown tool is a JSON-RPC error. Nothing
/// outside the root was read or written.
#[tokio::test(flavor = "multi_thread")]
async fn argument_errors_are_tool_results_on_the_wire() {
    let cg = Capgate::new();
    let (_task, token) = full_task(&cg, &Origin::start());
    let before = cg.outside_snapshot();
    let server = cg.serve_http();
    let mut s = server.raw_session(&token).await;
    let call =
        |name: &str, arguments: serde_json::Value| json!({"name": name, "arguments": arguments});

    for (arguments, field, rule) in [
        (json!({"path": "../outside/secret.txt"}), "path", "tool"),
        (json!({}), "path", "required"),
        (json!({"path": 7}), "path", "type"),
    ] {
        let r = s
            .request("tools/call", call("fs_read", arguments.clone()))
            .await;
        let result = &r["result"];
        assert_eq!(result["isError"], true, "{arguments}: {r}");
        let d = &result["structuredContent"]["capgate"];
        assert_eq!(d["decision"], "invalid", "{r}");
        assert_eq!(d["field"], field, "{r}");
        assert_eq!(d["rule"], rule, "{r}");
        assert!(
            result["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains(field),
            "the text the model reads names the field: {r}"
        );
    }
    let r = s.request("tools/call", call("fs_delete", json!({}))).await;
    assert_eq!(
        r["error"]["code"], -32602,
        "an unknown tool is a protocol error: {r}"
    );
    assert_eq!(cg.outside_snapshot(), before);
}
