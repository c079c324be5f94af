//! A tool that calls another tool: the inner call goes through the guard with the caller's token,
//! so a tool cannot lend its caller access the caller's task does not hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use capgate_host::capability::{AgentGrant, RootKey, mint_agent_token};
use capgate_host::issuance::{Channel, Intent};
use capgate_host::{
    Config, DynamicTool, HostBuilder, InProcessError, Operation, ToolError, ToolOutput, ToolSpec,
};
use serde_json::{Map, Value, json};

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn inner_calls_are_authorized_on_the_inner_tool() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        "state_dir = \"state\"\n[tools.fs]\nenabled = false\n[tools.http_fetch]\nenabled = false\n",
        &dir.path().join("capgate.toml"),
    )
    .unwrap();
    let secret_reads = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&secret_reads);
    let secret = DynamicTool::new(
        ToolSpec::new(
            "secret",
            "reads a secret",
            Operation::Read,
            object(json!({"type": "object"})),
        ),
        move |_a, _r, _c| {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::text("s3cr3t"))
            }
        },
    );
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
    let host = HostBuilder::new(config)
        .create_key_if_missing(true)
        .tool(secret)
        .unwrap()
        .tool(summary)
        .unwrap()
        .build()
        .unwrap();
    let root = RootKey::load(&host.config().root_key_file()).unwrap();
    let agent = mint_agent_token(
        &root,
        &AgentGrant {
            agent: "a".into(),
            tenant: "t".into(),
            rights: vec!["summary".into(), "secret".into()],
            ttl: Some(Duration::from_secs(600)),
            ..AgentGrant::default()
        },
    )
    .unwrap()
    .to_base64()
    .unwrap();
    let verified = host.verifier().verify(&agent).unwrap();
    let task = |tools: &[&str]| {
        host.issuer()
            .issue(
                &verified,
                Intent {
                    purpose: "nested".into(),
                    tools: tools.iter().map(|t| t.to_string()).collect(),
                    ..Intent::default()
                },
                Channel::Cli,
            )
            .unwrap()
            .token
    };

    // A task holding only `summary`: the inner call to `secret` is denied, and `secret` never ran.
    let only_summary = task(&["summary"]);
    let err = host
        .call(&only_summary, "summary", Map::new())
        .await
        .unwrap_err();
    match err {
        InProcessError::Tool(e) => assert!(e.to_string().contains("`secret` was denied"), "{e}"),
        other => panic!("expected the tool to report the inner denial, got {other:?}"),
    }
    assert_eq!(secret_reads.load(Ordering::SeqCst), 0);
    let audit = std::fs::read_to_string(host.config().audit_file()).unwrap();
    let inner: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["tool"] == "secret")
        .collect();
    assert_eq!(inner.len(), 1, "the inner call was decided and recorded");
    assert_eq!(inner[0]["decision"], "deny");

    // A task holding both: the inner call is allowed.
    let both = task(&["summary", "secret"]);
    let out = host.call(&both, "summary", Map::new()).await.unwrap();
    assert_eq!(
        out.content[0].as_text().unwrap().text,
        "the secret has 6 characters"
    );
    assert_eq!(secret_reads.load(Ordering::SeqCst), 1);
}
