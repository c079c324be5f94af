//! The holes an outside attack found, each tried again against the real binary by an attacker
//! holding a valid token, each refused, and each time nothing happened: no file read or changed
//! outside the grant, no task issued, no other agent's session touched.

use std::io::{Read, Write};
use std::time::Duration;

use capgate_testkit::*;
use serde_json::{Value, json};

/// A task token of an `acme` agent for `tools` on `resources`, through the CLI.
fn acme_task(cg: &Capgate, tools: &[&str], resources: &[&str]) -> String {
    let agent = cg.mint("acme-agent", "acme", tools, &[]);
    cg.task(&agent, tools, resources).1
}

/// A directory walk never descends into, lists or returns another tenant's resources, even
/// below a directory the task was granted (here: a tenant added to the config after the task
/// was issued, so issuance could not have refused it).
#[tokio::test(flavor = "multi_thread")]
async fn walks_stop_at_another_tenants_resources() {
    let cg = Capgate::new();
    let task = acme_task(
        &cg,
        &["fs_search", "fs_list", "fs_read"],
        &["fs_search=acme/", "fs_list=acme/", "fs_read=acme/"],
    );
    std::fs::create_dir_all(cg.root.join("acme/partner")).unwrap();
    std::fs::write(cg.root.join("acme/partner/deal.txt"), "PARTNER_SECRET\n").unwrap();
    cg.append_config("[tenants.partner]\nresources = [\"acme/partner/\"]\n");
    let client = cg.stdio_client(Some(&task)).await;

    let found = call_ok(
        &client,
        "fs_search",
        json!({"path": "acme", "pattern": "PARTNER_SECRET"}),
    )
    .await;
    assert_eq!(structured(&found)["matches"], json!([]), "{found:?}");
    let found = call_ok(
        &client,
        "fs_search",
        json!({"path": "acme", "pattern": "needle"}),
    )
    .await;
    assert_eq!(
        structured(&found)["matches"].as_array().unwrap().len(),
        2,
        "acme's own files are searched"
    );
    let listed = call_ok(&client, "fs_list", json!({"path": "acme"})).await;
    let names: Vec<&str> = structured(&listed)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"docs") && !names.contains(&"partner"),
        "{names:?}"
    );
    let d = call_denied(&client, "fs_read", json!({"path": "acme/partner/deal.txt"})).await;
    assert_eq!(d["reason"], "cross-tenant", "{d}");
    client.cancel().await.unwrap();
}

/// Issuance never grants a prefix that covers another tenant's resources: not the empty prefix,
/// not `.`, not a parent of another tenant's directory; nothing is issued.
#[tokio::test(flavor = "multi_thread")]
async fn issuance_refuses_prefixes_that_cover_another_tenant() {
    let cg = Capgate::new();
    let agent = cg.mint("acme-agent", "acme", &["fs_search", "fs_list"], &[]);
    let server = cg.serve_http();
    for resources in [
        json!(null),
        json!({"fs_search": [""]}),
        json!({"fs_search": ["."]}),
        json!({"fs_list": ["./"]}),
    ] {
        let mut intent = json!({"purpose": "look around", "tools": ["fs_search", "fs_list"]});
        if !resources.is_null() {
            intent["resources"] = resources.clone();
        }
        let body = server.post_task_refused(&agent, &intent, 403).await;
        assert_eq!(body["reason"], "covers-other-tenant", "{resources}: {body}");
    }
    assert!(cg.task_list().trim().is_empty(), "nothing was issued");
    let ok = json!({"purpose": "look around", "tools": ["fs_search"], "resources": {"fs_search": ["acme/"]}});
    assert_eq!(server.post_task(&agent, None, &ok).await.status(), 201);
}

/// A slow origin: answers each GET after `delay`.
fn slow_origin(delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow"
                );
            });
        }
    });
    format!("http://{addr}/")
}

/// Two in-flight requests with one id in one session: the second gets a JSON-RPC error at once,
/// the first its own result; neither is lost, no stream is left hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_duplicate_in_flight_request_id_is_refused_and_nothing_is_lost() {
    let cg = Capgate::new();
    let origin = slow_origin(Duration::from_millis(1500));
    let task = acme_task(
        &cg,
        &["http_fetch", "fs_read"],
        &[&format!("http_fetch={origin}"), "fs_read=acme/docs/"],
    );
    let server = cg.serve_http();
    let session = std::sync::Arc::new(server.raw_session(&task).await);
    let call = |name: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
               "params": {"name": name, "arguments": arguments}})
    };
    let slow = {
        let s = std::sync::Arc::clone(&session);
        let body = call("http_fetch", json!({"url": origin}));
        tokio::spawn(async move { s.send(body).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let second = session
        .send(call("fs_read", json!({"path": "acme/docs/readme.txt"})))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "refused at once"
    );
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0]["id"], 42);
    assert_eq!(second[0]["error"]["code"], -32600, "{second:?}");
    let first = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the first request's stream completes")
        .unwrap();
    let result = first
        .iter()
        .find(|m| m["id"] == 42)
        .expect("the first request's answer");
    assert_eq!(result["result"]["content"][0]["text"], "slow", "{result}");
    // The id is free again once its request is over.
    let again = session
        .send(call("fs_read", json!({"path": "acme/docs/readme.txt"})))
        .await;
    assert_eq!(again[0]["result"]["isError"], false, "{again:?}");
}

/// A session belongs to the principal whose credential opened it: another agent's valid token
/// with the victim's session id gets 404 on POST, GET and DELETE, and the victim's session goes
/// on as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_session_id_reaches_nothing() {
    let cg = Capgate::new();
    let victim = acme_task(&cg, &["fs_read"], &["fs_read=acme/docs/"]);
    let thief_agent = cg.mint("thief", "globex", &["fs_read"], &[]);
    let thief = cg.task(&thief_agent, &["fs_read"], &["fs_read=globex/"]).1;
    let server = cg.serve_http();
    let mut session = server.raw_session(&victim).await;
    let id = session.session_id().to_owned();
    let http = reqwest::Client::new();
    let with_victims_session = |req: reqwest::RequestBuilder| {
        req.bearer_auth(&thief)
            .header("mcp-session-id", &id)
            .header("mcp-protocol-version", "2025-11-25")
    };
    let listen = with_victims_session(http.get(server.url()))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listen.status(),
        404,
        "no second listener on the victim's stream"
    );
    let post = with_victims_session(http.post(server.url()))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
    let end = with_victims_session(http.delete(server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        end.status(),
        404,
        "the thief cannot end the victim's session"
    );
    let r = session
        .request(
            "tools/call",
            json!({"name": "fs_read", "arguments": {"path": "acme/docs/readme.txt"}}),
        )
        .await;
    assert_eq!(
        r["result"]["isError"], false,
        "the victim's session goes on: {r}"
    );
}

/// Two `Authorization` headers are refused, not resolved by taking the first.
#[tokio::test(flavor = "multi_thread")]
async fn two_authorization_headers_are_refused() {
    let cg = Capgate::new();
    let task = acme_task(&cg, &["fs_read"], &["fs_read=acme/docs/"]);
    let other = acme_task(&cg, &["fs_read"], &["fs_read=acme/"]);
    let server = cg.serve_http();
    let mut headers = reqwest::header::HeaderMap::new();
    for t in [&task, &other] {
        headers.append("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let r = reqwest::Client::new()
        .post(server.url())
        .headers(headers)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        message(&body).contains("two Authorization headers"),
        "{body}"
    );
}

/// A task request naming a tool twice in `resources` is refused: JSON would otherwise keep the
/// last, and which of the two the requester meant is a guess.
#[tokio::test(flavor = "multi_thread")]
async fn a_tool_named_twice_in_resources_is_refused() {
    let cg = Capgate::new();
    let agent = cg.mint("acme-agent", "acme", &["fs_read"], &[]);
    let server = cg.serve_http();
    let body = r#"{"purpose":"p","tools":["fs_read"],"resources":{"fs_read":["acme/docs/"],"fs_read":["globex/"]}}"#;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tasks", server.base()))
        .bearer_auth(&agent)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(message(&body).contains("`fs_read` twice"), "{body}");
    assert!(cg.task_list().trim().is_empty(), "nothing was issued");
}

/// A hard link inside a granted directory to a file outside it is neither read nor appended to.
#[tokio::test(flavor = "multi_thread")]
async fn a_hard_link_does_not_reach_outside_the_grant() {
    let cg = Capgate::new();
    std::fs::hard_link(
        cg.outside.join("secret.txt"),
        cg.root.join("acme/docs/link.txt"),
    )
    .unwrap();
    let before = cg.outside_snapshot();
    let task = acme_task(
        &cg,
        &["fs_read", "fs_write"],
        &["fs_read=acme/docs/", "fs_write=acme/docs/"],
    );
    let client = cg.stdio_client(Some(&task)).await;
    let r = call(&client, "fs_read", json!({"path": "acme/docs/link.txt"}))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert!(
        text(&r).contains("hard links") && !text(&r).contains("outside secret"),
        "{}",
        text(&r)
    );
    let r = call(
        &client,
        "fs_write",
        json!({"path": "acme/docs/link.txt", "content": "x", "append": true}),
    )
    .await
    .unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        cg.outside_snapshot(),
        before,
        "the file outside is unchanged"
    );
    client.cancel().await.unwrap();
}

/// A grant naming a file covers that file only, not every name it is a prefix of.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_grant_is_not_a_string_prefix() {
    let cg = Capgate::new();
    std::fs::write(cg.root.join("acme/docs/readme.txt.secret"), "not granted\n").unwrap();
    std::fs::create_dir_all(cg.root.join("acme/docs/readme.txt-old")).unwrap();
    std::fs::write(cg.root.join("acme/docs/readme.txt-old/x"), "not granted\n").unwrap();
    let task = acme_task(&cg, &["fs_read"], &["fs_read=acme/docs/readme.txt"]);
    let client = cg.stdio_client(Some(&task)).await;
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    for path in ["acme/docs/readme.txt.secret", "acme/docs/readme.txt-old/x"] {
        let d = call_denied(&client, "fs_read", json!({"path": path})).await;
        assert_eq!(d["reason"], "resource_not_granted", "{path}: {d}");
    }
    client.cancel().await.unwrap();
}

/// capgate's own state is never reachable through a tool, even when the fs root holds it: the
/// root key cannot be read, listed or searched, nor granted.
#[tokio::test(flavor = "multi_thread")]
async fn capgates_own_state_is_out_of_reach_under_the_root() {
    let cg = Capgate::new();
    // The fs root is the installation's directory itself, state and all (`serve --root .`).
    cg.rewrite_config("state_dir = \"state\"\n\n[tools.fs]\nroot = \".\"\n");
    let agent = cg.mint("ops", "default", &["fs_read", "fs_list", "fs_search"], &[]);
    let refused = cg
        .begin_cli(
            &agent,
            "steal the key",
            &["fs_read"],
            &["fs_read=state/"],
            &[],
        )
        .unwrap_err();
    assert!(refused.contains("capgate's own state"), "{refused}");
    let (_id, task) = cg.task(&agent, &["fs_read", "fs_list", "fs_search"], &[]);
    let client = cg.stdio_client(Some(&task)).await;
    let d = call_invalid(&client, "fs_read", json!({"path": "state/root.key"})).await;
    assert!(message(&d).contains("capgate's own state"), "{d}");
    let listed = call_ok(&client, "fs_list", json!({"path": "."})).await;
    assert!(
        !structured(&listed).to_string().contains("\"state\""),
        "{listed:?}"
    );
    let found = call_ok(
        &client,
        "fs_search",
        json!({"path": ".", "pattern": "ed25519-private"}),
    )
    .await;
    assert_eq!(structured(&found)["matches"], json!([]), "{found:?}");
    client.cancel().await.unwrap();
}

/// Malformed `Host` values are refused, not matched by prefix.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_hosts_are_refused() {
    let cg = Capgate::new();
    let server = cg.serve_http();
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("[::1].evil.example:{port}"),
        format!("localhost@evil.example:{port}"),
        format!("evil@localhost:{port}"),
        "localhost.evil.example".to_owned(),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}/healthz", server.base()))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{host}");
    }
}
