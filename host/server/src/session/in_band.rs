//! The in-band task tools, `task_begin` and `task_end`: an LLM holding an agent token declares
//! its task itself, and ends it.
//!
//! Invariant: they act on the call's credential (the presented token, narrowed by a `_meta`
//! token), never on something wider; approval comes only from a human, through MCP elicitation
//! when `[policy] elicitation_approval` allows it, never from the model's arguments; and the
//! store work runs off the async threads.

use std::sync::Arc;
use std::time::Duration;

use capgate_authz::{Channel, IssuanceError, Transport, VerifiedToken};
use capgate_core::task::{EndReason, Intent};
use rmcp::model::{CallToolResult, Tool as McpTool, ToolAnnotations};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, Peer};
use serde_json::{Map, Value, json};

use super::state::{Binding, SessionState};
use crate::answer;
use crate::shared::Shared;

/// Names of the in-band tools (hosted tools may not take them).
pub(crate) const TASK_BEGIN: &str = "task_begin";
/// See [`TASK_BEGIN`].
pub(crate) const TASK_END: &str = "task_end";

/// `task_begin`: issues the task and binds this session to it.
pub(super) async fn begin(
    state: &SessionState,
    args: Option<Map<String, Value>>,
    ctx: &RequestContext<RoleServer>,
) -> Result<CallToolResult, McpError> {
    let token = match state.call_credential(ctx) {
        Ok(t) => t,
        Err(e) => return Ok(answer::credential(&e)),
    };
    let mut intent: Intent = match serde_json::from_value(Value::Object(args.unwrap_or_default())) {
        Ok(i) => i,
        Err(e) => return Ok(answer::bad_task_request(e.to_string())),
    };
    // The model cannot vouch for a human: approval comes only from the human, asked
    // through elicitation below.
    if intent.approved_by.is_some() {
        return Ok(answer::bad_task_request(
            "`approved_by` cannot be asserted in-band: when a tool needs approval, capgate asks the human through MCP elicitation".into(),
        ));
    }
    let channel = match state.transport {
        Transport::Http => Channel::McpHttp,
        _ => Channel::Stdio,
    };
    let host = &state.host;
    let mut outcome = issue(host, &token, intent.clone(), channel).await?;
    if let Err(IssuanceError::Denied {
        refusal,
        tool,
        resource,
    }) = &outcome
        && refusal.reason == "approval-required"
        && host.config.policy.elicitation_approval
        && let Some(approver) = ask_approval(&ctx.peer, &token, &intent, tool, resource).await
    {
        intent.approved_by = Some(approver);
        outcome = issue(host, &token, intent, channel).await?;
    }
    let task = match outcome {
        Ok(task) => task,
        Err(e) => return Ok(answer::task_refused(&e)),
    };
    let verified = host
        .verifier
        .verify(&task.token)
        .map_err(|e| McpError::internal_error(capgate_core::error::chain(&e), None))?;
    *state.binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(Binding {
        token: verified,
        task_id: task.record.id.clone(),
    });
    Ok(answer::task_begun(&task))
}

/// `task_end`: ends a task of this agent (by default the one bound to this session).
pub(super) async fn end(
    state: &SessionState,
    args: Option<Map<String, Value>>,
    ctx: &RequestContext<RoleServer>,
) -> Result<CallToolResult, McpError> {
    let token = match state.call_credential(ctx) {
        Ok(t) => t,
        Err(e) => return Ok(answer::credential(&e)),
    };
    let requested = match args.as_ref().and_then(|a| a.get("task_id")) {
        None => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Ok(answer::bad_task_request(
                "`task_id` must be a string".into(),
            ));
        }
    };
    let binding = state
        .binding
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let task_id = match (requested, &binding) {
        (Some(id), _) => id,
        (None, Some(b)) => b.task_id.clone(),
        (None, None) => {
            return Ok(answer::bad_task_request(
                "no task is bound to this session; pass `task_id`".into(),
            ));
        }
    };
    let host = Arc::clone(&state.host);
    let id = task_id.clone();
    // Only the agent a task was issued to may end it, through its agent token or a token of
    // that very task (never one of a sibling task).
    let ended = tokio::task::spawn_blocking(move || {
        let ledger = host.ledger();
        match ledger.task(&id)? {
            Some(r) if ledger.speaks_for(&token, &r)? => Ok::<_, crate::error::Error>(Some(
                ledger.end_task(&r.id, EndReason::Completed)?.is_some(),
            )),
            _ => Ok(None),
        }
    })
    .await;
    let ended = match ended {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            return Ok(answer::task_refused(&IssuanceError::Unavailable(
                capgate_authz::StoreFault::new(e),
            )));
        }
        Err(e) => return Err(McpError::internal_error(e.to_string(), None)),
    };
    let Some(ended) = ended else {
        return Ok(answer::no_such_task(&task_id));
    };
    if binding.as_ref().is_some_and(|b| b.task_id == task_id) {
        *state.binding.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    Ok(answer::task_ended(&task_id, ended))
}

/// Issues off the async threads: issuance reads and writes the store.
async fn issue(
    host: &Arc<Shared>,
    token: &Arc<VerifiedToken>,
    intent: Intent,
    channel: Channel,
) -> Result<Result<capgate_authz::IssuedTask, IssuanceError>, McpError> {
    let (host, token) = (Arc::clone(host), Arc::clone(token));
    tokio::task::spawn_blocking(move || host.issuer.issue(&token, intent, channel))
        .await
        .map_err(|e| McpError::internal_error(format!("capgate's issuance failed: {e}"), None))
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

fn object_schema(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `task_begin` as tools/list shows it.
pub(super) fn task_begin_tool() -> McpTool {
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
        TASK_BEGIN,
        "Declare a task (purpose, tools, resources, lifetime) and receive access for exactly that. \
         Tools are only callable inside a task; this session is bound to the new task until task_end.",
        Arc::new(object_schema(schema)),
    )
    .with_annotations(ann)
}

/// `task_end` as tools/list shows it.
pub(super) fn task_end_tool() -> McpTool {
    let schema = json!({
        "type": "object",
        "properties": {"task_id": {"type": "string", "description": "Default: the task bound to this session."}},
        "additionalProperties": false
    });
    let mut ann = ToolAnnotations::new();
    ann.read_only_hint = Some(false);
    ann.destructive_hint = Some(false);
    McpTool::new(
        TASK_END,
        "End a task: its access is revoked at once, with every token derived from it.",
        Arc::new(object_schema(schema)),
    )
    .with_annotations(ann)
}
