//! Streamable HTTP: MCP at `/mcp` (rmcp's service), the task API at `/v1/tasks`.
//!
//! Layers, outermost first: `Host`/`Origin` validation ([`origin`], 403), then for every route
//! but `/healthz` bearer authentication ([`auth`], 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`, or 503 when capgate cannot check), then, for `/mcp`, session
//! ownership and request ids ([`sessions`]), then the route ([`tasks`], or rmcp's MCP service). Bodies over `[server] max_request_bytes` get 413.

mod auth;
mod origin;
mod sessions;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use capgate_authz::Transport;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::host::Host;

pub use tasks::APPROVAL_HEADER;

/// How to run the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Listen address.
    pub addr: SocketAddr,
    /// Development only: a token to use for requests without `Authorization`. Refused unless
    /// `addr` is a loopback address.
    pub headerless_token: Option<String>,
}

/// Serves until `shutdown` fires; `on_ready` gets the bound address (useful with port 0).
pub async fn serve_http(
    host: &Host,
    opts: HttpOptions,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    if opts.headerless_token.is_some() && !opts.addr.ip().is_loopback() {
        return Err(Error::Config {
            file: host.config().source.describe(),
            key: "dev.headerless_token_file".into(),
            message: format!(
                "the header-less development token is only allowed on a loopback address, not {}",
                opts.addr
            ),
        });
    }
    if opts.headerless_token.is_some()
        && host.config().server.allowed_hosts.iter().any(|h| h == "*")
    {
        // Loopback alone does not stop a DNS-rebinding page from reaching the server; the Host
        // check does, and a header-less token would hand such a page a credential.
        return Err(Error::Config {
            file: host.config().source.describe(),
            key: "server.allowed_hosts".into(),
            message: "[\"*\"] cannot be combined with the header-less development token; list the loopback names".into(),
        });
    }
    let config = host.config();
    let router = router(
        host,
        opts.headerless_token.map(Arc::from),
        shutdown.child_token(),
    )?;
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| Error::io(format!("binding {}", opts.addr), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    on_ready(local);
    // An answer is a few small writes (the SSE event, then the end of the stream). With Nagle's
    // algorithm on, the second waits for the client's delayed ACK: 40 ms per call, measured on
    // the bench's plain rmcp server behind a gateway, whose listener was set up as this one
    // (BENCHMARKS.md, the gateway comparison).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(target: "capgate", "TCP_NODELAY not set on a connection: {e}");
        }
    });
    let grace = config.server.shutdown_grace;
    let stop = shutdown.clone();
    let serve = std::future::IntoFuture::into_future(
        axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await }),
    );
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r.map_err(|e| Error::io("serving HTTP", e)),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(target: "capgate", "in-flight requests did not finish within {grace:?}; stopping anyway");
            Ok(())
        }
    }
}

fn router(
    host: &Host,
    headerless: Option<Arc<str>>,
    ct: CancellationToken,
) -> Result<Router, Error> {
    let config = host.config();
    let allowed = Arc::new(origin::Allowed::from_config(
        &config.source.describe(),
        &config.server.allowed_hosts,
        &config.server.allowed_origins,
    )?);
    let gate = Arc::new(auth::Gate {
        host: host.clone(),
        headerless,
    });
    let manager = Arc::new(LocalSessionManager::default());
    let sessions = Arc::new(sessions::Sessions::new(
        Arc::clone(&manager),
        config.server.max_request_bytes,
    ));
    let factory_host = host.clone();
    // Host and Origin are checked once, by capgate's own layer, for the task API and MCP alike;
    // rmcp's copy of the check is switched off.
    let mcp = StreamableHttpService::new(
        move || Ok(factory_host.session(Transport::Http, None)),
        manager,
        StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(config.server.max_request_bytes)
            .with_cancellation_token(ct),
    );
    let authed = Router::new()
        .nest_service("/mcp", mcp)
        .route("/v1/tasks", axum::routing::post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::show).delete(tasks::end))
        .layer(middleware::from_fn_with_state(sessions, sessions::guard))
        .layer(DefaultBodyLimit::max(config.server.max_request_bytes))
        .layer(middleware::from_fn_with_state(gate, auth::authenticate))
        .with_state(host.clone());
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(authed)
        .layer(middleware::from_fn_with_state(allowed, origin::check)))
}
