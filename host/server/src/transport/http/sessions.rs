//! MCP sessions over HTTP belong to whoever opened them, and a request id names one request.
//!
//! Invariant: a request carrying `Mcp-Session-Id` (POST, GET or DELETE) is served only for the
//! principal (agent and tenant) whose credential initialized that session; anyone else gets
//! 404, as for a session that does not exist, so a stolen session id neither reads another
//! agent's server-to-client stream nor ends its session. And within one session, a request id
//! that is still in flight is refused with a JSON-RPC error before it reaches the session, so a
//! second request can never take over the first one's response.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::{Value, json};

use crate::session::Credential;

/// The header rmcp names sessions with.
const SESSION_HEADER: &str = "mcp-session-id";

/// Owners kept before sessions rmcp has closed or expired are looked for and forgotten.
const PRUNE_ABOVE: usize = 4096;

/// Who a session belongs to.
/// Agent, tenant, and the workload (issuer, subject) that vouched for it, if one did: an
/// operator-minted agent and a workload that happen to share an id are not one principal.
type Principal = (String, String, Option<(String, String)>);

/// Session owners and in-flight request ids, shared by every request of the server.
pub(super) struct Sessions {
    manager: Arc<LocalSessionManager>,
    state: Mutex<Book>,
    /// The largest body this layer reads to look for request ids (`[server] max_request_bytes`).
    max_body: usize,
}

#[derive(Default)]
struct Book {
    owners: HashMap<String, Principal>,
    in_flight: HashSet<(String, String)>,
}

impl Sessions {
    pub(super) fn new(manager: Arc<LocalSessionManager>, max_body: usize) -> Self {
        Sessions {
            manager,
            state: Mutex::new(Book::default()),
            max_body,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the owner of a session rmcp just created, forgetting owners of sessions rmcp no
    /// longer has once there are many. An owner is forgotten only when its session is gone, so
    /// forgetting can never open a live session to someone else.
    async fn record(&self, session: String, owner: Principal) {
        let crowded = {
            let mut st = self.lock();
            st.owners.insert(session, owner);
            st.owners.len() > PRUNE_ABOVE
        };
        if !crowded {
            return;
        }
        let ids: Vec<String> = self.lock().owners.keys().cloned().collect();
        let mut gone = Vec::new();
        for id in ids {
            if !self
                .manager
                .has_session(&id.as_str().into())
                .await
                .unwrap_or(true)
            {
                gone.push(id);
            }
        }
        let mut st = self.lock();
        for id in gone {
            st.owners.remove(&id);
        }
    }
}

/// Releases an in-flight request id when its response is over (sent, or the client gone).
struct InFlight {
    sessions: Arc<Sessions>,
    keys: Vec<(String, String)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.sessions.lock();
        for k in &self.keys {
            st.in_flight.remove(k);
        }
    }
}

/// A response body that holds its requests' ids in flight until it ends.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not_found", "message": "no such MCP session"})),
    )
        .into_response()
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The ids of the requests in a JSON-RPC body (a message or a batch); notifications and
/// responses have none.
fn request_ids(body: &[u8]) -> Vec<Value> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let messages = match v {
        Value::Array(items) => items,
        one => vec![one],
    };
    messages
        .into_iter()
        .filter(|m| m.get("method").is_some())
        .filter_map(|m| m.get("id").cloned())
        .collect()
}

/// The middleware, in front of rmcp's `/mcp` service (after authentication).
pub(super) async fn guard(State(s): State<Arc<Sessions>>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/mcp" {
        return next.run(req).await;
    }
    let Some(cred) = req.extensions().get::<Credential>() else {
        return next.run(req).await;
    };
    let who = cred.0.identity();
    let principal: Principal = (who.agent.clone(), who.tenant.clone(), who.workload.clone());
    let session = session_of(req.headers());
    if let Some(id) = &session {
        let owner = s.lock().owners.get(id).cloned();
        // A session rmcp knows but capgate never saw opened cannot exist; one capgate saw opened
        // by someone else is not this principal's. Either way: no such session.
        if owner.as_ref() != Some(&principal) {
            return not_found();
        }
    }
    let method = req.method().clone();
    if method == Method::DELETE {
        let resp = next.run(req).await;
        if resp.status().is_success()
            && let Some(id) = session
        {
            s.lock().owners.remove(&id);
        }
        return resp;
    }
    if method != Method::POST {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, s.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(json!({"error": "payload_too_large",
                    "message": format!("the body is over the {}-byte limit", s.max_body)})),
            )
                .into_response();
        }
    };
    let ids = request_ids(&bytes);
    let mut keys = Vec::new();
    if let Some(id) = &session {
        let mut st = s.lock();
        for rid in &ids {
            let key = (id.clone(), rid.to_string());
            if st.in_flight.contains(&key) || keys.contains(&key) {
                return duplicate(rid);
            }
            keys.push(key);
        }
        for k in &keys {
            st.in_flight.insert(k.clone());
        }
    }
    let in_flight = InFlight {
        sessions: Arc::clone(&s),
        keys,
    };
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if session.is_none()
        && resp.status().is_success()
        && let Some(created) = session_of(resp.headers())
    {
        s.record(created, principal).await;
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(
        parts,
        Body::new(Tracked {
            inner: body,
            _in_flight: in_flight,
        }),
    )
}

/// The answer to a request whose id is still in flight in this session: a JSON-RPC error for
/// that id; the request in flight keeps its own response.
fn duplicate(id: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": -32600,
                "message": "a request with this id is still in flight in this session; use a new id for each request",
            },
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_have_ids_that_count() {
        let ids = request_ids(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#);
        assert_eq!(ids, vec![json!(7)]);
        assert!(
            request_ids(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).is_empty()
        );
        assert!(request_ids(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#).is_empty());
        let batch = request_ids(br#"[{"id":"a","method":"x"},{"id":"b","method":"y"}]"#);
        assert_eq!(batch, vec![json!("a"), json!("b")]);
        assert!(request_ids(b"not json").is_empty());
    }
}
