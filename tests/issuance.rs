//! Issuance happy paths against the real binary: over HTTP (`/v1/tasks`), from the CLI, and
//! in-band (`task_begin` / `task_end`) over stdio and HTTP, with approval asked through MCP
//! elicitation; tokens narrowed by the `biscuit-auth` crate directly, and per-call `_meta` tokens.

use std::sync::{Arc, Mutex};

use capgate_testkit::*;
use reqwest::Method;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ClientCapabilities, ClientConfig, ElicitRequestParams,
    ElicitResult, ElicitationAction, Implementation, InputRequest, ProtocolVersion,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, Peer, RequestContext, RoleClient, RunningService,
    ServiceExt,
};
use rmcp::{ClientHandler, ErrorData};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn issuance_over_http() {
    let cg = Capgate::new();
    let agent = cg.mint(
        "writer",
        "acme",
        &["fs_read", "fs_write"],
        &["fs_write=acme/out/"],
    );
    let stranger = cg.mint("stranger", "acme", &["fs_read"], &[]);
    let server = cg.serve_http();
    let intent = json!({
        "purpose": "Write the weekly report",
        "tools": ["fs_read", "fs_write"],
        "resources": {"fs_read": ["acme/docs/"], "fs_write": ["acme/out/report.txt"]},
        "ttl": 600,
        "on_behalf_of": "alice"
    });
    let approval = cg.approval("bob", Some("writer"));
    let resp = server.post_task(&agent, Some(&approval), &intent).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let id = body["task_id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/tasks/{id}"));
    let root = cg.root.display();
    assert_eq!(
        body["granted"],
        json!({"fs_read": [format!("{root}/acme/docs/")], "fs_write": [format!("{root}/acme/out/report.txt")]})
    );
    assert_eq!(body["trace_id"].as_str().unwrap().len(), 32);
    let token = body["token"].as_str().unwrap();

    let client = server.client(token).await;
    let report = json!({"path": "acme/out/report.txt", "content": "weekly"});
    call_ok(&client, "fs_write", report).await;
    let other = json!({"path": "acme/out/other.txt", "content": "x"});
    let d = call_denied(&client, "fs_write", other).await;
    assert_eq!(d["reason"], "resource_not_granted");
    client.cancel().await.unwrap();

    let got = server.task_json(Method::GET, id, &agent).await;
    assert_eq!(got["active"], true);
    assert_eq!(got["task"]["intent"]["on_behalf_of"], "alice");
    assert_eq!(got["task"]["intent"]["approved_by"], "bob");
    assert!(
        got["task"].get("token").is_none(),
        "the store never holds the bearer token"
    );
    let usage = got["usage"].as_array().unwrap();
    assert_eq!(usage[0]["tool"], "fs_write");
    assert_eq!(usage[0]["calls"], 2);
    assert_eq!(usage[0]["denied"], 1);
    // Another agent learns nothing about the task and cannot end it.
    for method in [Method::GET, Method::DELETE] {
        let resp = server.task_request(method.clone(), id, &stranger).await;
        assert_eq!(resp.status(), 404, "{method} by another agent");
    }
    // The task token itself may end its task.
    let ended = server.task_json(Method::DELETE, id, token).await;
    assert_eq!(ended["ended"], true);
    let got = server.task_json(Method::GET, id, &agent).await;
    assert_eq!(got["active"], false);
    assert_eq!(got["task"]["end_reason"], "completed");
}

/// Approval over HTTP is an operator-minted token, never the requester's word: a name in the
/// body, a forged or foreign approval, one bound to another agent, a revoked one, a spent one
/// and an agent token posing as one are refused, and no task comes of them.
#[tokio::test(flavor = "multi_thread")]
async fn approval_cannot_be_asserted_by_the_agent() {
    let cg = Capgate::new();
    let agent = cg.mint("writer", "acme", &["fs_write"], &[]);
    let server = cg.serve_http();
    let intent = json!({"purpose": "Write", "tools": ["fs_write"], "resources": {"fs_write": ["acme/out/"]}});
    // No approval at all: the policy's rule refuses.
    let body = server.post_task_refused(&agent, &intent, 403).await;
    assert_eq!(body["reason"], "approval-required", "{body}");
    // A name written by the requester.
    let mut asserted = intent.clone();
    asserted["approved_by"] = json!("boss");
    let resp = server.post_task(&agent, None, &asserted).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("Capgate-Approval"));
    // Approvals that are not valid here.
    let other = Capgate::new();
    let revoked = cg.approval("lead", None);
    cg.stdout_of(&["token", "revoke", &revoked]);
    for (why, approval) in [
        (
            "bound to another agent",
            cg.approval("lead", Some("someone-else")),
        ),
        ("signed by another root key", other.approval("lead", None)),
        ("an agent token", agent.clone()),
        ("garbage", "not-a-token".to_owned()),
        ("revoked", revoked),
    ] {
        let resp = server.post_task(&agent, Some(&approval), &intent).await;
        assert_eq!(resp.status(), 403, "{why}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "approval_refused", "{why}: {body}");
    }
    let tasks = cg.task_list();
    assert_eq!(tasks, "", "no task was issued: {tasks}");
    // A valid approval for this agent: issued, with the approver recorded.
    let approval = cg.approval("lead", Some("writer"));
    let resp = server.post_task(&agent, Some(&approval), &intent).await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    // One approval, one request: presented again, it is spent.
    let again = server.post_task(&agent, Some(&approval), &intent).await;
    assert_eq!(again.status(), 403);
    assert!(again.text().await.unwrap().contains("spent"));
    let shown = cg.show_task(body["task_id"].as_str().unwrap());
    assert_eq!(shown["task"]["intent"]["approved_by"], "lead");
}

#[tokio::test(flavor = "multi_thread")]
async fn issuance_from_the_cli_and_inspection() {
    let cg = Capgate::new();
    let agent = cg.mint("cli-agent", "acme", &["fs_read"], &[]);
    let v = cg
        .begin_cli(
            &agent,
            "read the docs",
            &["fs_read"],
            &["fs_read=acme/docs/"],
            &["--ttl", "5m"],
        )
        .unwrap();
    let token = v["token"].as_str().unwrap();
    let inspected: Value =
        serde_json::from_str(&cg.stdout_of(&["token", "inspect", "--json", token])).unwrap();
    assert!(
        inspected["verification"]
            .as_str()
            .unwrap()
            .starts_with("verified against ed25519/")
    );
    assert_eq!(inspected["identity"]["agent"], "cli-agent");
    let blocks = inspected["blocks"].as_array().unwrap();
    assert_eq!(
        blocks.len(),
        2,
        "the task token is the agent token plus one block"
    );
    assert!(
        blocks[0]["datalog"]
            .as_str()
            .unwrap()
            .contains("right(\"fs_read\")")
    );
    let task_block = blocks[1]["datalog"].as_str().unwrap();
    assert!(
        task_block.contains(&format!(
            "granted_prefix(\"fs_read\", \"{}/acme/docs/\")",
            cg.root.display()
        )),
        "{task_block}"
    );
    assert!(
        task_block.contains("check if time($time), $time <="),
        "{task_block}"
    );
    assert_eq!(blocks[1]["revocation_id"].as_str().unwrap().len(), 128);
    // The human rendering says the same.
    let out = cg.run(&["token", "inspect", token]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("── block 1 ──"), "{shown}");
    // A token of another installation is shown, but does not verify.
    let other = Capgate::new();
    let foreign = other.mint("x", "acme", &["fs_read"], &[]);
    let out = cg.run(&["token", "inspect", &foreign]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("does NOT verify"));

    let notes = json!({"path": "acme/docs/notes.md"});
    let client = cg.stdio_client(Some(token)).await;
    call_ok(&client, "fs_read", notes.clone()).await;
    client.cancel().await.unwrap();
    cg.stdout_of(&["task", "end", v["task_id"].as_str().unwrap()]);
    let client = cg.stdio_client(Some(token)).await;
    let d = call_denied(&client, "fs_read", notes).await;
    assert_eq!(d["reason"], "token_revoked");
    client.cancel().await.unwrap();
}

/// A client whose human answers approval requests, and which records what it was asked.
#[derive(Clone)]
struct Human {
    answer: Option<(bool, &'static str)>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Human {
    fn answering(answer: Option<(bool, &'static str)>) -> Self {
        Human {
            answer,
            asked: Arc::default(),
        }
    }

    /// Connects as this human's client to a stdio session presenting `agent`.
    async fn connect(&self, cg: &Capgate, agent: &str) -> RunningService<RoleClient, Human> {
        self.clone()
            .serve(cg.stdio_transport(Some(agent), &[]))
            .await
            .unwrap()
    }

    /// The same, speaking MCP 2026-07-28 (`server/discover`, no `initialize`, no
    /// server-initiated requests).
    async fn connect_2026(&self, cg: &Capgate, agent: &str) -> RunningService<RoleClient, Human> {
        self.clone()
            .serve_with_lifecycle(
                cg.stdio_transport(Some(agent), &[]),
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .unwrap()
    }
}

impl ClientHandler for Human {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        if let ElicitRequestParams::FormElicitationParams { message, .. } = &request {
            self.asked.lock().unwrap().push(message.clone());
        }
        Ok(match self.answer {
            Some((approve, name)) => ElicitResult::new(ElicitationAction::Accept)
                .with_content(json!({"approve": approve, "approver": name})),
            None => ElicitResult::new(ElicitationAction::Decline),
        })
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("test-human", "1.0.0"),
        )
    }
}

/// The human was asked once, about the request (its purpose, tool and whom it acts for), and the
/// task `r` begun names them as approver.
fn assert_asked_and_approved(cg: &Capgate, asked: &[String], r: rmcp::model::CallToolResult) {
    assert_eq!(asked.len(), 1, "one question");
    assert!(
        asked[0].contains("Save the summary")
            && asked[0].contains("fs_write")
            && asked[0].contains("carol"),
        "{}",
        asked[0]
    );
    let id = r.structured_content.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cg.show_task(&id)["task"]["intent"]["approved_by"], "Alice");
}

/// An agent token's session begins a task in-band, acts under it, and ends it.
async fn in_band_flow(client: &Peer<RoleClient>, cg: &Capgate) {
    let readme = json!({"path": "acme/docs/readme.txt"});
    assert_eq!(tool_names(client).await, vec!["task_begin", "task_end"]);
    let d = call_denied(client, "fs_read", readme.clone()).await;
    assert_eq!(
        d["reason"], "task-required",
        "an agent's own token is not enough"
    );

    let intent = json!({
        "purpose": "Summarize the docs",
        "tools": ["fs_read"],
        "resources": {"fs_read": ["acme/docs/"]},
        "ttl": "5m"
    });
    let begun = call_ok(client, "task_begin", intent)
        .await
        .structured_content
        .unwrap();
    assert_eq!(begun["bound_to_session"], true);
    assert_eq!(
        tool_names(client).await,
        vec!["fs_read", "task_begin", "task_end"]
    );
    // The session now acts under the task.
    call_ok(client, "fs_read", readme.clone()).await;
    let shared = json!({"path": "shared/common.txt"});
    let d = call_denied(client, "fs_read", shared).await;
    assert_eq!(d["reason"], "resource_not_granted");

    let r = client
        .call_tool(CallToolRequestParams::new("task_end"))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let d = call_denied(client, "fs_read", readme).await;
    assert_eq!(
        d["reason"], "task-required",
        "ending the task ends the session's access"
    );
    let task_id = begun["task_id"].as_str().unwrap();
    assert_eq!(cg.show_task(task_id)["task"]["end_reason"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_tasks_over_stdio_and_http() {
    let cg = Capgate::new();
    let agent = cg.mint("llm", "acme", &["fs_read"], &[]);
    let client = cg.stdio_client(Some(&agent)).await;
    in_band_flow(&client, &cg).await;
    client.cancel().await.unwrap();
    let server = cg.serve_http();
    let client = server.client(&agent).await;
    in_band_flow(&client, &cg).await;
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn in_band_approval_is_asked_through_elicitation() {
    // The operator trusts the MCP client to show the question to a person (off by default).
    let cg = Capgate::with_config("[policy]\nelicitation_approval = true\n");
    let agent = cg.mint("llm", "acme", &["fs_write"], &[]);
    let intent = json!({"purpose": "Save the summary", "tools": ["fs_write"], "resources": {"fs_write": ["acme/out/"]},
                        "on_behalf_of": "carol"});

    // A human who says yes: the task is issued with them as approver.
    let yes = Human::answering(Some((true, "Alice")));
    let client = yes.connect(&cg, &agent).await;
    let r = call_ok(&client, "task_begin", intent.clone()).await;
    let asked = yes.asked.lock().unwrap().clone();
    assert_asked_and_approved(&cg, &asked, r);
    let summary = json!({"path": "acme/out/summary.txt", "content": "ok"});
    call_ok(&client, "fs_write", summary).await;
    client.cancel().await.unwrap();

    // A human who says no, one who declines the form, and a client without elicitation: refused.
    let no = Human::answering(Some((false, "Mallory")));
    let declines = Human::answering(None);
    for human in [no, declines] {
        let client = human.connect(&cg, &agent).await;
        let d = call_denied(&client, "task_begin", intent.clone()).await;
        assert_eq!(d["reason"], "approval-required");
        assert_eq!(human.asked.lock().unwrap().len(), 1, "the human was asked");
        client.cancel().await.unwrap();
    }
    let client = cg.stdio_client(Some(&agent)).await;
    let d = call_denied(&client, "task_begin", intent.clone()).await;
    assert_eq!(d["reason"], "approval-required");
    // The model cannot vouch for a human by writing a name.
    let mut self_approved = intent.clone();
    self_approved["approved_by"] = json!("Alice");
    let d = call_denied(&client, "task_begin", self_approved).await;
    assert!(d["text"].as_str().unwrap().contains("elicitation"), "{d}");
    client.cancel().await.unwrap();
    let tasks = cg.task_list();
    assert_eq!(
        tasks.lines().count(),
        1,
        "only the approved task exists: {tasks}"
    );
}

/// On MCP 2026-07-28 there is no `elicitation/create` from the server: the approval question is
/// an input-required result, which rmcp's client answers through its handler and retries
/// (multi round-trip requests). The same rules: a yes becomes `approved_by`, a no refuses. The
/// round trip's state is a handle capgate keeps: forged, replayed or altered retries are refused.
#[tokio::test(flavor = "multi_thread")]
async fn in_band_approval_is_asked_by_round_trip_on_2026_07_28() {
    let cg = Capgate::with_config("[policy]\nelicitation_approval = true\n");
    let agent = cg.mint("llm", "acme", &["fs_write"], &[]);
    let intent = json!({"purpose": "Save the summary", "tools": ["fs_write"],
                        "resources": {"fs_write": ["acme/out/"]}, "on_behalf_of": "carol"});
    let begin = || CallToolRequestParams::new("task_begin").with_arguments(args(intent.clone()));

    let yes = Human::answering(Some((true, "Alice")));
    let client = yes.connect_2026(&cg, &agent).await;
    assert_eq!(
        client.peer_info().unwrap().protocol_version,
        ProtocolVersion::V_2026_07_28
    );
    let r = client.call_tool(begin()).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let asked = yes.asked.lock().unwrap().clone();
    assert_asked_and_approved(&cg, &asked, r);
    call_ok(
        &client,
        "fs_write",
        json!({"path": "acme/out/summary.txt", "content": "ok"}),
    )
    .await;

    // Driven by hand: the first answer is the question, with an opaque handle.
    let CallToolResponse::InputRequired(q) = client.call_tool_once(begin()).await.unwrap() else {
        panic!("an input-required result");
    };
    let handle = q.request_state.clone().expect("a requestState");
    let questions = q.input_requests.clone().expect("inputRequests");
    assert!(matches!(
        questions["approval"],
        InputRequest::Elicitation(_)
    ));
    let accept = json!({"action": "accept", "content": {"approve": true, "approver": "Eve"}});
    let retry = |state: &str, args: Value| {
        let mut p = CallToolRequestParams::new("task_begin")
            .with_arguments(self::args(args))
            .with_request_state(state.to_owned());
        p.input_responses = Some([("approval".to_owned(), accept.clone())].into());
        p
    };
    // Other arguments than the ones the human was asked about: refused, and the handle spent.
    let mut wider = intent.clone();
    wider["resources"]["fs_write"] = json!(["acme/"]);
    let r = client.call_tool(retry(&handle, wider)).await.unwrap();
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        structured(&r)["capgate"]["reason"],
        "invalid_request",
        "{r:?}"
    );
    assert!(
        text(&r).contains("not the request the human was asked about"),
        "{r:?}"
    );
    let r = client
        .call_tool(retry(&handle, intent.clone()))
        .await
        .unwrap();
    assert!(text(&r).contains("no open approval question"), "{r:?}");
    // A made-up handle: refused, nothing issued.
    let r = client
        .call_tool(retry("0123456789abcdef", intent.clone()))
        .await
        .unwrap();
    assert!(text(&r).contains("no open approval question"), "{r:?}");
    client.cancel().await.unwrap();

    // A human who says no, and one who dismisses the form: refused as unapproved.
    for human in [
        Human::answering(Some((false, "Mallory"))),
        Human::answering(None),
    ] {
        let client = human.connect_2026(&cg, &agent).await;
        let r = client.call_tool(begin()).await.unwrap();
        assert_eq!(denial(&r)["reason"], "approval-required", "{r:?}");
        assert_eq!(human.asked.lock().unwrap().len(), 1, "the human was asked");
        client.cancel().await.unwrap();
    }
    let tasks = cg.task_list();
    assert_eq!(
        tasks.lines().count(),
        1,
        "only the approved task exists: {tasks}"
    );
}

/// By default (`elicitation_approval = false`) the human is not asked in-band: the client relaying the
/// answer may be the agent itself. The request is refused as unapproved.
#[tokio::test(flavor = "multi_thread")]
async fn elicitation_approval_is_off_unless_the_operator_turns_it_on() {
    let cg = Capgate::new();
    let agent = cg.mint("llm", "acme", &["fs_write"], &[]);
    let yes = Human::answering(Some((true, "Alice")));
    let client = yes.connect(&cg, &agent).await;
    let intent =
        json!({"purpose": "Save", "tools": ["fs_write"], "resources": {"fs_write": ["acme/out/"]}});
    let d = call_denied(&client, "task_begin", intent.clone()).await;
    assert_eq!(d["reason"], "approval-required");
    assert!(yes.asked.lock().unwrap().is_empty(), "nobody was asked");
    client.cancel().await.unwrap();
    // Nor does an answer count that was never asked for, on either protocol.
    let client = yes.connect_2026(&cg, &agent).await;
    let mut retry = CallToolRequestParams::new("task_begin")
        .with_arguments(args(intent))
        .with_request_state("0123456789abcdef".to_owned());
    retry.input_responses = Some(
        [(
            "approval".to_owned(),
            json!({"action": "accept", "content": {"approve": true, "approver": "Alice"}}),
        )]
        .into(),
    );
    let r = client.call_tool(retry).await.unwrap();
    assert_eq!(r.is_error, Some(true), "{r:?}");
    assert!(text(&r).contains("elicitation_approval"), "{r:?}");
    assert!(yes.asked.lock().unwrap().is_empty(), "nobody was asked");
    client.cancel().await.unwrap();
    assert_eq!(cg.task_list().lines().count(), 0, "nothing was issued");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_attenuated_with_biscuit_auth_directly_work_and_are_narrower() {
    let cg = Capgate::new();
    let agent = cg.mint("parent", "acme", &["fs_read", "fs_list"], &[]);
    let (_id, task) = cg.task(
        &agent,
        &["fs_read", "fs_list"],
        &["fs_read=acme/docs/", "fs_list=acme/docs/"],
    );
    // A sub-agent's block, written with the biscuit-auth crate, not through capgate: one file,
    // reads only, and a shorter life.
    let readme = cg.root.join("acme/docs/readme.txt");
    let derived = attenuate(
        &task,
        &format!(
            "check if resource($r), $r == \"{}\";\ncheck if operation(\"read\"), tool(\"fs_read\");\ncheck if time($t), $t <= 2099-01-01T00:00:00Z;",
            readme.display()
        ),
    );
    let server = cg.serve_http();
    let client = server.client(&derived).await;
    assert_eq!(
        tool_names(&client).await,
        vec!["fs_read", "task_begin", "task_end"]
    );
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    let d = call_denied(&client, "fs_read", json!({"path": "acme/docs/notes.md"})).await;
    assert_eq!(d["reason"], "resource_not_granted", "{d}");
    assert_eq!(d["failed_checks"][0]["source"], "block 2");
    let d = call_denied(&client, "fs_list", json!({"path": "acme/docs"})).await;
    assert_eq!(d["decision"], "deny");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narrower_token_may_be_presented_per_call_in_meta() {
    let cg = Capgate::new();
    let agent = cg.mint("meta", "acme", &["fs_read"], &[]);
    let (_id, task) = cg.task(&agent, &["fs_read"], &["fs_read=acme/docs/"]);
    let narrower = attenuate(
        &task,
        &format!(
            "check if resource($r), $r.starts_with(\"{}\");",
            cg.root.join("acme/docs/notes").display()
        ),
    );
    let unrelated = {
        let other = cg.mint("someone-else", "acme", &["fs_read"], &[]);
        cg.task(&other, &["fs_read"], &["fs_read=acme/docs/"]).1
    };
    let client = cg.stdio_client(Some(&task)).await;
    let with_meta = |token: &str, path: &str| {
        with_token_in_meta(call_params("fs_read", json!({"path": path})), token)
    };
    let r = client
        .call_tool(with_meta(&narrower, "acme/docs/notes.md"))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let r = client
        .call_tool(with_meta(&narrower, "acme/docs/readme.txt"))
        .await
        .unwrap();
    assert_eq!(
        denial(&r)["decision"],
        "deny",
        "the per-call token's narrowing applies"
    );
    let r = client
        .call_tool(with_meta(&unrelated, "acme/docs/readme.txt"))
        .await
        .unwrap();
    assert!(message(&denial(&r)).contains("does not derive from the session's token"));
    // Without _meta the session's token applies.
    call_ok(&client, "fs_read", json!({"path": "acme/docs/readme.txt"})).await;
    client.cancel().await.unwrap();
}

/// In-band `task_begin` acts on the call's own credential: a narrower token sent in `_meta`
/// (the agent token with a block a sub-agent appended) bounds what the task may get, and the
/// task token derives from it. The wider session token is not used instead.
#[tokio::test(flavor = "multi_thread")]
async fn in_band_task_begin_acts_on_the_narrower_meta_token() {
    let cg = Capgate::new();
    let agent = cg.mint("narrow", "acme", &["fs_read", "fs_list"], &[]);
    let narrower = attenuate(&agent, "check if tool($t), [\"fs_list\"].contains($t);");
    let client = cg.stdio_client(Some(&agent)).await;
    let begin = |tool: &str, meta: Option<&str>| {
        let p = call_params(
            "task_begin",
            json!({"purpose": "narrowed", "tools": [tool], "resources": {tool: ["acme/docs/"]}}),
        );
        match meta {
            Some(token) => with_token_in_meta(p, token),
            None => p,
        }
    };
    let r = client
        .call_tool(begin("fs_read", Some(&narrower)))
        .await
        .unwrap();
    let d = denial(&r);
    assert_eq!(
        d["reason"], "tool_not_granted",
        "the narrowing block refused: {d}"
    );
    let listed = cg.task_list();
    assert_eq!(listed.lines().count(), 0, "no task was issued: {listed}");

    let r = client
        .call_tool(begin("fs_list", Some(&narrower)))
        .await
        .unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    let token = r.structured_content.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let blocks = biscuit_auth::UnverifiedBiscuit::from_base64(&token)
        .unwrap()
        .block_count();
    assert_eq!(
        blocks, 3,
        "agent block, the sub-agent's block, the task block"
    );
    // Without `_meta` the session's own (wider) token applies.
    let r = client.call_tool(begin("fs_read", None)).await.unwrap();
    assert_eq!(r.is_error, Some(false), "{r:?}");
    client.cancel().await.unwrap();
}
