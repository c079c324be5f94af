//! The in-band task tools, `task_begin` and `task_end`: an LLM holding an agent token declares
//! its task itself, and ends it.
//!
//! Invariant: they act on the call's credential (the presented token, narrowed by a `_meta`
//! token), never on something wider; approval comes only from a human, through MCP elicitation
//! when `[policy] elicitation_approval` allows it, never from the model's arguments; and the
//! store work runs off the async threads.

use std::sync::Arc;

use capgate_authz::{Channel, IssuanceError, VerifiedToken};
use capgate_core::task::{EndReason, Intent};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ElicitationAction, ElicitationSchema, InputRequest, InputRequests,
    InputRequiredResult, InputResponses, Tool as McpTool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, Peer};
use serde_json::{Map, Value, json};

use super::approvals::{PENDING_TTL, Resume};
use super::state::{Binding, SessionState};
use crate::answer;
use crate::shared::Shared;
use crate::telemetry::stateless_protocol;

/// Names of the in-band tools (hosted tools may not take them).
pub(crate) const TASK_BEGIN: &str = "task_begin";
/// See [`TASK_BEGIN`].
pub(crate) const TASK_END: &str = "task_end";

/// `task_begin`: issues the task and binds this session to it.
///
/// A task that needs a human's approval asks for it when `[policy] elicitation_approval` allows:
/// on 2025 sessions with an `elicitation/create` request, on 2026-07-28 (which has no
/// server-initiated requests) with an input-required result the client answers by retrying
/// with the human's answer. Either way a yes becomes `approved_by`, and a no, a dismissal or no
/// answer leaves the refusal standing.
pub(super) async fn begin(
    state: &SessionState,
    request: CallToolRequestParams,
    ctx: &RequestContext<RoleServer>,
) -> Result<CallToolResponse, McpError> {
    let token = match state.call_credential(ctx) {
        Ok(t) => t,
        Err(e) => return Ok(answer::credential(&e).into()),
    };
    let args = Value::Object(request.arguments.unwrap_or_default());
    let mut intent: Intent = match serde_json::from_value(args) {
        Ok(i) => i,
        Err(e) => return Ok(answer::bad_task_request(e.to_string()).into()),
    };
    // The model cannot vouch for a human: approval comes only from the human, asked
    // through elicitation below.
    if intent.approved_by.is_some() {
        return Ok(answer::bad_task_request(
            "`approved_by` cannot be asserted in-band: when a tool needs approval, capgate asks the human through MCP elicitation".into(),
        ).into());
    }
    let channel = Channel::in_band(state.transport);
    let host = &state.host;
    let asks = host.config.policy.elicitation_approval;
    let protocol = ctx.protocol_version().map(|v| v.to_string());
    let round_trips = stateless_protocol(protocol.as_deref());

    // A 2026-07-28 retry carrying the human's answer to a question asked in the round before.
    let mut answered = false;
    if let Some(handle) = &request.request_state {
        if !round_trips || !asks {
            return Ok(answer::bad_task_request(
                "`requestState` answers an approval question, which capgate asks only on protocol 2026-07-28 with [policy] elicitation_approval on".into(),
            ).into());
        }
        match host.approvals.take(handle, token.revocation_ids(), &intent) {
            Ok(()) => {}
            Err(Resume::Unknown) => return Ok(answer::bad_task_request(
                "`requestState` names no open approval question (it was answered already, expired after 120 s, or was never asked): call task_begin again without it".into(),
            ).into()),
            Err(Resume::Mismatch) => return Ok(answer::bad_task_request(
                "this retry is not the request the human was asked about (another credential or other arguments): call task_begin again".into(),
            ).into()),
        }
        answered = true;
        intent.approved_by = approver_in(request.input_responses.as_ref(), ctx);
    }

    // A session request that came with a DPoP proof binds the new task token to its key.
    let holder = super::state::holder_of(ctx).map(|h| h.to_string());
    let mut outcome = issue(host, &token, intent.clone(), channel, holder.clone()).await?;
    if let Err(IssuanceError::Denied { refusal, .. }) = &outcome
        && refusal.reason == "approval-required"
        && asks
        && !answered
    {
        let message = approval_message(&token, &intent);
        if round_trips {
            if let Some(asking) = ask_by_round_trip(host, &token, &intent, message, ctx) {
                return Ok(CallToolResponse::InputRequired(asking));
            }
        } else if let Some(approver) = ask_approval(&ctx.peer, message).await {
            intent.approved_by = Some(approver);
            outcome = issue(host, &token, intent, channel, holder).await?;
        }
    }
    let task = match outcome {
        Ok(task) => task,
        Err(e) => return Ok(answer::task_refused(&e).into()),
    };
    let verified = host
        .verifier
        .verify(&task.token)
        .map_err(|e| McpError::internal_error(capgate_core::error::chain(&e), None))?;
    *state.binding.lock().unwrap_or_else(|p| p.into_inner()) = Some(Binding {
        token: verified,
        task_id: task.record.id.clone(),
    });
    Ok(answer::task_begun(&task).into())
}

/// The input-required result that asks the human (2026-07-28); `None` when the client cannot
/// show a form or too many questions are open, and the refusal then stands.
fn ask_by_round_trip(
    host: &Shared,
    token: &VerifiedToken,
    intent: &Intent,
    message: String,
    ctx: &RequestContext<RoleServer>,
) -> Option<InputRequiredResult> {
    let caps = ctx.client_capabilities()?;
    caps.elicitation.as_ref()?;
    let schema = ElicitationSchema::from_type::<Approval>().ok()?;
    let handle = host
        .approvals
        .ask(&token.identity().agent, token.revocation_ids(), intent)?;
    let form = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
        meta: None,
        message,
        requested_schema: schema,
    });
    let mut questions = InputRequests::new();
    questions.insert(APPROVAL_KEY.to_owned(), InputRequest::Elicitation(form));
    Some(InputRequiredResult::new(Some(questions), Some(handle)))
}

/// The key of the approval question in `inputRequests` / `inputResponses`.
const APPROVAL_KEY: &str = "approval";

/// The approver a 2026-07-28 retry names: only an accepted form that says yes.
fn approver_in(
    responses: Option<&InputResponses>,
    ctx: &RequestContext<RoleServer>,
) -> Option<String> {
    let result: ElicitResult =
        serde_json::from_value(responses?.get(APPROVAL_KEY)?.clone()).ok()?;
    if result.action != ElicitationAction::Accept {
        return None;
    }
    let form: Approval = serde_json::from_value(result.content?).ok()?;
    let client = ctx
        .client_info()
        .map(|i| i.name)
        .unwrap_or_else(|| "client".into());
    approver_of(form, &client)
}

/// `Some(approver)` on an explicit yes.
fn approver_of(form: Approval, client: &str) -> Option<String> {
    if !form.approve {
        return None;
    }
    Some(
        form.approver
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| format!("elicitation via {client}")),
    )
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
    holder: Option<String>,
) -> Result<Result<capgate_authz::IssuedTask, IssuanceError>, McpError> {
    let (host, token) = (Arc::clone(host), Arc::clone(token));
    tokio::task::spawn_blocking(move || host.issuer.issue_bound(&token, intent, channel, holder))
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

/// What the human is asked: everything the approval will cover, since `approved_by` applies
/// to every tool and prefix of the request, not only the one that needed it.
fn approval_message(token: &VerifiedToken, intent: &Intent) -> String {
    let mut needs = Vec::new();
    for tool in &intent.tools {
        match intent.resources.get(tool).filter(|r| !r.is_empty()) {
            Some(prefixes) => needs.push(format!("`{tool}` on {}", prefixes.join(", "))),
            None => needs.push(format!("`{tool}` on all the resources the agent may use")),
        }
    }
    let mut extra = String::new();
    if let Some(w) = &intent.on_behalf_of {
        extra.push_str(&format!("\nOn behalf of: {w}"));
    }
    if let Some(ttl) = &intent.ttl {
        extra.push_str(&format!(
            "\nFor: {}",
            match ttl {
                capgate_core::task::Ttl::Seconds(s) => format!("{s} s"),
                capgate_core::task::Ttl::Text(t) => t.clone(),
            }
        ));
    }
    if let Some(b) = &intent.budget {
        extra.push_str(&format!(
            "\nBudget: {}",
            serde_json::to_string(b).unwrap_or_default()
        ));
    }
    format!(
        "Agent `{}` (tenant `{}`) asks to begin a task with side effects.\nPurpose: {}\nIt needs {}.{extra}\nApprove?",
        token.identity().agent,
        token.identity().tenant,
        intent.purpose,
        needs.join("; "),
    )
}

/// Asks the human, through MCP elicitation (2025 sessions), to approve a task. `Some(approver)`
/// only on an explicit yes; a no, a dismissal, a timeout or a client without elicitation is
/// `None`.
async fn ask_approval(peer: &Peer<RoleServer>, message: String) -> Option<String> {
    if peer.supported_elicitation_modes().is_empty() {
        return None;
    }
    let form = peer
        .elicit_with_timeout::<Approval>(message, Some(PENDING_TTL))
        .await
        .ok()??;
    let client = peer
        .peer_info()
        .map(|i| i.client_info.name.clone())
        .unwrap_or_else(|| "client".into());
    approver_of(form, &client)
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
            "on_behalf_of": {"type": "string", "description": "Who the task acts for."},
            "budget": {"type": "object", "additionalProperties": false,
                       "description": "Limits the task accepts: calls in all, per tool, per minute.",
                       "properties": {
                           "calls": {"type": "integer", "minimum": 1},
                           "per_tool": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
                           "per_minute": {"type": "integer", "minimum": 1}
                       }}
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
