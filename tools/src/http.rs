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
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use url::Url;

/// Characters re-encoded in a path segment: everything but RFC 3986 unreserved characters,
/// sub-delimiters, `:` and `@`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// The canonical form of an `http(s)` URL, or why it is refused.
pub fn canonical_url(raw: &str) -> Result<String, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}`: only http and https URLs can be fetched"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{raw}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("`{raw}`: credentials in URLs are not accepted"));
    }
    url.set_fragment(None);
    // `example.com.` and `example.com` are one host to DNS; only one may reach a prefix check.
    if let Some(host) = url
        .host_str()
        .filter(|h| h.ends_with('.'))
        .map(str::to_owned)
    {
        // One trailing dot is the DNS root; an empty label (`a..`) is no host name at all.
        let bare = &host[..host.len() - 1];
        if bare.is_empty() || bare.ends_with('.') {
            return Err(format!("`{raw}` has no valid host"));
        }
        let was_domain = matches!(url.host(), Some(url::Host::Domain(_)));
        url.set_host(Some(bare))
            .map_err(|e| format!("`{raw}`: bad host: {e}"))?;
        // Without its dot a name can read as an address (`21.` → 0.0.0.21): that is another
        // host, so refuse rather than pick one.
        if was_domain != matches!(url.host(), Some(url::Host::Domain(_))) {
            return Err(format!(
                "`{raw}`: the host is ambiguous (a name or an address)"
            ));
        }
    }
    let mut path = String::new();
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default();
    for seg in &segments {
        let decoded: Vec<u8> = percent_decode_str(seg).collect();
        if decoded.contains(&b'/') || decoded.contains(&b'\\') {
            return Err(format!("`{raw}`: encoded path separators are not accepted"));
        }
        if decoded == b"." || decoded == b".." {
            return Err(format!("`{raw}`: encoded dot segments are not accepted"));
        }
        // Some servers read `..;x` as `..` with a path parameter, and climb.
        if decoded.starts_with(b".;") || decoded.starts_with(b"..;") {
            return Err(format!(
                "`{raw}`: dot segments with path parameters are not accepted"
            ));
        }
        path.push('/');
        match std::str::from_utf8(&decoded) {
            Ok(text) => path.extend(utf8_percent_encode(text, SEGMENT)),
            Err(_) => path.push_str(seg),
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    url.set_path(&path);
    Ok(url.to_string())
}

/// A granted URL prefix in canonical form (`""` stays the universal prefix).
pub fn canonical_url_prefix(raw: &str) -> Result<String, ToolError> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    canonical_url(raw).map_err(|m| ToolError::invalid("prefix", m))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_have_one_spelling() {
        let c = |s: &str| canonical_url(s).unwrap();
        assert_eq!(c("HTTP://Example.COM:80/a/b"), "http://example.com/a/b");
        assert_eq!(c("https://example.com"), "https://example.com/");
        assert_eq!(c("https://example.com:443/x#frag"), "https://example.com/x");
        assert_eq!(
            c("https://example.com/docs/../admin"),
            "https://example.com/admin"
        );
        assert_eq!(
            c("https://example.com/docs/%2e%2e/admin"),
            "https://example.com/admin"
        );
        assert_eq!(
            c("https://example.com/%64ocs/x"),
            "https://example.com/docs/x"
        );
        assert_eq!(
            c("https://example.com/a%20b?q=1"),
            "https://example.com/a%20b?q=1"
        );
        assert_eq!(c("https://api.example.com./x"), "https://api.example.com/x");
    }

    /// Found by the `url` fuzz target: dropping the dots of `21..` turned a name into the
    /// address 0.0.0.21. A host is never changed into another kind of host.
    #[test]
    fn trailing_dots_never_change_the_host() {
        for raw in [
            "HTTP:21%2e./y",
            "https://21../",
            "https://example.com../",
            "https://../",
        ] {
            assert!(canonical_url(raw).is_err(), "{raw}");
        }
        assert_eq!(
            canonical_url("https://21./").as_deref(),
            Ok("https://0.0.0.21/")
        );
    }

    #[test]
    fn ambiguous_urls_are_refused() {
        for bad in [
            "https://example.com/docs/..%2fadmin",
            "https://example.com/docs%2F..%2Fadmin",
            "https://example.com/docs%5c..%5cadmin",
            "file:///etc/passwd",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/docs/..;/admin",
            "https://example.com/docs/.;x/admin",
            "https://./x",
            "not a url",
            "",
        ] {
            assert!(canonical_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_cannot_be_extended_by_host_suffix() {
        let p = canonical_url_prefix("https://api.example.com").unwrap();
        assert_eq!(p, "https://api.example.com/");
        assert!(
            !canonical_url("https://api.example.com.evil.com/")
                .unwrap()
                .starts_with(&p)
        );
    }
}
