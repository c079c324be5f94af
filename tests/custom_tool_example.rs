//! `examples/custom_tool.rs` — both registration forms of the Tool API — served by the same
//! pipeline as the built-in tools: listed, guarded, approved at issuance.

use capgate_testkit::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn custom_tools_are_hosted_behind_the_same_guard() {
    let cg = Capgate::with_bin(example_bin("custom_tool"), "");
    let agent = cg.mint(
        "triage",
        "acme",
        &["ticket_get", "ticket_create"],
        &["ticket_create=ticket:web/"],
    );
    // ticket_create writes: without an approver the shipped policy refuses the task.
    let err = cg
        .begin_cli(&agent, "file bugs", &["ticket_create"], &[], &[])
        .unwrap_err();
    assert!(err.contains("approval-required"), "{err}");
    let (_id, task) = cg.task(
        &agent,
        &["ticket_get", "ticket_create"],
        &["ticket_create=ticket:web/"],
    );

    let client = cg.stdio_client(Some(&task)).await;
    assert_eq!(
        tool_names(&client).await,
        vec!["task_begin", "task_end", "ticket_create", "ticket_get"]
    );
    // The DynamicTool's run-time schema is enforced before anything else.
    let d = call_invalid(
        &client,
        "ticket_create",
        json!({"project": "web", "title": "x", "priority": "urgent"}),
    )
    .await;
    assert_eq!(d["field"], "priority", "{d}");
    let login = json!({"project": "web", "title": "Login button broken"});
    let r = call_ok(&client, "ticket_create", login).await;
    assert_eq!(structured(&r)["id"], 1);
    // Outside the agent's project prefix (and so the task's): denied, nothing created; the
    // operator's rule is named first, the task block's failed check is listed too.
    let payments = json!({"project": "payments", "title": "x"});
    let d = call_denied(&client, "ticket_create", payments).await;
    assert_eq!(d["reason"], "resource-outside-agent-prefix");
    let checks = d["failed_checks"].as_array().unwrap().clone();
    assert!(
        checks
            .iter()
            .any(|c| c["rule"] == "resource_not_granted" && c["source"] == "block 1"),
        "{checks:?}"
    );
    assert_eq!(d["resource"], "ticket:payments/");
    // The TypedTool reads what the DynamicTool wrote.
    let r = call_ok(&client, "ticket_get", json!({"project": "web", "id": 1})).await;
    assert_eq!(structured(&r)["title"], "Login button broken");
    let second = json!({"project": "web", "title": "Second"});
    let r = call_ok(&client, "ticket_create", second).await;
    assert_eq!(structured(&r)["id"], 2, "the denied call created nothing");
    let missing = json!({"project": "payments", "id": 2});
    let r = call(&client, "ticket_get", missing).await.unwrap();
    assert_eq!(r.is_error, Some(true), "the tool ran and found nothing");
    client.cancel().await.unwrap();
}
