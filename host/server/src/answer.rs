//! The one place outcomes become answers: MCP results, JSON-RPC errors and HTTP responses.
//!
//! Invariant: every shape a client reads is built here, once.
//!
//! * A guard's refusal is an `isError` result whose structured content is the deny body
//!   ([`deny_body`]); a refused task request carries the same body (HTTP 403, in-band result).
//! * Arguments a tool's schema or resource function refuses are tool execution errors
//!   (`isError: true`, SEP-1303) naming the field and the rule, so the model reads why; only an
//!   unknown tool or a malformed request is a JSON-RPC protocol error.
//! * A fault of capgate's own (its store, its audit log) is said to be capgate's: an `isError`
//!   result with `fault: "server"` on a call, 503 on HTTP; never `invalid_token`, never 403.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capgate_authz::{CredentialError, Denial, IssuanceError, IssuedTask, TokenError};
use capgate_core::door::CallError;
use capgate_core::error::chain;
use capgate_core::time::rfc3339;
use capgate_core::{ToolError, ToolOutput};
use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode};
use serde_json::{Value, json};

use crate::pipeline::CallOutcome;

/// The deny body: which check failed, in words and in structure.
pub(crate) fn deny_body(
    reason: &str,
    message: &str,
    tool: &str,
    resource: &str,
    failed_checks: &impl serde::Serialize,
) -> Value {
    json!({
        "decision": "deny",
        "reason": reason,
        "message": message,
        "tool": tool,
        "resource": resource,
        "failed_checks": failed_checks,
    })
}

fn denial_body(d: &Denial) -> Value {
    let mut body = deny_body(
        &d.reason,
        &d.message,
        &d.tool,
        &d.resource,
        &d.failed_checks,
    );
    if let Some(b) = &d.budget {
        body["budget"] = json!(b);
    }
    if let Some(f) = &d.task_revoked {
        body["task_revoked"] = json!(f);
    }
    if let Some(r) = &d.remedy {
        body["remedy"] = r.clone();
    }
    body
}

/// The body of a refusal that is capgate's own fault.
fn fault_body(reason: &str, message: &str) -> Value {
    json!({"decision": "error", "fault": "server", "reason": reason, "message": message})
}

fn error_result(text: String, structured: Value) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({ "capgate": structured }));
    r
}

/// The answer to a tools/call, whatever became of it.
pub(crate) fn call(tool: &str, outcome: CallOutcome) -> Result<CallToolResult, McpError> {
    match outcome {
        CallOutcome::Invalid(e @ CallError::UnknownTool { .. }) => Err(McpError::new(
            ErrorCode::INVALID_PARAMS,
            e.to_string(),
            Some(json!({"tool": tool})),
        )),
        CallOutcome::Invalid(CallError::InvalidArguments {
            tool,
            field,
            rule,
            message,
        }) => Ok(invalid_arguments(&tool, &field, &rule, &message)),
        CallOutcome::Invalid(other) => Err(McpError::invalid_params(other.to_string(), None)),
        CallOutcome::Denied(d) => Ok(denial(&d)),
        CallOutcome::Ran(Ok(out)) => Ok(output(out)),
        CallOutcome::Ran(Err(ToolError::InvalidArgument { field, message })) => {
            Ok(invalid_arguments(tool, &field, "tool", &message))
        }
        CallOutcome::Ran(Err(ToolError::Failed(msg))) => {
            Ok(CallToolResult::error(vec![ContentBlock::text(msg)]))
        }
        CallOutcome::Ran(Err(other)) => Ok(CallToolResult::error(vec![ContentBlock::text(
            other.to_string(),
        )])),
    }
}

/// The JSON-RPC code of a refused `resources/read` or `prompts/get` (they have no `isError`
/// result): the deny body rides in `data`, as in a refused call's structured content.
pub(crate) const DENIED: ErrorCode = ErrorCode(-32003);

/// The answer to a `resources/read` or a `prompts/get`, whatever became of it. These results
/// have no `isError` form, so every refusal is a JSON-RPC error: a denial carries the deny
/// body, capgate's own fault says so (`fault: "server"`), and a provider's failure (an
/// upstream's error) is told apart from both (`fault: "provider"`).
pub(crate) fn content<T: serde::de::DeserializeOwned>(
    what: &str,
    outcome: CallOutcome,
) -> Result<T, McpError> {
    match outcome {
        CallOutcome::Invalid(CallError::InvalidArguments {
            message,
            field,
            rule,
            ..
        }) => Err(McpError::invalid_params(
            format!("{what}: {message}"),
            Some(json!({"decision": "invalid", "field": field, "rule": rule})),
        )),
        CallOutcome::Invalid(e) => Err(McpError::invalid_params(format!("{what}: {e}"), None)),
        CallOutcome::Denied(d) if d.fault => Err(McpError::new(
            ErrorCode::INTERNAL_ERROR,
            format!("capgate could not decide on {what}: {}", d.message),
            Some(fault_body(&d.reason, &d.message)),
        )),
        CallOutcome::Denied(d) => Err(McpError::new(
            DENIED,
            format!("capgate denied {what}: {}", d.message),
            Some(denial_body(&d)),
        )),
        CallOutcome::Ran(Err(ToolError::InvalidArgument { field, message })) => {
            Err(McpError::invalid_params(
                format!("{what}: `{field}`: {message}"),
                Some(json!({"decision": "invalid", "field": field, "rule": "provider"})),
            ))
        }
        CallOutcome::Ran(Err(e)) => Err(McpError::new(
            ErrorCode::INTERNAL_ERROR,
            format!("{what} failed: {e}"),
            Some(json!({"fault": "provider", "message": e.to_string()})),
        )),
        CallOutcome::Ran(Ok(out)) => out
            .structured
            .ok_or_else(|| "no result".to_owned())
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            .map_err(|e| {
                McpError::new(
                    ErrorCode::INTERNAL_ERROR,
                    format!("capgate could not pass on {what}: {e}"),
                    Some(fault_body("bad_result", &e)),
                )
            }),
    }
}

/// A `resources/read` or `prompts/get` whose credential cannot be used.
pub(crate) fn credential_error(e: &CredentialError) -> McpError {
    let r = credential(e);
    let data = r
        .structured_content
        .and_then(|mut v| v.get_mut("capgate").map(Value::take));
    let fault = data.as_ref().and_then(|d| d.get("fault")).is_some();
    let text = r
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    McpError::new(
        if fault {
            ErrorCode::INTERNAL_ERROR
        } else {
            DENIED
        },
        text,
        data,
    )
}

/// No source serves this URI (`-32002`, the code the MCP spec gives a missing resource).
pub(crate) fn no_resource(uri: &str) -> McpError {
    McpError::resource_not_found(
        format!("no hosted resource `{uri}`; resources/list shows what this token can read"),
        Some(json!({"uri": uri})),
    )
}

/// No source hosts a prompt by this name.
pub(crate) fn no_prompt(name: &str) -> McpError {
    McpError::invalid_params(
        format!("unknown prompt `{name}`; prompts/list shows what this token can fetch"),
        Some(json!({"prompt": name})),
    )
}

/// Arguments refused before (or by) the tool: a tool execution error naming field and rule.
fn invalid_arguments(tool: &str, field: &str, rule: &str, message: &str) -> CallToolResult {
    error_result(
        format!("invalid arguments for tool `{tool}`: {message}"),
        json!({
            "decision": "invalid",
            "reason": "invalid_arguments",
            "tool": tool,
            "field": field,
            "rule": rule,
            "message": message,
        }),
    )
}

/// A refused call: `isError`, the failed check in words and in structure; or, when capgate
/// could not decide, a result that says so.
fn denial(d: &Denial) -> CallToolResult {
    if d.fault {
        return error_result(
            format!("capgate could not decide on `{}`: {}", d.tool, d.message),
            fault_body(&d.reason, &d.message),
        );
    }
    // The text is what a model reads first: the failed check, then what to do about it.
    let mut text = format!(
        "capgate denied `{}` on `{}`: {}",
        d.tool, d.resource, d.message
    );
    if let Some(r) = &d.remedy {
        if let Some(advice) = r.get("advice").and_then(Value::as_str) {
            text.push_str(&format!(". {advice}"));
        }
        if let Some(args) = r.get("task_begin") {
            text.push_str(&format!(": {args}"));
        }
    }
    error_result(text, denial_body(d))
}

fn output(out: ToolOutput) -> CallToolResult {
    let mut r = CallToolResult::success(out.content);
    r.structured_content = out.structured;
    r
}

/// A call whose credential cannot be used (a stdio token, a `_meta` token).
pub(crate) fn credential(e: &CredentialError) -> CallToolResult {
    match e {
        CredentialError::Token(t) => error_result(
            format!("capgate denied the call: {}", chain(t)),
            json!({"decision": "deny", "reason": t.kind(), "message": chain(t)}),
        ),
        CredentialError::Unavailable(f) => error_result(
            format!(
                "capgate could not check the token: {}; this is capgate's fault, not the request's: retry later",
                chain(f)
            ),
            fault_body("store_unavailable", &chain(f)),
        ),
    }
}

/// In-band `task_begin` arguments that are not a task request.
pub(crate) fn bad_task_request(message: String) -> CallToolResult {
    error_result(
        format!("invalid arguments for tool `task_begin`: {message}"),
        json!({"decision": "invalid", "reason": "invalid_request", "tool": "task_begin", "message": message}),
    )
}

/// What a task request gets back, in-band.
pub(crate) fn task_begun(task: &IssuedTask) -> CallToolResult {
    let r = &task.record;
    let mut out = CallToolResult::success(vec![ContentBlock::text(format!(
        "Task {} begun; this session now acts under it until task_end or {}. Granted: {}",
        r.id,
        rfc3339(r.expires_at),
        serde_json::to_string(&r.grant.tools).unwrap_or_default()
    ))]);
    out.structured_content = Some(json!({
        "task_id": r.id,
        "expires_at": rfc3339(r.expires_at),
        "granted": r.grant.tools,
        "budget": r.grant.budget,
        "token": task.token,
        "bound_to_session": true,
    }));
    out
}

/// A refused task request, in-band.
pub(crate) fn task_refused(e: &IssuanceError) -> CallToolResult {
    if e.is_fault() {
        return error_result(
            format!(
                "{}; this is capgate's fault, not the request's: retry later",
                chain(e)
            ),
            fault_body(&e.reason(), &chain(e)),
        );
    }
    let detail = match e {
        IssuanceError::Denied {
            refusal,
            tool,
            resource,
        } => deny_body(
            &refusal.reason,
            &refusal.message,
            tool,
            resource,
            &refusal.failed_checks,
        ),
        other => json!({"decision": "deny", "reason": other.reason(), "message": chain(other)}),
    };
    error_result(chain(e), detail)
}

/// The end of a task, in-band: `ended` says whether this call ended it.
pub(crate) fn task_ended(task_id: &str, ended: bool) -> CallToolResult {
    let text = if ended {
        format!("Task {task_id} ended; its access is revoked.")
    } else {
        format!("Task {task_id} had already ended.")
    };
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({"task_id": task_id, "ended": true}));
    r
}

/// `task_end` naming a task this agent does not have.
pub(crate) fn no_such_task(task_id: &str) -> CallToolResult {
    error_result(
        format!("no task `{task_id}` belongs to this agent"),
        json!({"decision": "deny", "reason": "not_found", "message": format!("no task `{task_id}` belongs to this agent")}),
    )
}

/// An HTTP answer that is not a success.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    Unauthorized(TokenError),
    /// 403 before any processing (Host, Origin).
    Forbidden {
        /// Stable code.
        error: &'static str,
        /// Words.
        message: String,
    },
    /// 403: an approval that cannot be spent.
    ApprovalRefused {
        /// The header it came in.
        header: &'static str,
        /// Why.
        error: TokenError,
    },
    /// 400.
    BadRequest(String),
    /// 404.
    NotFound(String),
    /// 413.
    PayloadTooLarge(String),
    /// A task request refused (403, 400 or 401 by cause) or not served (503).
    Issuance(IssuanceError),
    /// 503: capgate's store (or audit log) is unavailable.
    Unavailable {
        /// Stable code.
        reason: &'static str,
        /// The fault, with its sources.
        message: String,
    },
    /// 500: capgate failed in a way it did not foresee.
    Internal(String),
    /// 401 for a workload JWT that is not acceptable (`Bearer error="invalid_token"`).
    Workload(String),
    /// 401 for DPoP: `invalid_dpop_proof` (the proof is missing or wrong) or `invalid_token`
    /// (a bound token presented without DPoP), with a `DPoP` challenge.
    Dpop {
        /// `invalid_dpop_proof` or `invalid_token`.
        error: &'static str,
        /// Words.
        message: String,
    },
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        match e {
            CredentialError::Token(t) => ApiError::Unauthorized(t),
            CredentialError::Unavailable(f) => ApiError::Unavailable {
                reason: "store_unavailable",
                message: chain(&f),
            },
        }
    }
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

/// 401 with a `WWW-Authenticate` challenge of `scheme` naming `error`.
fn challenge(scheme: &str, error: &str, message: &str) -> Response {
    let description = message.replace(['"', '\\'], "'");
    let mut resp = json_error(StatusCode::UNAUTHORIZED, error, message);
    let value = HeaderValue::from_str(&format!(
        "{scheme}, error=\"{error}\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| {
        HeaderValue::from_str(&format!("{scheme}, error=\"{error}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"capgate\""))
    });
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    resp
}

fn unauthorized(e: &TokenError) -> Response {
    let message = chain(e);
    let description = message.replace(['"', '\\'], "'");
    let challenge = format!(
        "Bearer realm=\"capgate\", error=\"invalid_token\", error_description=\"{description}\""
    );
    let mut resp = json_error(StatusCode::UNAUTHORIZED, "invalid_token", &message);
    let value = HeaderValue::from_str(&challenge).unwrap_or_else(|_| {
        HeaderValue::from_static("Bearer realm=\"capgate\", error=\"invalid_token\"")
    });
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized(e) => unauthorized(&e),
            ApiError::Forbidden { error, message } => {
                json_error(StatusCode::FORBIDDEN, error, &message)
            }
            ApiError::ApprovalRefused { header, error } => json_error(
                StatusCode::FORBIDDEN,
                "approval_refused",
                &format!("the {header} header is refused: {}", chain(&error)),
            ),
            ApiError::BadRequest(m) => json_error(StatusCode::BAD_REQUEST, "invalid_request", &m),
            ApiError::NotFound(m) => json_error(StatusCode::NOT_FOUND, "not_found", &m),
            ApiError::PayloadTooLarge(m) => {
                json_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &m)
            }
            ApiError::Unavailable { reason, message } => unavailable(reason, &message),
            ApiError::Internal(m) => {
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &m)
            }
            ApiError::Workload(m) => challenge("Bearer realm=\"capgate\"", "invalid_token", &m),
            ApiError::Dpop { error, message } => challenge(
                "DPoP realm=\"capgate\", algs=\"ES256 ES384 EdDSA RS256 PS256\"",
                error,
                &message,
            ),
            ApiError::Issuance(e) => match &e {
                IssuanceError::Token(t) => unauthorized(t),
                IssuanceError::Invalid(m) => {
                    json_error(StatusCode::BAD_REQUEST, "invalid_request", m)
                }
                IssuanceError::Denied {
                    tool,
                    resource,
                    refusal,
                } => {
                    let mut body = deny_body(
                        &refusal.reason,
                        &chain(&e),
                        tool,
                        resource,
                        &refusal.failed_checks,
                    );
                    body["error"] = json!("task_refused");
                    (StatusCode::FORBIDDEN, Json(body)).into_response()
                }
                IssuanceError::Unavailable(_) => unavailable("store_unavailable", &chain(&e)),
                IssuanceError::Unrecorded(_) => unavailable("audit_unavailable", &chain(&e)),
                // Building the token failed: a bug of capgate's, not a passing outage.
                _ => json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    &format!("{}; this is capgate's fault, not the request's", chain(&e)),
                ),
            },
        }
    }
}

/// 503, naming what is unavailable and that it is capgate's fault; clients may retry.
fn unavailable(reason: &str, message: &str) -> Response {
    let mut resp = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": reason,
            "fault": "server",
            "message": format!("{message}; this is capgate's fault, not the request's: retry later"),
        })),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}
