//! MCP over the process's standard input and output. stdout carries protocol messages only;
//! everything capgate says to people goes to stderr.

use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::guard::Transport;
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
        .map_err(|e| {
            Error::io(
                "starting the stdio MCP session",
                std::io::Error::other(e.to_string()),
            )
        })?;
    running.waiting().await.map_err(|e| {
        Error::io(
            "serving MCP over stdio",
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(())
}
