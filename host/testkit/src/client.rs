//! Talking to capgate as an MCP client does: calls, results, denials, JSON-RPC errors, and
//! tokens narrowed offline as a sub-agent would.

use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Map, Value, json};

use crate::install::Client;

/// Arguments from a JSON object literal.
pub fn args(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("arguments must be an object"),
    }
}

/// Calls a tool; `Err` is a JSON-RPC error.
pub async fn call(
    client: &Client,
    tool: &str,
    arguments: Value,
) -> Result<CallToolResult, rmcp::ServiceError> {
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args(arguments)))
        .await
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

/// Names of the tools a client sees.
pub async fn tool_names(client: &Client) -> Vec<String> {
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
pub async fn call_invalid(client: &Client, tool: &str, arguments: Value) -> Value {
    let r = call(client, tool, arguments).await.unwrap_or_else(|e| {
        panic!("`{tool}`: expected an isError result, got a protocol error: {e:?}")
    });
    let mut d = invalid(&r);
    d["text"] = json!(text(&r));
    d
}
