//! The call pipeline: every tool call (from a client, a nested tool, an in-process caller)
//! takes the same path through the door, `prepare → authorize → record → dispatch`, with
//! telemetry observing between the stages.
//!
//! Invariant: the door's stages are the guard and the audit log ([`HostStages`]), fixed when
//! the host is built, so no call reaches a tool without the guard's allow and its audit line;
//! a nested call comes back through here with its caller's credential.

use std::sync::Arc;
use std::time::{Duration, Instant};

use capgate_authz::{CallEnv, Channel, Denial, Grant, Guard, Issuer, Transport, VerifiedToken};
use capgate_core::context::{CallScope, ContextParts, LogLevel, NestedFuture};
use capgate_core::door::{Action, CallError, Door, Prepared, Stages};
use capgate_core::{Arguments, Resource, ToolContext, ToolError, ToolOutput};
use rmcp::Peer;
use rmcp::model::ProgressToken;
use rmcp::service::RoleServer;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ledger::TaskLedger;
use crate::telemetry::{CallRecord, Telemetry};

/// Deepest nesting of tool-calls-tool.
const MAX_CALL_DEPTH: u8 = 8;

/// The door's stages in a running host: capgate-authz's guard decides, the audit log records.
pub struct HostStages {
    pub(crate) guard: Arc<Guard>,
    pub(crate) telemetry: Arc<Telemetry>,
}

impl HostStages {
    /// The guard.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }
}

/// What a call is judged by: a verified token (already narrowed to the call's credential) and
/// where the call came from.
pub struct Caller {
    /// The token.
    pub token: Arc<VerifiedToken>,
    /// Transport and session.
    pub env: CallEnv,
    /// The JSON-RPC id of the client's request (nested calls keep their caller's).
    pub rpc_id: Option<Arc<str>>,
}

impl Stages for HostStages {
    type Caller = Caller;
    type Grant = Grant;
    type Denial = Box<Denial>;

    fn authorize(&self, caller: &Caller, call: &Prepared) -> Result<Grant, Box<Denial>> {
        self.guard.decide(&caller.token, call, &caller.env)
    }

    fn record(&self, caller: &Caller, call: &Prepared, grant: &Grant) -> Result<(), Box<Denial>> {
        self.telemetry
            .record_allowed(call, grant, &caller.env, caller.rpc_id.as_deref())
    }
}

/// The door of a running host.
pub type HostDoor = Door<HostStages>;

/// What running a call needs: the door, the telemetry that watches it, and the ledger it reads
/// the caller's task from.
pub(crate) struct Pipeline {
    pub(crate) door: Arc<HostDoor>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) ledger: Arc<TaskLedger>,
    /// Asked, for a denial's advice only, whether a new task could grant what was refused.
    pub(crate) issuer: Arc<Issuer>,
}

impl Pipeline {
    /// Fills in what a refused call would have needed, and the `task_begin` arguments to ask
    /// for it when a new task could grant it (the agent's own rights and the issuance policy,
    /// as a dry run). Nothing about other tenants goes in: only the caller's own request and
    /// rights, and the name of a rule the caller could read in the policy anyway.
    fn remedy(&self, caller: &Caller, d: &mut Denial) {
        // A new task cannot help with capgate's own fault, a revoked task, or a tool held
        // back until an operator accepts its changed definition.
        if d.fault || d.task_revoked.is_some() || d.reason == "definition_changed" {
            return;
        }
        let mut needed = json!({"tool": d.tool, "resource": d.resource});
        if let Some(b) = &d.budget {
            needed["budget"] = json!(b);
            if b.limit == "per_minute" {
                d.remedy = Some(json!({
                    "needed": needed,
                    "advice": "the per-minute rate recovers by itself: retry in a minute",
                }));
                return;
            }
        }
        let channel = Channel::in_band(caller.env.transport);
        let identity = caller.token.identity();
        // The arguments suggested are the ones the dry run judges: the denied task's purpose
        // (or a placeholder the model must replace) and its budget, if it had one.
        let purpose = d
            .task
            .as_ref()
            .map(|t| t.intent.purpose.clone())
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "<why this task exists>".into());
        let budget = d.task.as_ref().and_then(|t| t.grant.budget.clone());
        let mut remedy = json!({ "needed": needed });
        match self.issuer.could_grant(
            identity,
            &d.tool,
            &d.resource,
            &purpose,
            budget.as_ref(),
            channel,
        ) {
            Ok((prefix, approval)) => {
                let mut args = json!({"purpose": purpose, "tools": [d.tool]});
                if !prefix.is_empty() {
                    args["resources"] = json!({ d.tool.as_str(): [prefix] });
                }
                if let Some(b) = &budget {
                    args["budget"] = json!(b);
                }
                remedy["task_begin"] = args;
                remedy["advice"] = json!(if approval {
                    "a new task could grant this with a human's approval: call task_begin with these arguments (the human is asked when the client supports it), or ask an operator for an approval token"
                } else {
                    "a new task could grant this: call task_begin with these arguments"
                });
            }
            Err(why) => {
                remedy["advice"] = json!(format!("no new task would grant this: {why}"));
            }
        }
        d.remedy = Some(remedy);
    }
}

/// One tools/call as the pipeline sees it.
pub(crate) struct CallRequest {
    /// A tool call, a resource read or a prompt fetch (the last two name a pseudo-tool).
    pub(crate) action: Action,
    pub(crate) name: String,
    pub(crate) args: Option<Arguments>,
    pub(crate) request_id: String,
    pub(crate) protocol: Option<String>,
    pub(crate) traceparent: Option<String>,
    pub(crate) tool_call_id: Option<String>,
    pub(crate) progress_token: Option<ProgressToken>,
    pub(crate) depth: u8,
}

/// The client side of a call: where progress and logs go, and what cancels it.
#[derive(Clone, Default)]
pub(crate) struct Delivery {
    pub(crate) peer: Option<Peer<RoleServer>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) log_level: LogLevel,
}

/// How a call ended.
pub(crate) enum CallOutcome {
    /// The tool name or the arguments were unusable; the guard was not consulted.
    Invalid(CallError),
    /// The guard refused, or the decision could not be recorded; the tool did not run.
    Denied(Box<Denial>),
    /// The tool ran.
    Ran(Result<ToolOutput, ToolError>),
}

/// Runs one call through the door.
pub(crate) async fn run_call(
    host: &Arc<Pipeline>,
    caller: &Caller,
    call: CallRequest,
    delivery: Delivery,
) -> CallOutcome {
    let telemetry = &host.telemetry;
    let door = &host.door;
    let started = Instant::now();
    // The task is looked up before the span exists, because a call span's parent is the task's
    // root span (unless the caller sent trace context).
    let task_hint = host.ledger.task_of(&caller.token).ok().flatten();
    let span = telemetry.call_span(&CallRecord {
        tool: &call.name,
        request_id: &call.request_id,
        protocol: call.protocol.as_deref(),
        // Only streamable HTTP has MCP sessions; stdio's id is capgate's own, for the `session`
        // fact, and not an `mcp.session.id`.
        session: Some(&caller.env.session)
            .filter(|s| caller.env.transport == Transport::Http && s.as_ref() != "none")
            .map(|s| s.as_ref()),
        transport: caller.env.transport,
        traceparent: call.traceparent.as_deref(),
        tool_call_id: call.tool_call_id.as_deref(),
        task: task_hint.as_deref(),
        token: &caller.token,
        nested: call.depth > 0,
    });
    // What a guardrail verdict is about: the model's tool call id when the client sent one,
    // else the JSON-RPC request.
    let target = call
        .tool_call_id
        .as_deref()
        .or(Some(call.request_id.as_str()));
    async {
        let prepared = match door.prepare_as(call.action, &call.name, call.args) {
            Ok(p) => p,
            Err(e) => {
                telemetry.call_invalid(
                    &caller.token,
                    task_hint.as_deref(),
                    &call.name,
                    &e,
                    &caller.env,
                    started,
                    caller.rpc_id.as_deref(),
                );
                return CallOutcome::Invalid(e);
            }
        };
        let guard_started = Instant::now();
        let decision = door.authorize(caller, prepared);
        let guard_time = guard_started.elapsed();
        let authorized = match decision {
            Ok(a) => a,
            Err(mut denial) => {
                host.remedy(caller, &mut denial);
                telemetry.call_denied(
                    &caller.token,
                    &denial,
                    &caller.env,
                    guard_time,
                    started,
                    caller.rpc_id.as_deref(),
                    target,
                );
                return CallOutcome::Denied(denial);
            }
        };
        let recorded = match door.record(caller, authorized) {
            Ok(r) => r,
            Err(denial) => {
                telemetry.call_denied(
                    &caller.token,
                    &denial,
                    &caller.env,
                    Duration::ZERO,
                    started,
                    caller.rpc_id.as_deref(),
                    target,
                );
                return CallOutcome::Denied(denial);
            }
        };
        telemetry.call_allowed(recorded.call(), recorded.grant(), guard_time, target);
        let tool = recorded.call().spec().name.clone();
        let this_call = recorded
            .call()
            .with_resource(recorded.call().resource().clone());
        let ctx = ToolContext::new(
            &tool,
            ContextParts {
                peer: delivery.peer,
                progress_token: call.progress_token,
                log_level: delivery.log_level.clone(),
                cancel: delivery.cancel,
                nested: Some(Arc::new(Scope {
                    host: Arc::clone(host),
                    call: this_call,
                    caller: Caller {
                        token: Arc::clone(&caller.token),
                        env: caller.env.clone(),
                        rpc_id: caller.rpc_id.clone(),
                    },
                    depth: call.depth,
                    log_level: delivery.log_level,
                })),
            },
        );
        let exec_span = telemetry.execution_span(&tool);
        let result = door
            .dispatch(recorded, ctx)
            .instrument(exec_span.clone())
            .await;
        telemetry.call_finished(&tool, &result, &exec_span, &caller.env, started);
        CallOutcome::Ran(result)
    }
    .instrument(span)
    .await
}

/// What a running tool asks of its call: its own tool calls go back through the pipeline, with
/// its caller's credential, one level deeper; its sub-resources go to the same guard.
struct Scope {
    host: Arc<Pipeline>,
    /// The running call, to put to the guard again on other resources.
    call: Prepared,
    caller: Caller,
    depth: u8,
    log_level: LogLevel,
}

impl CallScope for Scope {
    fn call<'a>(
        &'a self,
        caller: &'a str,
        name: &'a str,
        args: Arguments,
        peer: Option<Peer<RoleServer>>,
        cancel: CancellationToken,
    ) -> NestedFuture<'a> {
        Box::pin(async move {
            if self.depth >= MAX_CALL_DEPTH {
                return Err(ToolError::failed(format!(
                    "tool calls nest deeper than {MAX_CALL_DEPTH}; refusing `{name}`"
                )));
            }
            let call = CallRequest {
                action: Action::Call,
                name: name.to_owned(),
                args: Some(args),
                request_id: format!("nested:{caller}"),
                protocol: None,
                traceparent: None,
                tool_call_id: None,
                progress_token: None,
                depth: self.depth + 1,
            };
            let delivery = Delivery {
                peer,
                cancel,
                log_level: self.log_level.clone(),
            };
            match run_call(&self.host, &self.caller, call, delivery).await {
                CallOutcome::Ran(Ok(out)) => Ok(out),
                CallOutcome::Ran(Err(e)) => Err(ToolError::failed(format!("`{name}` failed: {e}"))),
                CallOutcome::Denied(d) => Err(ToolError::failed(format!(
                    "`{name}` was denied: {}",
                    d.message
                ))),
                CallOutcome::Invalid(e) => Err(ToolError::failed(format!("`{name}`: {e}"))),
            }
        })
    }

    fn permits(&self, _caller: &str, resource: &Resource) -> bool {
        let call = self.call.with_resource(resource.clone());
        self.host
            .door
            .stages()
            .guard
            .permits(&self.caller.token, &call, &self.caller.env)
    }
}
