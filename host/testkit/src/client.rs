//! Talking to capgate as an MCP client does: calls, results, denials, JSON-RPC errors, and
//! tokens narrowed offline as a sub-agent would.

use rmcp::model::{CallToolRequestParams, CallToolResult, RequestMetaObject};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Map, Value, json};

/// An rmcp client with no handler of its own.
pub type Client = rmcp::service::RunningService<rmcp::service::RoleClient, ()>;

/// Arguments from a JSON object literal.
pub fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("arguments must be an object"),
    }
}

/// Calls a tool; `Err` is a JSON-RPC error. Takes any client (a [`Client`](crate::Client) or
/// one with a handler of its own) through the peer it derefs to.
pub async fn call(
    client: &Peer<RoleClient>,
    tool: &str,
    arguments: Value,
) -> Result<CallToolResult, rmcp::ServiceError> {
    client.call_tool(call_params(tool, arguments)).await
}

/// The `tools/call` parameters of `tool` with `arguments`, for calls [`call`] cannot make.
pub fn call_params(tool: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments))
}

/// `params` presenting `token` for this call only, in `_meta` (`capgate/token`), instead of
/// the session's token.
pub fn with_token_in_meta(mut params: CallToolRequestParams, token: &str) -> CallToolRequestParams {
    let mut meta = RequestMetaObject::default();
    meta.0
        .0
        .insert("capgate/token".into(), Value::String(token.to_owned()));
    params.meta = Some(meta);
    params
}

/// Calls a tool that must answer with a result that is not an error; the result.
pub async fn call_ok(client: &Peer<RoleClient>, tool: &str, arguments: Value) -> CallToolResult {
    let r = call(client, tool, arguments)
        .await
        .unwrap_or_else(|e| panic!("`{tool}`: expected a result, got a protocol error: {e:?}"));
    assert_eq!(
        r.is_error,
        Some(false),
        "`{tool}`: expected success, got {r:?}"
    );
    r
}

/// Calls a tool where the call must not even reach the guard (the transport refuses it, as
/// for an open HTTP session whose token was revoked); the error.
pub async fn call_refused(
    client: &Peer<RoleClient>,
    tool: &str,
    arguments: Value,
) -> rmcp::ServiceError {
    call(client, tool, arguments)
        .await
        .expect_err("the call must be refused before it is answered")
}

/// Calls a tool the guard must refuse; the denial's details, with the text the model reads
/// under `"text"` (so a test can check the refusal leaked nothing the tool would have read).
pub async fn call_denied(client: &Peer<RoleClient>, tool: &str, arguments: Value) -> Value {
    let r = call(client, tool, arguments)
        .await
        .unwrap_or_else(|e| panic!("`{tool}`: expected a denial, got a protocol error: {e:?}"));
    let mut d = denial(&r);
    d["text"] = json!(text(&r));
    d
}

/// A result's structured content; panics when there is none.
pub fn structured(r: &CallToolResult) -> &Value {
    r.structured_content
        .as_ref()
        .unwrap_or_else(|| panic!("no structured content in {r:?}"))
}

/// The `message` of a denial, a refusal or an HTTP error body; panics when there is none.
pub fn message(v: &Value) -> &str {
    v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no `message` in {v}"))
}

/// The text of a result's first text block.
pub fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The guard's denial details from a denied result.
pub fn denial(r: &CallToolResult) -> Value {
    assert_eq!(r.is_error, Some(true), "expected a denial, got {r:?}");
    r.structured_content.clone().unwrap_or(json!(null))["capgate"].clone()
}

/// The JSON-RPC error code of a failed call.
pub fn rpc_code(e: &rmcp::ServiceError) -> i32 {
    match e {
        rmcp::ServiceError::McpError(d) => d.code.0,
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

pub fn rpc_message(e: &rmcp::ServiceError) -> String {
    match e {
        rmcp::ServiceError::McpError(d) => d.message.to_string(),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// Names of the tools a client sees, sorted.
pub async fn tool_names(client: &Peer<RoleClient>) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .expect("tools/list")
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    names.sort();
    names
}

/// Appends a block to a token offline, as a sub-agent would with any Biscuit library.
pub fn attenuate(token: &str, datalog: &str) -> String {
    use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
    let t = UnverifiedBiscuit::from_base64(token).expect("token parses");
    t.append(
        BlockBuilder::new()
            .code(datalog)
            .expect("block datalog parses"),
    )
    .expect("append")
    .to_base64()
    .expect("encode")
}

/// The details of a call refused for its arguments: a tool execution error (`isError: true`,
/// SEP-1303), not a protocol error, whose structured content names the tool, the field and the
/// rule. Panics on anything else.
pub fn invalid(r: &CallToolResult) -> Value {
    assert_eq!(
        r.is_error,
        Some(true),
        "expected refused arguments, got {r:?}"
    );
    let d = r.structured_content.clone().unwrap_or(json!(null))["capgate"].clone();
    assert_eq!(
        d["decision"], "invalid",
        "expected refused arguments, got {r:?}"
    );
    assert_eq!(d["reason"], "invalid_arguments", "{d}");
    d
}

/// Calls a tool whose arguments must be refused; the refusal's details, with the text the model
/// reads under `"text"`.
pub async fn call_invalid(client: &Peer<RoleClient>, tool: &str, arguments: Value) -> Value {
    let r = call(client, tool, arguments).await.unwrap_or_else(|e| {
        panic!("`{tool}`: expected an isError result, got a protocol error: {e:?}")
    });
    let mut d = invalid(&r);
    d["text"] = json!(text(&r));
    d
}
