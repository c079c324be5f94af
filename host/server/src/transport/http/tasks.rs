//! The task API: `POST /v1/tasks` (issue), `GET /v1/tasks/{id}` (look), `DELETE
//! /v1/tasks/{id}` (end).
//!
//! Invariant: a task is seen or ended only by a token that speaks for it (its agent's own
//! token, or a token carrying that very task's block, never a sibling's); approval comes only
//! from an operator-minted approval token in `Capgate-Approval`, spent by the request; and the
//! store work runs off the async threads.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capgate_authz::{Channel, CredentialError, StoreFault, TokenError, VerifiedToken};
use capgate_core::task::{EndReason, Intent, TaskRecord};
use capgate_core::time::rfc3339;
use serde_json::json;

use crate::answer::ApiError;
use crate::host::Host;
use crate::session::{Credential, Holder};

/// The header carrying an approval token (`capgate token approval`) with a task request.
pub const APPROVAL_HEADER: &str = "capgate-approval";

/// Runs store work off the async threads; a panic there is capgate's fault.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("capgate's worker failed: {e}")))?
}

fn store_fault(e: crate::error::Error) -> ApiError {
    ApiError::from(CredentialError::Unavailable(StoreFault::new(e)))
}

pub(super) async fn create(
    State(host): State<Host>,
    ext: axum::Extension<Credential>,
    holder: Option<axum::Extension<Holder>>,
    headers: HeaderMap,
    body: Result<Json<Intent>, JsonRejection>,
) -> Response {
    let token = Arc::clone(&ext.0.0);
    // A request that came with a DPoP proof gets a task token bound to the proof's key.
    let holder = holder.map(|h| h.0.jkt.to_string());
    match issue(host, token, holder, headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn issue(
    host: Host,
    token: Arc<VerifiedToken>,
    holder: Option<String>,
    headers: HeaderMap,
    body: Result<Json<Intent>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mut intent = match body {
        Ok(Json(i)) => i,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Err(ApiError::PayloadTooLarge(e.body_text()));
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "the body must be a JSON task intent {{purpose, tools, resources, ttl, on_behalf_of}}: {}",
                e.body_text()
            )));
        }
    };
    // Approval is never the requester's word: the agent could write any name. It comes from an
    // approval token the operator minted for a human, checked here like any token.
    if intent.approved_by.is_some() {
        return Err(ApiError::BadRequest(
            "`approved_by` cannot be asserted by the requester; send an approval token (minted by the operator with `capgate token approval --by NAME`) in the `Capgate-Approval` header".into(),
        ));
    }
    let approval = headers
        .get(APPROVAL_HEADER)
        .map(|raw| {
            raw.to_str()
                .map(str::to_owned)
                .map_err(|_| TokenError::NotApproval("the header is not ASCII".into()))
        })
        .transpose()
        .map_err(|error| ApiError::ApprovalRefused {
            header: APPROVAL_HEADER,
            error,
        })?;
    let task = blocking(move || {
        if let Some(raw) = approval {
            let who = token.identity();
            match host.issuer().spend_approval(&raw, &who.agent, &who.tenant) {
                Ok(by) => intent.approved_by = Some(by),
                Err(CredentialError::Token(e)) => {
                    return Err(ApiError::ApprovalRefused {
                        header: APPROVAL_HEADER,
                        error: e,
                    });
                }
                Err(e) => return Err(ApiError::from(e)),
            }
        }
        host.issuer()
            .issue_bound(&token, intent, Channel::Http, holder)
            .map_err(ApiError::Issuance)
    })
    .await?;
    let r = &task.record;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/tasks/{}", r.id))],
        Json(json!({
            "task_id": r.id,
            "token": task.token,
            "expires_at": rfc3339(r.expires_at),
            "granted": r.grant.tools,
            "budget": r.grant.budget,
            "holder": r.grant.holder,
            "trace_id": r.trace_id,
        })),
    )
        .into_response())
}

/// The task, if the presenting token speaks for it (see
/// [`TaskLedger::speaks_for`](crate::ledger::TaskLedger::speaks_for)).
fn owned_task(host: &Host, token: &VerifiedToken, id: &str) -> Result<TaskRecord, ApiError> {
    let ledger = host.ledger();
    let found = ledger.task(id).and_then(|t| match t {
        Some(t) => Ok(ledger.speaks_for(token, &t)?.then_some(t)),
        None => Ok(None),
    });
    match found {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(ApiError::NotFound(format!("no task `{id}` for this agent"))),
        Err(e) => Err(store_fault(e)),
    }
}

/// Runs `f` off the async threads on the task `id`, when the presenting token speaks for it.
async fn on_owned_task(
    host: Host,
    ext: axum::Extension<Credential>,
    id: String,
    f: impl FnOnce(&Host, TaskRecord) -> Result<Response, ApiError> + Send + 'static,
) -> Response {
    let token = Arc::clone(&ext.0.0);
    blocking(move || f(&host, owned_task(&host, &token, &id)?))
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn show(
    State(host): State<Host>,
    Path(id): Path<String>,
    ext: axum::Extension<Credential>,
) -> Response {
    on_owned_task(host, ext, id, |host, task| {
        host.telemetry().flush_usage();
        let id = &task.id;
        let usage = host.ledger().store().usage(id).map_err(store_fault)?;
        let active = task.is_active(std::time::SystemTime::now());
        Ok(Json(json!({"task": task, "active": active, "usage": usage})).into_response())
    })
    .await
}

pub(super) async fn end(
    State(host): State<Host>,
    Path(id): Path<String>,
    ext: axum::Extension<Credential>,
) -> Response {
    on_owned_task(host, ext, id, |host, task| {
        let ended = host
            .end_task(&task.id, EndReason::Completed)
            .map_err(store_fault)?;
        Ok(match ended {
            Some(t) => Json(json!({"task_id": t.id, "ended": true, "end_reason": "completed"})),
            None => Json(json!({
                "task_id": task.id,
                "ended": false,
                "already_ended": true,
                "end_reason": task.end_reason.map(|r| r.as_str()),
            })),
        }
        .into_response())
    })
    .await
}
