//! Streamable HTTP: MCP at `/mcp` (rmcp's service), the task API at `/v1/tasks`.
//!
//! Layers, outermost first: `Host`/`Origin` validation (403), then for every route but
//! `/healthz` bearer authentication (401 with `WWW-Authenticate: Bearer error="invalid_token"`),
//! then the route. Bodies over `[server] max_request_bytes` get 413.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::capability::{TokenError, VerifiedToken, rfc3339};
use crate::error::Error;
use crate::guard::Transport;
use crate::host::Host;
use crate::issuance::{Channel, Intent, IssuanceError};
use crate::session::Credential;
use crate::store::EndReason;

/// How to run the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Listen address.
    pub addr: SocketAddr,
    /// Development only: a token to use for requests without `Authorization`. Refused unless
    /// `addr` is a loopback address.
    pub headerless_token: Option<String>,
}

#[derive(Clone)]
struct AppState {
    host: Host,
    headerless: Option<Arc<str>>,
    allowed_hosts: Arc<Vec<String>>,
    allowed_origins: Arc<Vec<String>>,
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
    );
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|e| Error::io(format!("binding {}", opts.addr), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("reading the bound address", e))?;
    on_ready(local);
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

fn router(host: &Host, headerless: Option<Arc<str>>, ct: CancellationToken) -> Router {
    let config = host.config();
    // `["*"]` is the explicit way to accept any Host (behind a proxy that checks it); an empty
    // list is refused at startup, so the check is never off by accident.
    let any_host = config.server.allowed_hosts.iter().any(|h| h == "*");
    let hosts = if any_host {
        Vec::new()
    } else {
        config.server.allowed_hosts.clone()
    };
    let state = AppState {
        host: host.clone(),
        headerless,
        allowed_hosts: Arc::new(hosts.clone()),
        allowed_origins: Arc::new(config.server.allowed_origins.clone()),
    };
    let factory_host = host.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(factory_host.session(Transport::Http, None)),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts)
            .with_allowed_origins(config.server.allowed_origins.clone())
            .with_max_request_body_bytes(config.server.max_request_bytes)
            .with_cancellation_token(ct),
    );
    let authed = Router::new()
        .nest_service("/mcp", mcp)
        .route("/v1/tasks", axum::routing::post(create_task))
        .route("/v1/tasks/{id}", get(get_task).delete(end_task))
        .layer(DefaultBodyLimit::max(config.server.max_request_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(authed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            check_host_and_origin,
        ))
        .with_state(state)
}

/// Refuses requests whose `Host` or `Origin` is not on the allow-lists: a web page that got a
/// browser to resolve its own name to 127.0.0.1 still sends its own name in both.
async fn check_host_and_origin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !s.allowed_hosts.is_empty() && !host_allowed(host, &s.allowed_hosts) {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            &format!(
                "Host `{host}` is not allowed; add it to [server] allowed_hosts if it is yours"
            ),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && !origin_allowed(origin, &s.allowed_origins)
    {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            &format!(
                "Origin `{origin}` is not allowed; add it to [server] allowed_origins if it is yours"
            ),
        );
    }
    next.run(req).await
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = strip_port(&host);
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        let a_name = a.trim_start_matches('[').trim_end_matches(']');
        a == host || a_name == name
    })
}

/// `localhost:8080` -> `localhost`, `[::1]:8080` -> `::1`, `::1` -> `::1`.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        if a == origin {
            return true;
        }
        match a.strip_suffix(":*") {
            Some(base) => match origin.strip_prefix(base) {
                Some("") => true,
                Some(rest) => rest
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
                None => false,
            },
            None => false,
        }
    })
}

/// Verifies the bearer token and hands it to the route as a [`Credential`].
async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = match bearer(req.headers()) {
        Ok(Some(t)) => t,
        Ok(None) => match &s.headerless {
            Some(t) => t.to_string(),
            None => return unauthorized(&TokenError::Missing),
        },
        Err(e) => return unauthorized(&e),
    };
    let host = s.host.clone();
    let token = match host.verifier().verify(&presented) {
        Ok(t) => t,
        Err(e) => return unauthorized(&e),
    };
    if let Err(e) = host.guard().check_token(&token) {
        return unauthorized(&e);
    }
    req.extensions_mut().insert(Credential(token));
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Result<Option<String>, TokenError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| TokenError::Malformed("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Malformed(format!(
            "expected `Authorization: Bearer <token>`, got scheme `{scheme}`"
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(Some(token.to_owned()))
}

fn unauthorized(e: &TokenError) -> Response {
    let description = e.to_string().replace(['"', '\\'], "'");
    let challenge = format!(
        "Bearer realm=\"capgate\", error=\"invalid_token\", error_description=\"{description}\""
    );
    let mut resp = json_error(StatusCode::UNAUTHORIZED, "invalid_token", &e.to_string());
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    } else {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"capgate\", error=\"invalid_token\""),
        );
    }
    resp
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

fn credential(req_ext: &axum::http::Extensions) -> Option<Arc<VerifiedToken>> {
    req_ext.get::<Credential>().map(|c| Arc::clone(&c.0))
}

/// The header carrying an approval token (`capgate token approval`) with a task request.
pub const APPROVAL_HEADER: &str = "capgate-approval";

async fn create_task(
    State(s): State<AppState>,
    ext: axum::Extension<Credential>,
    headers: HeaderMap,
    body: Result<Json<Intent>, JsonRejection>,
) -> Response {
    let token = Arc::clone(&ext.0.0);
    let mut intent = match body {
        Ok(Json(i)) => i,
        Err(e) => {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                return json_error(status, "payload_too_large", &e.body_text());
            }
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!(
                    "the body must be a JSON task intent {{purpose, tools, resources, ttl, on_behalf_of}}: {}",
                    e.body_text()
                ),
            );
        }
    };
    // Approval is never the requester's word: the agent could write any name. It comes from an
    // approval token the operator minted for a human, checked here like any token.
    if intent.approved_by.is_some() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`approved_by` cannot be asserted by the requester; send an approval token (minted by the operator with `capgate token approval --by NAME`) in the `Capgate-Approval` header",
        );
    }
    if let Some(raw) = headers.get(APPROVAL_HEADER) {
        let approval = raw
            .to_str()
            .map_err(|_| TokenError::NotApproval("the header is not ASCII".into()))
            .and_then(|raw| {
                let who = token.identity();
                s.host.spend_approval(raw, &who.agent, &who.tenant)
            });
        match approval {
            Ok(by) => intent.approved_by = Some(by),
            Err(e) => {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "approval_refused",
                    &format!("the {APPROVAL_HEADER} header is refused: {e}"),
                );
            }
        }
    }
    let issuer = Arc::clone(s.host.issuer());
    let outcome =
        tokio::task::spawn_blocking(move || issuer.issue(&token, intent, Channel::Http)).await;
    match outcome {
        Ok(Ok(task)) => {
            let r = &task.record;
            (
                StatusCode::CREATED,
                [(header::LOCATION, format!("/v1/tasks/{}", r.id))],
                Json(json!({
                    "task_id": r.id,
                    "token": task.token,
                    "expires_at": rfc3339(r.expires_at),
                    "granted": r.grant.tools,
                    "trace_id": r.trace_id,
                })),
            )
                .into_response()
        }
        Ok(Err(e)) => issuance_error(&e),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        ),
    }
}

fn issuance_error(e: &IssuanceError) -> Response {
    match e {
        IssuanceError::Token(t) => unauthorized(t),
        IssuanceError::Invalid(m) => json_error(StatusCode::BAD_REQUEST, "invalid_request", m),
        IssuanceError::Denied {
            tool,
            resource,
            refusal,
        } => (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": "task_refused",
                "reason": refusal.reason,
                "message": e.to_string(),
                "tool": tool,
                "resource": resource,
                "failed_checks": refusal.failed_checks,
            })),
        )
            .into_response(),
        IssuanceError::Internal(m) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", m)
        }
    }
}

/// The task, if the presenting token speaks for it (see [`crate::ledger::TaskLedger::speaks_for`]).
fn owned_task(
    s: &AppState,
    token: &VerifiedToken,
    id: &str,
) -> Result<crate::store::TaskRecord, Box<Response>> {
    let not_found = || {
        json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no task `{id}` for this agent"),
        )
    };
    let ledger = s.host.ledger();
    let found = ledger.task(id).and_then(|t| match t {
        Some(t) => Ok(ledger.speaks_for(token, &t)?.then_some(t)),
        None => Ok(None),
    });
    match found {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(Box::new(not_found())),
        Err(e) => Err(Box::new(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        ))),
    }
}

async fn get_task(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let Some(token) = credential(req.extensions()) else {
        return unauthorized(&TokenError::Missing);
    };
    let task = match owned_task(&s, &token, &id) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    s.host.telemetry().flush_usage();
    let usage = s.host.ledger().store().usage(&id).unwrap_or_default();
    let active = task.is_active(std::time::SystemTime::now());
    Json(json!({
        "task": task,
        "active": active,
        "usage": usage,
    }))
    .into_response()
}

async fn end_task(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    let Some(token) = credential(req.extensions()) else {
        return unauthorized(&TokenError::Missing);
    };
    let task = match owned_task(&s, &token, &id) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let host = s.host.clone();
    let tid = task.id.clone();
    let ended =
        tokio::task::spawn_blocking(move || host.end_task(&tid, EndReason::Completed)).await;
    match ended {
        Ok(Ok(Some(t))) => {
            Json(json!({"task_id": t.id, "ended": true, "end_reason": "completed"})).into_response()
        }
        Ok(Ok(None)) => Json(json!({
            "task_id": task.id,
            "ended": false,
            "already_ended": true,
            "end_reason": task.end_reason.map(|r| r.as_str()),
        }))
        .into_response(),
        Ok(Err(e)) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        ),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        let hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        assert!(host_allowed("localhost:8080", &hosts));
        assert!(host_allowed("127.0.0.1", &hosts));
        assert!(host_allowed("[::1]:9", &hosts));
        assert!(!host_allowed("evil.example.com", &hosts));
        assert!(!host_allowed("localhost.evil.com:80", &hosts));
        let origins = vec![
            "http://localhost:*".to_owned(),
            "https://app.example.com".to_owned(),
        ];
        assert!(origin_allowed("http://localhost:3000", &origins));
        assert!(origin_allowed("http://localhost", &origins));
        assert!(origin_allowed("https://app.example.com", &origins));
        assert!(!origin_allowed("http://localhost.evil.com", &origins));
        assert!(!origin_allowed("http://localhost:3000.evil.com", &origins));
        assert!(!origin_allowed("http://evil.example.com", &origins));
    }
}
