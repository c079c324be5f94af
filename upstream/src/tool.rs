//! One upstream tool as a registry entry: a [`Tool`] the door runs like any other.
//!
//! Invariant: [`Tool::call`] is the only code that sends a `tools/call` upstream, and the door
//! reaches it only for a call the guard allowed and the audit stage recorded. What is sent is
//! the upstream's own tool name with the arguments the schema checked, the authorized canonical
//! resource written back in; what comes back is the upstream's result, or an `isError` result
//! naming the upstream (down, timed out, cancelled, or an answer that is not a tool result).

use std::borrow::Cow;
use std::sync::Arc;

use capgate_core::rmcp::model::{CallToolRequest, CallToolRequestParams, ClientRequest};
use capgate_core::{
    Arguments, Operation, Resource, Tool, ToolError, ToolFuture, ToolInput, ToolOutput, ToolSpec,
    Withheld,
};
use rmcp::model::{
    CallToolResult, CancelledNotification, CancelledNotificationParam, ContentBlock, ServerResult,
};
use rmcp::service::{PeerRequestOptions, ServiceError};
use serde_json::{Map, Value};

use crate::link::Link;
use crate::resource::Derive;

/// A hosted tool of an upstream.
pub(crate) struct UpstreamTool {
    pub(crate) spec: ToolSpec,
    /// The upstream's name for it.
    pub(crate) remote: String,
    pub(crate) derive: Derive,
    pub(crate) link: Arc<Link>,
    /// Digest of the listed definition this entry was registered from (`None`: registered
    /// before the upstream listed it, with the config's operation and any-object schema).
    pub(crate) registered: Option<String>,
}

/// The schema of a tool the upstream has not described (yet): any object; the upstream checks
/// its own arguments.
pub(crate) fn permissive_schema() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), Value::String("object".into()));
    m
}

/// The stricter of what the config says and what the upstream's annotations say: an
/// annotation may tighten `read` into `write`, never loosen anything.
pub(crate) fn stricter(declared: Operation, listed: Option<&rmcp::model::Tool>) -> Operation {
    let Some(ann) = listed.and_then(|t| t.annotations.as_ref()) else {
        return declared;
    };
    let writes = ann.read_only_hint == Some(false) || ann.destructive_hint == Some(true);
    if declared == Operation::Read && writes {
        Operation::Write
    } else {
        declared
    }
}

impl Tool for UpstreamTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        self.derive.resource(args)
    }

    fn canonical_prefix(&self, prefix: &str) -> Result<String, ToolError> {
        self.derive.prefix(prefix)
    }

    fn canonicalizes_prefixes(&self) -> bool {
        self.derive.canonicalizes()
    }

    fn withheld(&self) -> Option<Withheld> {
        self.link.verdict(&self.remote)?.withheld(
            self.link.name(),
            &self.spec.name,
            self.registered.as_deref(),
        )
    }

    fn call(&self, input: ToolInput) -> ToolFuture<'_> {
        let (mut args, resource, ctx) = input.into_parts();
        self.derive.rewrite(&mut args, &resource);
        Box::pin(async move {
            let name = self.link.name().to_owned();
            let timeout = self.link.config.timeout;
            let fail = |what: String| ToolError::failed(format!("upstream `{name}`: {what}"));
            let peer = self.link.peer(timeout).await.map_err(&fail)?;
            // The guard judged the listing of its moment; a reconnect while this call waited
            // may have brought a changed definition, judged before the link came up again.
            if let Some(w) = self.withheld() {
                return Err(fail(format!("{}: {}", w.reason, w.message)));
            }
            let params =
                CallToolRequestParams::new(Cow::Owned(self.remote.clone())).with_arguments(args);
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
            // Counted before it is sent: the upstream may ask the client side for something
            // before this call is tracked, and must then find more than one request out.
            let _outstanding = self.link.outstanding();
            let handle = peer
                .send_request_with_option(request, PeerRequestOptions::with_timeout(timeout))
                .await
                .map_err(|e| fail(format!("the request could not be sent: {e}")))?;
            let id = handle.id.clone();
            let token = handle.progress_token.clone();
            self.link.track(token.clone(), ctx.clone());
            let answer = tokio::select! {
                answer = handle.await_response() => Some(answer),
                _ = ctx.cancelled().cancelled() => None,
            };
            self.link.untrack(&token);
            let answer = match answer {
                Some(answer) => answer,
                None => {
                    let note = CancelledNotification::new(CancelledNotificationParam::new(
                        Some(id),
                        Some("the caller cancelled".into()),
                    ));
                    let _ = peer.send_notification(note.into()).await;
                    return Err(fail("cancelled by the caller".into()));
                }
            };
            match answer {
                Ok(ServerResult::CallToolResult(result)) => output(result, &fail),
                Ok(_) => Err(fail("answered something other than a tool result".into())),
                Err(ServiceError::Timeout { timeout }) => {
                    Err(fail(format!("no answer within {timeout:?}")))
                }
                Err(ServiceError::McpError(e)) => {
                    Err(fail(format!("refused the call: {}", e.message)))
                }
                Err(e) => Err(fail(format!("{e}"))),
            }
        })
    }
}

fn output(
    result: CallToolResult,
    fail: &dyn Fn(String) -> ToolError,
) -> Result<ToolOutput, ToolError> {
    if result.is_error == Some(true) {
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|c| match c {
                ContentBlock::Text(t) => Some(t.text.clone()),
                _ => None,
            })
            .collect();
        return Err(fail(format!("the tool failed: {}", text.join("\n"))));
    }
    Ok(ToolOutput {
        content: result.content,
        structured: result.structured_content,
    })
}
