//! The session: one MCP connection's view of capgate, and the call pipeline every tool call
//! takes (`credential -> prepare -> guard -> audit -> dispatch`).
//!
//! Invariant: the credential a call is judged by is always a verified token that the
//! connection itself presented (the HTTP bearer, `CAPGATE_TOKEN` for stdio), or a token that
//! provably narrows it (one sent in `_meta`, or the task token bound in-band to this session).
//! `tools/list` is answered by the guard's own authorization, never by a separate filter.

// MCP logging is deprecated for protocol 2026-07-28 (SEP-2577) but is part of the 2025 revisions
// capgate also serves, so it stays implemented.
#![allow(deprecated)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorCode, Implementation,
    InitializeRequestParams, InitializeResult, ListToolsResult, LoggingLevel,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ProgressToken, ServerCapabilities, ServerConfig, SetLevelRequestParams, Tool as McpTool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, Peer, ServerHandler};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::capability::{TokenError, VerifiedToken};
use crate::guard::{CallEnv, Denial, Transport};
use crate::host::HostInner;
use crate::issuance::{Channel, Intent, IssuanceError};
use crate::registry::{CallError, dispatch};
use crate::store::EndReason;
use crate::telemetry::CallRecord;
use crate::tool::{Arguments, ToolError, ToolOutput, ToolSpec};

/// The `_meta` key under which a client may present a narrower token for one call.
pub const META_TOKEN_KEY: &str = "capgate/token";

/// Deepest nesting of tool-calls-tool.
const MAX_CALL_DEPTH: u8 = 8;

/// The verified token an HTTP request presented, put in the request's extensions by the
/// transport's authentication layer.
#[derive(Clone, Debug)]
pub struct Credential(pub Arc<VerifiedToken>);

/// A task bound to this session by the in-band `task_begin` tool.
#[derive(Clone)]
struct Binding {
    token: Arc<VerifiedToken>,
    task_id: String,
}

/// What one connection holds.
pub(crate) struct SessionState {
    pub(crate) host: Arc<HostInner>,
    transport: Transport,
    /// The stdio credential (`CAPGATE_TOKEN`), as presented.
    stdio_token: Option<String>,
    /// `stdio_token`, verified once: it cannot change for the life of the connection.
    stdio_verified: std::sync::OnceLock<Result<Arc<VerifiedToken>, TokenError>>,
    /// The session id: generated for stdio, the `mcp-session-id` header for HTTP.
    session_id: Mutex<Arc<str>>,
    binding: Mutex<Option<Binding>>,
    log_level: Arc<AtomicU8>,
}

/// The MCP server handler for one connection.
#[derive(Clone)]
pub struct Session {
    state: Arc<SessionState>,
}

impl Session {
    pub(crate) fn state(&self) -> Arc<SessionState> {
        Arc::clone(&self.state)
    }

    pub(crate) fn new(
        host: Arc<HostInner>,
        transport: Transport,
        stdio_token: Option<String>,
    ) -> Self {
        let session_id: Arc<str> = match transport {
            Transport::Http => Arc::from("none"),
            _ => Arc::from(uuid::Uuid::new_v4().to_string()),
        };
        Session {
            state: Arc::new(SessionState {
                host,
                transport,
                stdio_token,
                stdio_verified: std::sync::OnceLock::new(),
                session_id: Mutex::new(session_id),
                binding: Mutex::new(None),
                log_level: Arc::new(AtomicU8::new(level_rank(LoggingLevel::Info))),
            }),
        }
    }
}

fn level_rank(l: LoggingLevel) -> u8 {
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
    log_level: Arc<AtomicU8>,
    cancel: CancellationToken,
    tool: String,
    nested: Option<NestedCaller>,
}

struct NestedCaller {
    state: Arc<SessionState>,
    token: Arc<VerifiedToken>,
    env: CallEnv,
    depth: u8,
}

impl ToolContext {
    /// A context with no client attached, for running tools in-process (tests, benchmarks).
    pub fn detached(tool: &str) -> Self {
        ToolContext {
            inner: Arc::new(ContextInner {
                peer: None,
                progress_token: None,
                log_level: Arc::new(AtomicU8::new(0)),
                cancel: CancellationToken::new(),
                tool: tool.to_owned(),
                nested: None,
            }),
        }
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
        if level_rank(level) < self.inner.log_level.load(Ordering::Relaxed) {
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

    /// Calls another hosted tool with the same credential. The inner call goes through the
    /// guard like any other: a tool cannot lend its caller access the caller's token lacks.
    pub async fn call_tool(&self, name: &str, args: Arguments) -> Result<ToolOutput, ToolError> {
        let Some(n) = &self.inner.nested else {
            return Err(ToolError::failed(
                "nested tool calls need a capgate session",
            ));
        };
        if n.depth >= MAX_CALL_DEPTH {
            return Err(ToolError::failed(format!(
                "tool calls nest deeper than {MAX_CALL_DEPTH}; refusing `{name}`"
            )));
        }
        let call = CallRequest {
            name: name.to_owned(),
            args: Some(args),
            request_id: format!("nested:{}", self.inner.tool),
            protocol: None,
            traceparent: None,
            progress_token: None,
            depth: n.depth + 1,
        };
        let result = run_call(
            &n.state,
            &n.token,
            &n.env,
            call,
            self.inner.peer.clone(),
            self.inner.cancel.clone(),
        )
        .await;
        match result {
            PipelineResult::Ran(Ok(out)) => Ok(out),
            PipelineResult::Ran(Err(e)) => Err(ToolError::failed(format!("`{name}` failed: {e}"))),
            PipelineResult::Denied(d) => Err(ToolError::failed(format!(
                "`{name}` was denied: {}",
                d.message
            ))),
            PipelineResult::Invalid(e) => Err(ToolError::failed(format!("`{name}`: {e}"))),
        }
    }
}

/// One tools/call as the pipeline sees it.
pub(crate) struct CallRequest {
    pub(crate) name: String,
    pub(crate) args: Option<Arguments>,
    pub(crate) request_id: String,
    pub(crate) protocol: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) progress_token: Option<ProgressToken>,
    pub(crate) depth: u8,
}

/// How a call ended.
pub(crate) enum PipelineResult {
    /// The arguments or tool name were unusable; the guard was not consulted.
    Invalid(CallError),
    /// The guard refused; the tool did not run.
    Denied(Box<Denial>),
    /// The tool ran.
    Ran(Result<ToolOutput, ToolError>),
}

/// The call pipeline: prepare, authorize, audit, dispatch, record. Every tool call — from a
/// client, a nested tool or a benchmark — goes through here.
pub(crate) async fn run_call(
    state: &Arc<SessionState>,
    token: &Arc<VerifiedToken>,
    env: &CallEnv,
    call: CallRequest,
    peer: Option<Peer<RoleServer>>,
    cancel: CancellationToken,
) -> PipelineResult {
    let host = &state.host;
    let started = Instant::now();
    // The task is looked up before the span exists, because a call span's parent is the task's
    // root span (unless the caller sent trace context).
    let task_hint = host.guard.ledger().task_of(token).ok().flatten();
    let span = host.telemetry.call_span(&CallRecord {
        tool: &call.name,
        request_id: &call.request_id,
        protocol: call.protocol.as_deref(),
        // Only streamable HTTP has MCP sessions; stdio's id is capgate's own, for the `session`
        // fact, and not an `mcp.session.id`.
        session: Some(&env.session)
            .filter(|s| env.transport == Transport::Http && s.as_ref() != "none")
            .map(|s| s.as_ref()),
        transport: env.transport,
        traceparent: call.traceparent.as_deref(),
        task: task_hint.as_deref(),
        token,
        nested: call.depth > 0,
    });
    async {
        let prepared = host.registry.prepare(&call.name, call.args);
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                host.telemetry.call_invalid(
                    token,
                    task_hint.as_deref(),
                    &call.name,
                    &e,
                    env,
                    started,
                );
                return PipelineResult::Invalid(e);
            }
        };
        let guard_started = Instant::now();
        let decision = host.guard.authorize(token, prepared, env);
        let guard_time = guard_started.elapsed();
        match decision {
            Err(denial) => {
                host.telemetry
                    .call_denied(token, &denial, env, guard_time, started);
                PipelineResult::Denied(denial)
            }
            Ok(authorized) => {
                // The audit line is written before the tool runs: an action that cannot be
                // recorded is refused (`[audit] fail_closed`).
                if let Err(denial) = host.telemetry.call_allowed(&authorized, env, guard_time) {
                    host.telemetry
                        .call_denied(token, &denial, env, Duration::ZERO, started);
                    return PipelineResult::Denied(denial);
                }
                let grant = authorized.grant().clone();
                let spec_name = authorized.get().spec().name.clone();
                let ctx = ToolContext {
                    inner: Arc::new(ContextInner {
                        peer,
                        progress_token: call.progress_token,
                        log_level: Arc::clone(&state.log_level),
                        cancel,
                        tool: spec_name.clone(),
                        nested: Some(NestedCaller {
                            state: Arc::clone(state),
                            token: Arc::clone(token),
                            env: env.clone(),
                            depth: call.depth,
                        }),
                    }),
                };
                let exec_span = host.telemetry.execution_span(&spec_name);
                let result = dispatch(authorized, ctx)
                    .instrument(exec_span.clone())
                    .await;
                host.telemetry
                    .call_finished(&grant, &spec_name, &result, &exec_span, env, started);
                PipelineResult::Ran(result)
            }
        }
    }
    .instrument(span)
    .await
}

impl SessionState {
    fn session_id(&self) -> Arc<str> {
        Arc::clone(&self.session_id.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn env(&self) -> CallEnv {
        CallEnv {
            transport: self.transport,
            session: self.session_id(),
        }
    }

    /// Learns the HTTP session id from the request, once rmcp has assigned one.
    fn observe_request(&self, ctx: &RequestContext<RoleServer>) {
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

    /// The token the connection presented: the HTTP bearer or `CAPGATE_TOKEN`.
    fn presented(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        match self.transport {
            Transport::Http => ctx
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.extensions.get::<Credential>())
                .map(|c| Arc::clone(&c.0))
                .ok_or(TokenError::Missing),
            _ => self
                .stdio_verified
                .get_or_init(|| {
                    let raw = self.stdio_token.as_deref().ok_or(TokenError::Missing)?;
                    self.host.verifier.verify(raw)
                })
                .clone(),
        }
    }

    /// The token a call is judged by: a `_meta` token that narrows the presented one, else the
    /// task bound in-band (while the same agent token is presented), else the presented token.
    fn effective(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let presented = self.presented(ctx)?;
        // Over HTTP the authentication layer checked this very token for this very request;
        // stdio tokens are checked here. (The guard checks revocation again for the call.)
        if self.transport != Transport::Http {
            self.host.guard.check_token(&presented)?;
        }
        let mut effective = presented;
        if let Some(binding) = self
            .binding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && effective.is_prefix_of(&binding.token)
        {
            effective = binding.token;
        }
        if let Some(raw) = ctx.meta.get(META_TOKEN_KEY) {
            let raw = raw.as_str().ok_or_else(|| {
                TokenError::Malformed(format!("`_meta.{META_TOKEN_KEY}` must be a string"))
            })?;
            let narrower = self.host.verifier.verify(raw)?;
            if !effective.is_prefix_of(&narrower) && !Arc::ptr_eq(&effective, &narrower) {
                return Err(TokenError::Malformed(format!(
                    "the token in `_meta.{META_TOKEN_KEY}` does not derive from the session's token; only narrower tokens (more blocks appended) may be presented per call"
                )));
            }
            self.host.guard.check_token(&narrower)?;
            effective = narrower;
        }
        Ok(effective)
    }
}

fn mcp_tool(spec: &ToolSpec) -> McpTool {
    let mut t = McpTool::new(
        spec.name.clone(),
        spec.description.clone(),
        Arc::new(spec.input_schema.clone()),
    );
    if let Some(title) = &spec.title {
        t = t.with_title(title.clone());
    }
    if let Some(out) = &spec.output_schema {
        t = t.with_raw_output_schema(Arc::new(out.clone()));
    }
    let read_only = spec.operation == crate::tool::Operation::Read;
    let mut ann = ToolAnnotations::new();
    ann.read_only_hint = Some(read_only);
    ann.open_world_hint = Some(spec.operation == crate::tool::Operation::Network);
    if !read_only {
        ann.destructive_hint = Some(spec.operation != crate::tool::Operation::Network);
    }
    t.with_annotations(ann)
}

fn object_schema(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn task_begin_tool() -> McpTool {
    let schema = json!({
        "type": "object",
        "properties": {
            "purpose": {"type": "string", "description": "Why this task exists, in one sentence."},
            "tools": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                       "description": "The tools the task needs."},
            "resources": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                          "description": "Resource prefixes per tool, e.g. {\"fs_read\": [\"docs/\"]}."},
            "ttl": {"type": ["string", "integer"], "description": "Lifetime, e.g. \"15m\" or seconds."},
            "on_behalf_of": {"type": "string", "description": "Who the task acts for."}
        },
        "required": ["purpose", "tools"],
        "additionalProperties": false
    });
    let mut ann = ToolAnnotations::new();
    ann.read_only_hint = Some(false);
    ann.destructive_hint = Some(false);
    McpTool::new(
        "task_begin",
        "Declare a task (purpose, tools, resources, lifetime) and receive access for exactly that. \
         Tools are only callable inside a task; this session is bound to the new task until task_end.",
        Arc::new(object_schema(schema)),
    )
    .with_annotations(ann)
}

fn task_end_tool() -> McpTool {
    let schema = json!({
        "type": "object",
        "properties": {"task_id": {"type": "string", "description": "Default: the task bound to this session."}},
        "additionalProperties": false
    });
    let mut ann = ToolAnnotations::new();
    ann.read_only_hint = Some(false);
    ann.destructive_hint = Some(false);
    McpTool::new(
        "task_end",
        "End a task: its access is revoked at once, with every token derived from it.",
        Arc::new(object_schema(schema)),
    )
    .with_annotations(ann)
}

/// The result a denied call returns: `isError`, the failed check in words and in structure.
fn denial_result(d: &Denial) -> CallToolResult {
    let structured = json!({
        "capgate": {
            "decision": "deny",
            "reason": d.reason,
            "message": d.message,
            "tool": d.tool,
            "resource": d.resource,
            "failed_checks": d.failed_checks,
        }
    });
    let mut r = CallToolResult::error(vec![rmcp::model::ContentBlock::text(format!(
        "capgate denied `{}` on `{}`: {}",
        d.tool, d.resource, d.message
    ))]);
    r.structured_content = Some(structured);
    r
}

fn token_denial_result(e: &TokenError) -> CallToolResult {
    let mut r = CallToolResult::error(vec![rmcp::model::ContentBlock::text(format!(
        "capgate denied the call: {e}"
    ))]);
    r.structured_content = Some(json!({
        "capgate": {"decision": "deny", "reason": e.kind(), "message": e.to_string()}
    }));
    r
}

fn output_result(out: ToolOutput) -> CallToolResult {
    let mut r = CallToolResult::success(out.content);
    r.structured_content = out.structured;
    r
}

fn invalid_params(e: &CallError) -> McpError {
    let data = match e {
        CallError::InvalidArguments { tool, field, .. } => json!({"tool": tool, "field": field}),
        CallError::UnknownTool { name } => json!({"tool": name}),
    };
    McpError::new(ErrorCode::INVALID_PARAMS, e.to_string(), Some(data))
}

impl Session {
    async fn in_band_begin(
        &self,
        args: Option<Arguments>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let state = &self.state;
        let presented = match state
            .presented(ctx)
            .and_then(|t| state.host.guard.check_token(&t).map(|_| t))
        {
            Ok(t) => t,
            Err(e) => return Ok(token_denial_result(&e)),
        };
        let mut intent: Intent = serde_json::from_value(Value::Object(args.unwrap_or_default()))
            .map_err(|e| {
                McpError::invalid_params(
                    format!("invalid arguments for tool `task_begin`: {e}"),
                    None,
                )
            })?;
        // The model cannot vouch for a human: approval comes only from the human, asked
        // through elicitation below.
        if intent.approved_by.is_some() {
            return Err(McpError::invalid_params(
                "`approved_by` cannot be asserted in-band: when a tool needs approval, capgate asks the human through MCP elicitation",
                None,
            ));
        }
        let channel = match state.transport {
            Transport::Http => Channel::McpHttp,
            _ => Channel::Stdio,
        };
        let mut outcome = state.host.issuer.issue(&presented, intent.clone(), channel);
        if let Err(IssuanceError::Denied {
            refusal,
            tool,
            resource,
        }) = &outcome
            && refusal.reason == "approval-required"
            && state.host.config.policy.elicitation_approval
            && intent.approved_by.is_none()
            && let Some(approver) =
                ask_approval(&ctx.peer, &presented, &intent, tool, resource).await
        {
            intent.approved_by = Some(approver);
            outcome = state.host.issuer.issue(&presented, intent, channel);
        }
        match outcome {
            Ok(task) => {
                let verified = state
                    .host
                    .verifier
                    .verify(&task.token)
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                *state.binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(Binding {
                    token: verified,
                    task_id: task.record.id.clone(),
                });
                let body = json!({
                    "task_id": task.record.id,
                    "expires_at": crate::capability::rfc3339(task.record.expires_at),
                    "granted": task.record.grant.tools,
                    "token": task.token,
                    "bound_to_session": true,
                });
                let mut r = CallToolResult::success(vec![rmcp::model::ContentBlock::text(
                    format!(
                        "Task {} begun; this session now acts under it until task_end or {}. Granted: {}",
                        task.record.id,
                        crate::capability::rfc3339(task.record.expires_at),
                        serde_json::to_string(&task.record.grant.tools).unwrap_or_default()
                    ),
                )]);
                r.structured_content = Some(body);
                Ok(r)
            }
            Err(e) => {
                let mut r =
                    CallToolResult::error(vec![rmcp::model::ContentBlock::text(e.to_string())]);
                let detail = match &e {
                    IssuanceError::Denied {
                        refusal,
                        tool,
                        resource,
                    } => json!({
                        "decision": "deny", "reason": refusal.reason, "message": refusal.message,
                        "tool": tool, "resource": resource, "failed_checks": refusal.failed_checks,
                    }),
                    other => {
                        json!({"decision": "deny", "reason": other.reason(), "message": other.to_string()})
                    }
                };
                r.structured_content = Some(json!({"capgate": detail}));
                Ok(r)
            }
        }
    }

    async fn in_band_end(
        &self,
        args: Option<Arguments>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let state = &self.state;
        let presented = match state
            .presented(ctx)
            .and_then(|t| state.host.guard.check_token(&t).map(|_| t))
        {
            Ok(t) => t,
            Err(e) => return Ok(token_denial_result(&e)),
        };
        let requested = args
            .as_ref()
            .and_then(|a| a.get("task_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let binding = state
            .binding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let task_id = match (requested, &binding) {
            (Some(id), _) => id,
            (None, Some(b)) => b.task_id.clone(),
            (None, None) => {
                return Err(McpError::invalid_params(
                    "no task is bound to this session; pass `task_id`",
                    None,
                ));
            }
        };
        let ledger = state.host.guard.ledger();
        let record = ledger
            .task(&task_id)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        // Only the agent a task was issued to may end it, through its agent token or a token of
        // that very task (never one of a sibling task).
        let record = match record {
            Some(r)
                if ledger
                    .speaks_for(&presented, &r)
                    .map_err(|e| McpError::internal_error(e.to_string(), None))? =>
            {
                Some(r)
            }
            _ => None,
        };
        let Some(record) = record else {
            return Ok(CallToolResult::error(vec![
                rmcp::model::ContentBlock::text(format!(
                    "no task `{task_id}` belongs to this agent"
                )),
            ]));
        };
        let ended = ledger
            .end_task(&record.id, EndReason::Completed)
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        if binding.as_ref().is_some_and(|b| b.task_id == record.id) {
            *state.binding.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let text = match ended {
            Some(_) => format!("Task {} ended; its access is revoked.", record.id),
            None => format!("Task {} had already ended.", record.id),
        };
        let mut r = CallToolResult::success(vec![rmcp::model::ContentBlock::text(text)]);
        r.structured_content = Some(json!({"task_id": record.id, "ended": true}));
        Ok(r)
    }
}

/// The form shown to the human when an in-band task needs approval.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct Approval {
    /// Approve this task?
    approve: bool,
    /// Your name, recorded as the approver.
    approver: Option<String>,
}
rmcp::elicit_safe!(Approval);

/// Asks the human, through MCP elicitation, to approve a task. `Some(approver)` only on an
/// explicit yes; a no, a dismissal, a timeout or a client without elicitation is `None`.
async fn ask_approval(
    peer: &Peer<RoleServer>,
    token: &VerifiedToken,
    intent: &Intent,
    tool: &str,
    resource: &str,
) -> Option<String> {
    if peer.supported_elicitation_modes().is_empty() {
        return None;
    }
    let on = if resource.is_empty() {
        "all of its resources".to_owned()
    } else {
        format!("`{resource}`")
    };
    let message = format!(
        "Agent `{}` (tenant `{}`) asks to begin a task with side effects.\nPurpose: {}\nIt needs `{tool}` on {on}{}.\nApprove?",
        token.identity().agent,
        token.identity().tenant,
        intent.purpose,
        intent
            .on_behalf_of
            .as_deref()
            .map(|w| format!(", on behalf of {w}"))
            .unwrap_or_default(),
    );
    match peer
        .elicit_with_timeout::<Approval>(message, Some(Duration::from_secs(120)))
        .await
    {
        Ok(Some(Approval {
            approve: true,
            approver,
        })) => {
            let client = peer
                .peer_info()
                .map(|i| i.client_info.name.clone())
                .unwrap_or_else(|| "client".into());
            Some(
                approver
                    .filter(|a| !a.trim().is_empty())
                    .unwrap_or_else(|| format!("elicitation via {client}")),
            )
        }
        _ => None,
    }
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_tools()
                .build(),
        )
        .with_server_info(Implementation::new("capgate", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "capgate hosts tools behind per-task capabilities. Declare a task with task_begin \
                 (purpose, tools, resources) before calling tools; end it with task_end.",
        )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.state
            .log_level
            .store(level_rank(request.level), Ordering::Relaxed);
        Ok(())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let state = &self.state;
        state.observe_request(&context);
        let mut tools = Vec::new();
        if let Ok(token) = state.effective(&context) {
            tools.push(task_begin_tool());
            tools.push(task_end_tool());
            let env = state.env();
            tools.extend(
                state
                    .host
                    .guard
                    .visible_tools(&token, &state.host.registry, &env)
                    .into_iter()
                    .map(mcp_tool),
            );
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let state = &self.state;
        state.observe_request(&context);
        match request.name.as_ref() {
            "task_begin" => {
                return self
                    .in_band_begin(request.arguments, &context)
                    .await
                    .map(Into::into);
            }
            "task_end" => {
                return self
                    .in_band_end(request.arguments, &context)
                    .await
                    .map(Into::into);
            }
            _ => {}
        }
        let token = match state.effective(&context) {
            Ok(t) => t,
            Err(e) => {
                state
                    .host
                    .telemetry
                    .token_refused(&request.name, &e, &state.env());
                return Ok(token_denial_result(&e).into());
            }
        };
        let traceparent = context
            .meta
            .get_traceparent()
            .map(str::to_owned)
            .or_else(|| {
                context
                    .extensions
                    .get::<http::request::Parts>()
                    .and_then(|p| p.headers.get("traceparent"))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        let call = CallRequest {
            name: request.name.to_string(),
            args: request.arguments,
            request_id: context.id.to_string(),
            protocol: context.protocol_version().map(|v| v.to_string()),
            traceparent,
            progress_token: context.meta.get_progress_token(),
            depth: 0,
        };
        let env = state.env();
        let result = run_call(
            state,
            &token,
            &env,
            call,
            Some(context.peer.clone()),
            context.ct.clone(),
        )
        .await;
        let response = match result {
            PipelineResult::Invalid(e) => return Err(invalid_params(&e)),
            PipelineResult::Denied(d) => denial_result(&d),
            PipelineResult::Ran(Ok(out)) => output_result(out),
            PipelineResult::Ran(Err(ToolError::Failed(msg))) => {
                CallToolResult::error(vec![rmcp::model::ContentBlock::text(msg)])
            }
            PipelineResult::Ran(Err(e @ ToolError::InvalidArgument { .. })) => {
                CallToolResult::error(vec![rmcp::model::ContentBlock::text(e.to_string())])
            }
        };
        Ok(response.into())
    }

    fn get_tool(&self, _name: &str) -> Option<McpTool> {
        // Validation happens in capgate's own pipeline (schema first, then the guard); rmcp's
        // separate lookup would bypass the credential, so it is left unused.
        None
    }
}
