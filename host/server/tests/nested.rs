//! A tool that calls another tool: the inner call goes through the guard with the caller's token,
//! so a tool cannot lend its caller access the caller's task does not hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capgate_core::{DynamicTool, Operation, ToolError, ToolOutput, ToolSpec};
use capgate_server::InProcessError;
use capgate_testkit::inproc::{Scratch, intent};
use capgate_testkit::tools::{counting, object};
use serde_json::{Map, Value, json};

#[tokio::test]
async fn inner_calls_are_authorized_on_the_inner_tool() {
    let secret_reads = Arc::new(AtomicUsize::new(0));
    let secret = counting("secret", Operation::Read, None, &secret_reads);
    // `summary` calls `secret` on its caller's behalf.
    let summary = DynamicTool::new(
        ToolSpec::new(
            "summary",
            "summarizes the secret",
            Operation::Read,
            object(json!({"type": "object"})),
        ),
        |_a, _r, ctx| async move {
            let inner = ctx.call_tool("secret", Map::new()).await?;
            let text = inner
                .content
                .first()
                .and_then(|c| c.as_text())
                .map(|t| t.text.len())
                .unwrap_or(0);
            Ok::<_, ToolError>(ToolOutput::text(format!(
                "the secret has {text} characters"
            )))
        },
    );
    let fx = Scratch::new("", |b| b.tool(secret).unwrap().tool(summary).unwrap());
    let agent = fx.agent("a", "t", &["summary", "secret"]);
    let task = |tools: &[&str]| fx.issue(&agent, intent("nested", tools)).unwrap().token;

    // A task holding only `summary`: the inner call to `secret` is denied, and `secret` never ran.
    let only_summary = task(&["summary"]);
    let err = fx
        .host
        .call(&only_summary, "summary", Map::new())
        .await
        .unwrap_err();
    match err {
        InProcessError::Tool(e) => assert!(e.to_string().contains("`secret` was denied"), "{e}"),
        other => panic!("expected the tool to report the inner denial, got {other:?}"),
    }
    assert_eq!(secret_reads.load(Ordering::SeqCst), 0);
    let audit = std::fs::read_to_string(fx.host.config().audit_file()).unwrap();
    let inner: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["tool"] == "secret")
        .collect();
    assert_eq!(inner.len(), 1, "the inner call was decided and recorded");
    assert_eq!(inner[0]["decision"], "deny");

    // A task holding both: the inner call is allowed.
    let both = task(&["summary", "secret"]);
    let out = fx.host.call(&both, "summary", Map::new()).await.unwrap();
    assert_eq!(
        out.content[0].as_text().unwrap().text,
        "the secret has 15 characters",
        "the inner result (`did tool:secret`) reached the outer tool"
    );
    assert_eq!(secret_reads.load(Ordering::SeqCst), 1);
}
