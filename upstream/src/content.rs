//! An upstream's resources and prompts, as the sources behind its pseudo-tools
//! `<upstream>__resources` and `<upstream>__prompts`.
//!
//! Invariant: like [`crate::tool::UpstreamTool::call`], `read` and `get` are the only code that
//! sends `resources/read` and `prompts/get` upstream, and the door reaches them only for a read
//! or a fetch the guard allowed and the audit stage recorded. What they list is what the
//! upstream listed at its latest connection (or `list_changed`), bounded in count.

use std::sync::Arc;

use capgate_core::content::{ContentFuture, PromptSource, ResourceSource};
use capgate_core::{ToolContext, ToolError};
use rmcp::model::{
    GetPromptRequestParams, GetPromptResult, Prompt, ReadResourceRequestParams, ReadResourceResult,
    Resource, ResourceTemplate,
};
use serde_json::{Map, Value};

use crate::link::{Link, lock};

/// The resource source of one upstream.
pub(crate) struct UpstreamResources(pub(crate) Arc<Link>);

/// The prompt source of one upstream.
pub(crate) struct UpstreamPrompts(pub(crate) Arc<Link>);

fn failed(link: &Link, what: impl std::fmt::Display) -> ToolError {
    ToolError::failed(format!("upstream `{}`: {what}", link.name()))
}

impl ResourceSource for UpstreamResources {
    fn resources(&self) -> Vec<Resource> {
        lock(&self.0.contents).resources.clone()
    }

    fn templates(&self) -> Vec<ResourceTemplate> {
        lock(&self.0.contents).templates.clone()
    }

    fn serves(&self, uri: &str) -> bool {
        let c = lock(&self.0.contents);
        c.resources.iter().any(|r| r.uri == uri)
            || c.templates
                .iter()
                .any(|t| capgate_core::content::template_match(&t.uri_template, uri).is_some())
    }

    fn read<'a>(&'a self, uri: &'a str, ctx: ToolContext) -> ContentFuture<'a, ReadResourceResult> {
        Box::pin(async move {
            let link = &self.0;
            let timeout = link.config.timeout;
            let peer = link.peer(timeout).await.map_err(|e| failed(link, e))?;
            // Outstanding like a call: an upstream's request during a read is nobody's to answer.
            let _outstanding = link.outstanding();
            let read = peer.read_resource(ReadResourceRequestParams::new(uri));
            tokio::select! {
                got = tokio::time::timeout(timeout, read) => match got {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(e)) => Err(failed(link, format!("refused the read: {e}"))),
                    Err(_) => Err(failed(link, format!("no answer within {timeout:?}"))),
                },
                _ = ctx.cancelled().cancelled() => Err(failed(link, "cancelled by the caller")),
            }
        })
    }
}

impl PromptSource for UpstreamPrompts {
    fn prompts(&self) -> Vec<Prompt> {
        lock(&self.0.contents).prompts.clone()
    }

    fn get<'a>(
        &'a self,
        name: &'a str,
        arguments: Map<String, Value>,
        ctx: ToolContext,
    ) -> ContentFuture<'a, GetPromptResult> {
        Box::pin(async move {
            let link = &self.0;
            let timeout = link.config.timeout;
            let peer = link.peer(timeout).await.map_err(|e| failed(link, e))?;
            let mut params = GetPromptRequestParams::new(name);
            params.arguments = Some(arguments);
            let _outstanding = link.outstanding();
            let get = peer.get_prompt(params);
            tokio::select! {
                got = tokio::time::timeout(timeout, get) => match got {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(e)) => Err(failed(link, format!("refused the prompt: {e}"))),
                    Err(_) => Err(failed(link, format!("no answer within {timeout:?}"))),
                },
                _ = ctx.cancelled().cancelled() => Err(failed(link, "cancelled by the caller")),
            }
        })
    }
}
