//! Delegation: a sub-agent narrows a task token *offline*, with nothing but the biscuit-auth
//! crate, and works with the narrower token. capgate accepts it while the parent task lives (a
//! derived token carries the parent's block), and it can only ever be narrower: later blocks
//! add checks, never rights. Ending the parent task revokes it too.
//!
//! ```text
//! export TASK=$(capgate task begin --token "$AGENT" --purpose demo --tool fs_read --resource fs_read=docs/)
//! CAPGATE_URL=http://127.0.0.1:8080/mcp cargo run --example delegation -- "$TASK" "$PWD/workspace/docs/a.txt"
//! ```

use std::process::ExitCode;

use biscuit_auth::{BlockBuilder, UnverifiedBiscuit};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Map, Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delegation: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    capgate::server::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let task_token = args
        .next()
        .ok_or("usage: delegation <task token> <absolute file path>")?;
    let file = args
        .next()
        .ok_or("usage: delegation <task token> <absolute file path>")?;
    let url = std::env::var("CAPGATE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/mcp".into());

    // The sub-agent's block: this one file, reads only, ten minutes. No key is needed to append.
    let expiry = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(600),
    );
    let block = BlockBuilder::new().code(format!(
        "check if resource($r), $r == {file:?};\ncheck if operation(\"read\");\ncheck if time($t), $t <= {expiry};"
    ))?;
    let derived = UnverifiedBiscuit::from_base64(&task_token)?
        .append(block)?
        .to_base64()?;
    println!(
        "derived token: {} blocks",
        UnverifiedBiscuit::from_base64(&derived)?.block_count()
    );

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).auth_header(derived),
    );
    let client = ().serve(transport).await?;
    let read = |path: String| {
        CallToolRequestParams::new("fs_read").with_arguments(object(json!({"path": path})))
    };
    let ok = client.call_tool(read(file.clone())).await?;
    println!("read {file}: isError={:?}", ok.is_error);
    let sibling = std::path::Path::new(&file).with_file_name("any-other-file");
    let denied = client
        .call_tool(read(sibling.display().to_string()))
        .await?;
    println!(
        "read {}: {}",
        sibling.display(),
        denied.structured_content.unwrap_or_default()["capgate"]["message"]
    );
    client.cancel().await?;
    Ok(())
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}
