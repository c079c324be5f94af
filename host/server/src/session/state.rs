//! One connection's state: its transport, its session id, the task bound to it in-band, and
//! the client's logging level.

use std::sync::{Arc, Mutex, OnceLock};

use capgate_authz::{CallEnv, TokenError, Transport, VerifiedToken};
use capgate_core::context::LogLevel;
use rmcp::service::{RequestContext, RoleServer};

use crate::shared::Shared;

/// The thumbprint of the DPoP key that came with this (HTTP) request.
pub(super) fn holder_of(ctx: &RequestContext<RoleServer>) -> Option<Arc<str>> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<super::Holder>())
        .filter(|h| h.for_token)
        .map(|h| Arc::clone(&h.jkt))
}

/// A task bound to this session by the in-band `task_begin` tool.
#[derive(Clone)]
pub(super) struct Binding {
    pub(super) token: Arc<VerifiedToken>,
    pub(super) task_id: String,
}

/// What one connection holds.
pub(crate) struct SessionState {
    pub(super) host: Arc<Shared>,
    pub(super) transport: Transport,
    /// The stdio credential (`CAPGATE_TOKEN`), as presented.
    pub(super) stdio_token: Option<String>,
    /// `stdio_token`, verified once: it cannot change for the life of the connection.
    pub(super) stdio_verified: OnceLock<Result<Arc<VerifiedToken>, TokenError>>,
    /// The session id: generated for stdio, the `mcp-session-id` header for HTTP.
    pub(super) session_id: Mutex<Arc<str>>,
    pub(super) binding: Mutex<Option<Binding>>,
    pub(super) log_level: LogLevel,
}

impl SessionState {
    pub(super) fn session_id(&self) -> Arc<str> {
        Arc::clone(&self.session_id.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The connection-level facts of one request: with the key of its DPoP proof, if any.
    pub(super) fn env(&self, ctx: &RequestContext<RoleServer>) -> CallEnv {
        CallEnv {
            transport: self.transport,
            session: self.session_id(),
            holder: holder_of(ctx),
        }
    }

    /// Learns the HTTP session id from the request, once rmcp has assigned one.
    pub(super) fn observe_request(&self, ctx: &RequestContext<RoleServer>) {
        if self.transport != Transport::Http {
            return;
        }
        if let Some(parts) = ctx.extensions.get::<http::request::Parts>()
            && let Some(id) = parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
        {
            let mut cur = self.session_id.lock().unwrap_or_else(|p| p.into_inner());
            if cur.as_ref() != id {
                *cur = Arc::from(id);
            }
        }
    }
}
