//! An agent's side of capgate: connect with an agent token, declare a task, work inside it,
//! end it. This is what an LLM host does through the in-band `task_begin` / `task_end` tools.
//!
//! ```text
//! capgate serve --http 127.0.0.1:8080 &
//! export CAPGATE_TOKEN=$(capgate token mint --agent reader --tenant default --tool fs_list --tool fs_read)
//! CAPGATE_URL=http://127.0.0.1:8080/mcp cargo run --example agent_client -- docs/
//! ```

use std::process::ExitCode;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Map, Value, json};

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent_client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    capgate::server::install_crypto_provider();
    let url = std::env::var("CAPGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/mcp".into());
    let token =
        std::env::var("CAPGATE_TOKEN").map_err(|_| "set CAPGATE_TOKEN to an agent token")?;
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(token),
    );
    let client = ().serve(transport).await?;
    let names = |tools: Vec<rmcp::model::Tool>| {
        tools
            .into_iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    };
    println!(
        "before the task, tools/list: {:?}",
        names(client.list_all_tools().await?)
    );

    // Declare exactly what the task needs; capgate's issuance policy decides.
    let begun = client
        .call_tool(
            CallToolRequestParams::new("task_begin").with_arguments(object(json!({
                "purpose": format!("List and read the files under {dir}"),
                "tools": ["fs_list", "fs_read"],
                "resources": {"fs_list": [dir.clone()], "fs_read": [dir.clone()]},
                "ttl": "5m"
            }))),
        )
        .await?;
    if begun.is_error == Some(true) {
        return Err(format!("task refused: {:?}", begun.structured_content).into());
    }
    let task = begun.structured_content.unwrap_or_default();
    println!("task {} granted {}", task["task_id"], task["granted"]);
    println!(
        "inside the task, tools/list: {:?}",
        names(client.list_all_tools().await?)
    );

    let listing = client
        .call_tool(
            CallToolRequestParams::new("fs_list").with_arguments(object(json!({"path": dir}))),
        )
        .await?;
    let entries = listing.structured_content.unwrap_or_default()["entries"].clone();
    for e in entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "file")
        .take(3)
    {
        let path = format!(
            "{}/{}",
            dir.trim_end_matches('/'),
            e["name"].as_str().unwrap_or("")
        );
        let read = client
            .call_tool(
                CallToolRequestParams::new("fs_read").with_arguments(object(json!({"path": path}))),
            )
            .await?;
        let bytes = read.structured_content.unwrap_or_default()["bytes"].clone();
        println!("read {path}: {bytes} bytes");
    }
    // Something the task did not declare: the guard refuses and says which check failed.
    let outside = client
        .call_tool(
            CallToolRequestParams::new("fs_write")
                .with_arguments(object(json!({"path": "x.txt", "content": "x"}))),
        )
        .await?;
    println!(
        "fs_write (not declared): {:?}",
        outside.structured_content.unwrap_or_default()["capgate"]["message"]
    );

    client
        .call_tool(CallToolRequestParams::new("task_end"))
        .await?;
    println!("task ended; its token and every token derived from it are revoked");
    client.cancel().await?;
    Ok(())
}
