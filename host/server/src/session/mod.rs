//! The session: one MCP connection's view of capgate.
//!
//! * this file: the MCP handler (initialize, logging, tools, resources, prompts, completion);
//! * [`credential`]: which token a request is judged by;
//! * `in_band`: the `task_begin` / `task_end` tools.
//!
//! Invariant: tools/call, resources/read and prompts/get go through the pipeline (and so the
//! door) with the effective credential, the last two as their source's pseudo-tool; every list
//! is answered by the guard's own authorization (`visible_tools`, `permits`), never by a
//! separate filter; every answer is built in [`crate::answer`].

// MCP logging is deprecated for protocol 2026-07-28 (SEP-2577) but is part of the 2025 revisions
// capgate also serves, so it stays implemented.
#![allow(deprecated)]

pub(crate) mod approvals;
mod credential;
mod in_band;
pub(crate) mod listeners;
mod state;

use std::sync::{Arc, Mutex, OnceLock};

use capgate_authz::Transport;
use capgate_authz::{CallEnv, CredentialError, VerifiedToken};
use capgate_core::Arguments;
use capgate_core::content::check_uri;
use capgate_core::context::LogLevel;
use capgate_core::door::Action;
use capgate_core::tool::{Operation, ToolSpec};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CompleteRequestParams, CompleteResult, CompletionInfo,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, PromptsCapability,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference,
    ResourcesCapability, ServerCapabilities, ServerConfig, SetLevelRequestParams, Tool as McpTool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler};
use serde_json::Value;

pub use credential::{Credential, Holder, META_TOKEN_KEY};
pub(crate) use in_band::{TASK_BEGIN, TASK_END};

use crate::answer;
use crate::pipeline::{CallRequest, Caller, Delivery, run_call};
use crate::shared::Shared;
use state::SessionState;

/// Most Datalog runs one resources/list, templates list or prompts/list spends; entries past
/// it stay hidden (closed), like tools/list's budget.
const LIST_BUDGET: usize = 1000;

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

impl Session {
    /// One request put through the pipeline: a tool call, a resource read or a prompt fetch
    /// (the last two as their source's pseudo-tool), with the request's trace context, ids and
    /// delivery channel.
    fn request(
        &self,
        context: &RequestContext<RoleServer>,
        token: Arc<VerifiedToken>,
        action: Action,
        name: String,
        args: Option<Arguments>,
    ) -> (CallRequest, Caller, Delivery) {
        let state = &self.state;
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
            action,
            name,
            args,
            request_id: request_id.clone(),
            protocol: context.protocol_version().map(|v| v.to_string()),
            traceparent,
            tool_call_id,
            progress_token: context.meta.get_progress_token(),
            depth: 0,
        };
        let caller = Caller {
            token,
            env: state.env(context),
            rpc_id: Some(Arc::from(request_id)),
        };
        let delivery = Delivery {
            peer: Some(context.peer.clone()),
            cancel: context.ct.clone(),
            log_level: state.log_level.clone(),
        };
        (call, caller, delivery)
    }

    /// Whether the token could read `args` through the pseudo-tool `name` (a list entry, not
    /// an attempt: nothing is counted or recorded). `budget` bounds the Datalog runs of one list.
    fn could(
        &self,
        token: &Arc<VerifiedToken>,
        env: &CallEnv,
        action: Action,
        name: &str,
        args: Arguments,
        budget: &mut usize,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let host = &self.state.host;
        match host.door().catalog().prepare_as(action, name, Some(args)) {
            Ok(p) => host.guard().permits(token, &p, env),
            Err(_) => false,
        }
    }

    /// The token a list or a read is judged by, or why there is none.
    fn content_token(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<Arc<VerifiedToken>, CredentialError> {
        self.state.observe_request(context);
        self.state.effective(context)
    }
}

fn one(key: &str, value: impl Into<Value>) -> Arguments {
    let mut m = Arguments::new();
    m.insert(key.to_owned(), value.into());
    m
}

impl ServerHandler for Session {
    fn get_info(&self) -> ServerConfig {
        // Resources, prompts and completion are offered when something is registered to
        // serve them (natively, or an upstream's pseudo-tools).
        let catalog = self.state.host.door().catalog();
        let mut caps = ServerCapabilities::builder()
            .enable_logging()
            .enable_tools()
            .build();
        let reads = catalog.offers(Action::Read);
        let prompts = catalog.offers(Action::Prompt);
        // list_changed is sent when an upstream's lists change (session/listeners.rs).
        caps.tools = caps.tools.map(|mut t| {
            t.list_changed = Some(true);
            t
        });
        if reads {
            let mut r = ResourcesCapability::default();
            r.list_changed = Some(true);
            caps.resources = Some(r);
        }
        if prompts {
            let mut p = PromptsCapability::default();
            p.list_changed = Some(true);
            caps.prompts = Some(p);
        }
        if reads || prompts {
            caps.completions = Some(Default::default());
        }
        InitializeResult::new(caps)
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
        let answer = self.negotiate_initialize(&request)?;
        // A client of a live session hears when a provider's lists change.
        self.state.host.listeners.join(
            context.peer.clone(),
            self.state.host.door().catalog().changes(),
        );
        Ok(answer)
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
        let name = request.name.to_string();
        let (call, caller, delivery) = self.request(
            &context,
            token,
            Action::Call,
            name.clone(),
            request.arguments,
        );
        let outcome = run_call(&state.host.pipeline, &caller, call, delivery).await;
        answer::call(&name, outcome).map(Into::into)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let Ok(token) = self.content_token(&context) else {
            return Ok(ListResourcesResult::with_all_items(Vec::new()));
        };
        let env = self.state.env(&context);
        let mut budget = LIST_BUDGET;
        let mut out = Vec::new();
        let catalog = self.state.host.door().catalog();
        let contested = catalog.contested_uris();
        for (pseudo, source) in catalog.resource_sources() {
            for r in source.resources() {
                if check_uri(&r.uri).is_ok()
                    && !contested.contains(&r.uri)
                    && self.could(
                        &token,
                        &env,
                        Action::Read,
                        pseudo,
                        one("uri", r.uri.clone()),
                        &mut budget,
                    )
                {
                    out.push(r);
                }
            }
        }
        Ok(ListResourcesResult::with_all_items(out))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let Ok(token) = self.content_token(&context) else {
            return Ok(ListResourceTemplatesResult::with_all_items(Vec::new()));
        };
        let env = self.state.env(&context);
        let mut budget = LIST_BUDGET;
        let mut out = Vec::new();
        for (pseudo, source) in self.state.host.door().catalog().resource_sources() {
            // A template is listed when the token could read the template's own spelling: a
            // grant on its literal prefix (`test://template/`) covers every instance of it.
            for t in source.templates() {
                if self.could(
                    &token,
                    &env,
                    Action::Read,
                    pseudo,
                    one("uri", t.uri_template.clone()),
                    &mut budget,
                ) {
                    out.push(t);
                }
            }
        }
        Ok(ListResourceTemplatesResult::with_all_items(out))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let token = self
            .content_token(&context)
            .map_err(|e| answer::credential_error(&e))?;
        let uri = request.uri;
        let what = format!("resources/read of `{uri}`");
        if let Err(e) = check_uri(&uri) {
            return Err(McpError::invalid_params(format!("{what}: {e}"), None));
        }
        let Some(pseudo) = self.state.host.door().catalog().resource_owner(&uri) else {
            return Err(answer::no_resource(&uri));
        };
        let (call, caller, delivery) = self.request(
            &context,
            token,
            Action::Read,
            pseudo.to_owned(),
            Some(one("uri", uri)),
        );
        let outcome = run_call(&self.state.host.pipeline, &caller, call, delivery).await;
        answer::content::<ReadResourceResult>(&what, outcome).map(Into::into)
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let Ok(token) = self.content_token(&context) else {
            return Ok(ListPromptsResult::with_all_items(Vec::new()));
        };
        let env = self.state.env(&context);
        let mut budget = LIST_BUDGET;
        let mut out = Vec::new();
        for (pseudo, hosted, mut prompt) in self.state.host.door().catalog().prompts() {
            if self.could(
                &token,
                &env,
                Action::Prompt,
                pseudo,
                one("name", prompt.name.clone()),
                &mut budget,
            ) {
                prompt.name = hosted;
                out.push(prompt);
            }
        }
        Ok(ListPromptsResult::with_all_items(out))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let token = self
            .content_token(&context)
            .map_err(|e| answer::credential_error(&e))?;
        let what = format!("prompts/get of `{}`", request.name);
        let Some((pseudo, name)) = self.state.host.door().catalog().prompt_owner(&request.name)
        else {
            return Err(answer::no_prompt(&request.name));
        };
        let mut args = one("name", name);
        if let Some(a) = request.arguments {
            args.insert("arguments".into(), Value::Object(a));
        }
        let (call, caller, delivery) = self.request(
            &context,
            token,
            Action::Prompt,
            pseudo.to_owned(),
            Some(args),
        );
        let outcome = run_call(&self.state.host.pipeline, &caller, call, delivery).await;
        answer::content::<GetPromptResult>(&what, outcome).map(Into::into)
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        // capgate offers no completions of its own; it answers for what the token could
        // fetch (an empty list), and refuses to confirm what it could not.
        let token = self
            .content_token(&context)
            .map_err(|e| answer::credential_error(&e))?;
        let env = self.state.env(&context);
        let catalog = self.state.host.door().catalog();
        let mut budget = 1;
        let visible = match &request.r#ref {
            Reference::Prompt(p) => catalog.prompt_owner(&p.name).is_some_and(|(pseudo, name)| {
                self.could(
                    &token,
                    &env,
                    Action::Prompt,
                    pseudo,
                    one("name", name),
                    &mut budget,
                )
            }),
            Reference::Resource(r) => catalog.resource_owner(&r.uri).is_some_and(|pseudo| {
                self.could(
                    &token,
                    &env,
                    Action::Read,
                    pseudo,
                    one("uri", r.uri.clone()),
                    &mut budget,
                )
            }),
            _ => false,
        };
        if !visible {
            return Err(McpError::invalid_params(
                "completion/complete: no such prompt or resource for this token",
                None,
            ));
        }
        Ok(CompleteResult::new(CompletionInfo::default()))
    }

    fn get_tool(&self, _name: &str) -> Option<McpTool> {
        // Validation happens in capgate's own pipeline (schema first, then the guard); rmcp's
        // separate lookup would bypass the credential, so it is left unused.
        None
    }
}
