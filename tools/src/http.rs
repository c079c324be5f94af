//! `http_fetch`: one bounded HTTP GET.
//!
//! Invariant: the resource is the URL in one canonical spelling (scheme and host lowercased,
//! default port dropped, dot segments resolved, unreserved characters decoded, fragment
//! dropped), and any URL whose path could mean something else to the server than it means to a
//! prefix check (an encoded `/`, `\` or dot segment) is refused. Redirects are not followed:
//! the authorized URL is the only URL fetched; a redirect is returned for the agent to request,
//! and be authorized, on its own.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use capgate_core::rmcp::model::{ContentBlock, ResourceContents};
use capgate_core::{Operation, Resource, ToolError, ToolOutput, TypedTool};

use crate::config::HttpFetchConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

pub use capgate_core::canon::{canonical_url, canonical_url_prefix};

/// Arguments of `http_fetch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchArgs {
    /// The http or https URL to GET.
    pub url: String,
    /// Most body bytes to return (default and cap: the configured limit).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Time limit in milliseconds (default and cap: the configured limit).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

struct Fetcher {
    client: reqwest::Client,
    limits: HttpFetchConfig,
}

/// `http_fetch`.
pub(crate) fn http_fetch(
    limits: &HttpFetchConfig,
) -> Result<impl capgate_core::Tool, reqwest::Error> {
    // reqwest is built without a bundled TLS provider; ring is the one capgate ships. Installing
    // it is idempotent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("capgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(limits.timeout)
        .build()?;
    let fetcher = Arc::new(Fetcher {
        client,
        limits: limits.clone(),
    });
    Ok(TypedTool::new(
        "http_fetch",
        "GET an http(s) URL with size and time limits. Redirects are returned, not followed.",
        Operation::Network,
        move |args: FetchArgs, resource, ctx| {
            let f = Arc::clone(&fetcher);
            async move {
                tokio::select! {
                    r = f.fetch(&resource, &args) => r,
                    _ = ctx.cancelled().cancelled() => Err(ToolError::failed("request cancelled")),
                }
            }
        },
    )
    .title("Fetch URL")
    .resource(|a: &FetchArgs| {
        canonical_url(&a.url)
            .map(Resource::new)
            .map_err(|m| ToolError::invalid("url", m))
    })
    .canonical_prefix(canonical_url_prefix))
}

impl Fetcher {
    async fn fetch(&self, resource: &Resource, args: &FetchArgs) -> Result<ToolOutput, ToolError> {
        let max = args
            .max_bytes
            .unwrap_or(self.limits.max_bytes)
            .min(self.limits.max_bytes);
        let timeout = args
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.limits.timeout)
            .min(self.limits.timeout);
        let url = resource.as_str();
        let work = async {
            let mut resp = self
                .client
                .get(url)
                .send()
                .await
                .map_err(|e| ToolError::failed(format!("GET {url} failed: {e}")))?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| ToolError::failed(format!("reading {url} failed: {e}")))?
            {
                let room = (max as usize).saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, ToolError>((status, content_type, location, body, truncated))
        };
        let (status, content_type, location, body, truncated) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ToolError::failed(format!("GET {url} took longer than {timeout:?}")))??;
        let info = json!({
            "url": url,
            "status": status.as_u16(),
            "content_type": content_type,
            "bytes": body.len(),
            "truncated": truncated,
            "location": location,
        });
        if status.is_redirection() {
            let to = location.unwrap_or_default();
            return Ok(ToolOutput::text(format!(
                "HTTP {status}: redirected to {to} (not followed; fetch it explicitly if it is within the task)"
            ))
            .with_structured(info));
        }
        let textual = content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("xml")
            || content_type.is_empty();
        let block = match (textual, String::from_utf8(body)) {
            (true, Ok(text)) => ContentBlock::text(text),
            (_, Ok(text)) if content_type.contains("charset") => ContentBlock::text(text),
            (_, Ok(text)) => blob(url, &content_type, text.into_bytes()),
            (_, Err(e)) => blob(url, &content_type, e.into_bytes()),
        };
        let out = ToolOutput::content(vec![block]).with_structured(info);
        if status.is_client_error() || status.is_server_error() {
            return Err(ToolError::failed(format!("GET {url}: HTTP {status}")));
        }
        Ok(out)
    }
}

fn blob(url: &str, content_type: &str, bytes: Vec<u8>) -> ContentBlock {
    ContentBlock::resource(ResourceContents::BlobResourceContents {
        uri: url.to_owned(),
        mime_type: Some(if content_type.is_empty() {
            "application/octet-stream".into()
        } else {
            content_type.to_owned()
        }),
        blob: base64::engine::general_purpose::STANDARD.encode(bytes),
        meta: None,
    })
}
