//! MCP over the process's standard input and output. stdout carries protocol messages only;
//! everything capgate says to people goes to stderr.

use capgate_authz::Transport;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::host::Host;

/// Serves one MCP client on stdin/stdout until it disconnects or `shutdown` fires.
/// `token` is the session credential (`CAPGATE_TOKEN`).
pub async fn serve_stdio(
    host: &Host,
    token: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let session = host.session(Transport::Stdio, token);
    let running = session
        .serve_with_ct(rmcp::transport::stdio(), shutdown.child_token())
        .await
        .map_err(|e| Error::Mcp {
            context: "starting the stdio MCP session",
            source: Box::new(e),
        })?;
    running.waiting().await.map_err(|e| Error::Mcp {
        context: "serving MCP over stdio",
        source: Box::new(e),
    })?;
    Ok(())
}
