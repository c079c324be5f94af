//! The session: one MCP connection's view of capgate.
//!
//! * this file: the MCP handler (initialize, logging, tools/list, tools/call);
//! * [`credential`]: which token a request is judged by;
//! * `in_band`: the `task_begin` / `task_end` tools.
//!
//! Invariant: tools/call goes through the pipeline (and so the door) with the effective
//! credential, and tools/list is answered by the guard's own authorization, never by a
//! separate filter; every answer is built in [`crate::answer`].

// MCP logging is deprecated for protocol 2026-07-28 (SEP-2577) but is part of the 2025 revisions
// capgate also serves, so it stays implemented.
#![allow(deprecated)]

pub(crate) mod approvals;
mod credential;
mod in_band;
mod state;

use std::sync::{Arc, Mutex, OnceLock};

use capgate_authz::Transport;
use capgate_core::context::LogLevel;
use capgate_core::tool::{Operation, ToolSpec};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, InitializeRequestParams,
    InitializeResult, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    SetLevelRequestParams, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};

pub use credential::{Credential, Holder, META_TOKEN_KEY};
pub(crate) use in_band::{TASK_BEGIN, TASK_END};

use crate::answer;
use crate::pipeline::{CallRequest, Caller, Delivery, run_call};
use crate::shared::Shared;
use state::SessionState;

/// The MCP server handler for one connection.
#[derive(Clone)]
pub struct Session {
    state: Arc<SessionState>,
}

impl Session {
    pub(crate) fn new(
        host: Arc<Shared>,
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
                stdio_verified: OnceLock::new(),
                session_id: Mutex::new(session_id),
                binding: Mutex::new(None),
                log_level: LogLevel::default(),
            }),
        }
    }
}

/// A hosted tool as tools/list shows it. The annotations follow the tool's declared operation.
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
    let read_only = spec.operation == Operation::Read;
    let mut ann = ToolAnnotations::new();
    ann.read_only_hint = Some(read_only);
    ann.open_world_hint = Some(spec.operation == Operation::Network);
    if !read_only {
        ann.destructive_hint = Some(spec.operation != Operation::Network);
    }
    t.with_annotations(ann)
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
        self.state.log_level.set(request.level);
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
            tools.push(in_band::task_begin_tool());
            tools.push(in_band::task_end_tool());
            let env = state.env(&context);
            tools.extend(
                state
                    .host
                    .guard()
                    .visible_tools(&token, state.host.door().catalog(), &env)
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
            TASK_BEGIN => return in_band::begin(state, request, &context).await,
            TASK_END => {
                return in_band::end(state, request.arguments, &context)
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
                    .telemetry()
                    .token_refused(&request.name, &e, &state.env(&context));
                return Ok(answer::credential(&e).into());
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
        let name = request.name.to_string();
        // The model's tool call id, when the client passes it along (`_meta`, under the
        // attribute's own name).
        let tool_call_id = context
            .meta
            .get("gen_ai.tool.call.id")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .map(str::to_owned);
        let request_id = context.id.to_string();
        let call = CallRequest {
            name: name.clone(),
            args: request.arguments,
            request_id: request_id.clone(),
            protocol: context.protocol_version().map(|v| v.to_string()),
            traceparent,
            tool_call_id,
            progress_token: context.meta.get_progress_token(),
            depth: 0,
        };
        let caller = Caller {
            token,
            env: state.env(&context),
            rpc_id: Some(Arc::from(request_id)),
        };
        let delivery = Delivery {
            peer: Some(context.peer.clone()),
            cancel: context.ct.clone(),
            log_level: state.log_level.clone(),
        };
        let outcome = run_call(&state.host.pipeline, &caller, call, delivery).await;
        answer::call(&name, outcome).map(Into::into)
    }

    fn get_tool(&self, _name: &str) -> Option<McpTool> {
        // Validation happens in capgate's own pipeline (schema first, then the guard); rmcp's
        // separate lookup would bypass the credential, so it is left unused.
        None
    }
}
