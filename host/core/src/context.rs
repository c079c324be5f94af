//! What a running tool may do besides its work: report progress, log to the client, notice
//! cancellation, and call other hosted tools.
//!
//! Invariant: a nested call made through [`ToolContext::call_tool`] goes back through the whole
//! pipeline (guard and audit included) with the caller's credential, and a sub-resource a tool
//! reaches on its own (an entry of a directory it walks) is put to the same guard through
//! [`ToolContext::permits`]; both go through the [`CallScope`] the server put here, so a tool
//! cannot lend its caller access the caller lacks.

// MCP logging is deprecated for protocol 2026-07-28 (SEP-2577) but is part of the 2025 revisions
// capgate also serves, so tools may still log.
#![allow(deprecated)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rmcp::Peer;
use rmcp::model::{
    LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
};
use rmcp::service::RoleServer;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::tool::{Arguments, Resource, ToolError, ToolOutput};

/// The future a nested call returns.
pub type NestedFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ToolOutput, ToolError>> + Send + 'a>>;

/// What a running tool may ask of the call it runs in, answered with the caller's credential:
/// other tools' calls, through the same pipeline as a client's, and whether a sub-resource is
/// inside what the call may touch. capgate-server implements it over the calling session.
pub trait CallScope: Send + Sync {
    /// Calls `name` with `args` on behalf of the tool `caller`, with the client connection and
    /// cancellation of the outer call.
    fn call<'a>(
        &'a self,
        caller: &'a str,
        name: &'a str,
        args: Arguments,
        peer: Option<Peer<RoleServer>>,
        cancel: CancellationToken,
    ) -> NestedFuture<'a>;

    /// Whether the guard would allow the tool `caller`, with the arguments of the current call,
    /// on `resource`: a tool that reaches more than the resource it was authorized on (a tree
    /// walk) asks this of every further resource before touching it.
    fn permits(&self, caller: &str, resource: &Resource) -> bool;
}

/// The client's `logging/setLevel`, shared by a session and the tools it runs.
#[derive(Debug, Clone)]
pub struct LogLevel(Arc<AtomicU8>);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(Arc::new(AtomicU8::new(rank(LoggingLevel::Info))))
    }
}

impl LogLevel {
    /// Sets the least severe level the client wants.
    pub fn set(&self, level: LoggingLevel) {
        self.0.store(rank(level), Ordering::Relaxed);
    }

    /// Whether a message at `level` passes.
    pub fn passes(&self, level: LoggingLevel) -> bool {
        rank(level) >= self.0.load(Ordering::Relaxed)
    }
}

#[allow(deprecated)]
fn rank(l: LoggingLevel) -> u8 {
    match l {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Progress, logging, cancellation and nested calls for a running tool.
#[derive(Clone)]
pub struct ToolContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    peer: Option<Peer<RoleServer>>,
    progress_token: Option<ProgressToken>,
    log_level: LogLevel,
    cancel: CancellationToken,
    tool: String,
    nested: Option<Arc<dyn CallScope>>,
}

/// What a [`ToolContext`] is made of; the server fills it for every dispatched call.
#[derive(Default)]
pub struct ContextParts {
    /// The client connection, when there is one.
    pub peer: Option<Peer<RoleServer>>,
    /// The progress token the client sent with the call.
    pub progress_token: Option<ProgressToken>,
    /// The session's logging level.
    pub log_level: LogLevel,
    /// Cancelled when the client cancels the call or the server stops.
    pub cancel: CancellationToken,
    /// Where nested calls go; `None` refuses them.
    pub nested: Option<Arc<dyn CallScope>>,
}

impl ToolContext {
    /// A context for one call of `tool`.
    pub fn new(tool: &str, parts: ContextParts) -> Self {
        ToolContext {
            inner: Arc::new(ContextInner {
                peer: parts.peer,
                progress_token: parts.progress_token,
                log_level: parts.log_level,
                cancel: parts.cancel,
                tool: tool.to_owned(),
                nested: parts.nested,
            }),
        }
    }

    /// A context with no client attached and no nested calls.
    pub fn detached(tool: &str) -> Self {
        Self::new(tool, ContextParts::default())
    }

    /// The tool this context belongs to.
    pub fn tool(&self) -> &str {
        &self.inner.tool
    }

    /// Reports progress to the client, when it asked for progress on this call.
    pub async fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        let (Some(peer), Some(token)) = (&self.inner.peer, &self.inner.progress_token) else {
            return;
        };
        let mut p = ProgressNotificationParam::new(token.clone(), progress);
        p.total = total;
        p.message = message;
        if let Err(e) = peer.notify_progress(p).await {
            tracing::debug!(error = %e, "progress notification not delivered");
        }
    }

    /// Sends a log message to the client, when its level passes the client's `logging/setLevel`.
    #[allow(deprecated)]
    pub async fn log(&self, level: LoggingLevel, data: Value) {
        if !self.inner.log_level.passes(level) {
            return;
        }
        let Some(peer) = &self.inner.peer else {
            return;
        };
        let mut msg = LoggingMessageNotificationParam::new(level, data);
        msg.logger = Some(self.inner.tool.clone());
        if let Err(e) = peer.notify_logging_message(msg).await {
            tracing::debug!(error = %e, "log notification not delivered");
        }
    }

    /// Cancelled when the client cancels the request or the server shuts down.
    pub fn cancelled(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// The client connection, for sampling or elicitation. `None` when running detached.
    pub fn peer(&self) -> Option<&Peer<RoleServer>> {
        self.inner.peer.as_ref()
    }

    /// Whether this call may also touch `resource` (say, an entry of the directory it walks):
    /// the guard decides, with the caller's credential and this call's arguments. A tool that
    /// reaches resources beyond the one it was authorized on must ask before each.
    pub fn permits(&self, resource: &Resource) -> bool {
        match &self.inner.nested {
            Some(scope) => scope.permits(&self.inner.tool, resource),
            None => true,
        }
    }

    /// Calls another hosted tool with the same credential. The inner call goes through the
    /// guard and the audit log like any other.
    pub async fn call_tool(&self, name: &str, args: Arguments) -> Result<ToolOutput, ToolError> {
        let Some(nested) = &self.inner.nested else {
            return Err(ToolError::failed(
                "nested tool calls need a capgate session",
            ));
        };
        nested
            .call(
                &self.inner.tool,
                name,
                args,
                self.inner.peer.clone(),
                self.inner.cancel.clone(),
            )
            .await
    }
}
