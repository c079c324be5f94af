//! Resources and prompts: what a provider registers beside its tools.
//!
//! A [`ResourceSource`] or a [`PromptSource`] is hosted as one *pseudo-tool* of the registry
//! (`resources` and `prompts` for native ones, `<upstream>__resources` and `<upstream>__prompts`
//! for an upstream's), so `resources/read` and `prompts/get` pass the same door as a tool call:
//! schema, guard, audit line, dispatch. The guard sees operation `read` and, as the resource,
//! the URI itself (resources) or `prompt:<name as the source spells it>` (prompts).
//!
//! Invariants:
//! * a URI reaches the guard only in normal form: a dot segment, an encoded dot or slash, a
//!   backslash or a control character is refused before the guard, so a granted prefix
//!   (`file:///docs/`) cannot be walked out of (`file:///docs/../etc/passwd`);
//! * `tools/call` never reaches a pseudo-tool and `tools/list` never shows one (see
//!   [`crate::door::Action`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::model::{
    GetPromptResult, Prompt, ReadResourceResult, Resource as McpResource, ResourceTemplate,
};
use serde_json::{Map, Value, json};

use crate::context::ToolContext;
use crate::tool::{
    Arguments, Operation, Resource, Tool, ToolError, ToolFuture, ToolInput, ToolOutput, ToolSpec,
};

/// What a read or a prompt fetch returns, boxed like a tool's future.
pub type ContentFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ToolError>> + Send + 'a>>;

/// The resource prefix of prompts: a prompt `summary` is the resource `prompt:summary`.
pub const PROMPT_PREFIX: &str = "prompt:";

/// The pseudo-tool of natively registered resources.
pub const NATIVE_RESOURCES: &str = "resources";
/// The pseudo-tool of natively registered prompts.
pub const NATIVE_PROMPTS: &str = "prompts";

/// Longest URI capgate puts before the guard.
pub const MAX_URI_LEN: usize = 4096;

/// Resources a provider serves: listed ones and templates, read on demand.
pub trait ResourceSource: Send + Sync + 'static {
    /// The resources to list now. Called for every `resources/list`; keep it cheap.
    fn resources(&self) -> Vec<McpResource>;

    /// The URI templates to list now.
    fn templates(&self) -> Vec<ResourceTemplate> {
        Vec::new()
    }

    /// Whether `uri` is one of this source's: listed, or an instance of one of its templates.
    fn serves(&self, uri: &str) -> bool {
        self.resources().iter().any(|r| r.uri == uri)
            || self
                .templates()
                .iter()
                .any(|t| template_match(&t.uri_template, uri).is_some())
    }

    /// Reads `uri`, which the guard allowed and the audit log recorded.
    fn read<'a>(&'a self, uri: &'a str, ctx: ToolContext) -> ContentFuture<'a, ReadResourceResult>;
}

/// Prompts a provider serves.
pub trait PromptSource: Send + Sync + 'static {
    /// The prompts to list now, named as the source spells them.
    fn prompts(&self) -> Vec<Prompt>;

    /// Fetches prompt `name` with `arguments`, which the guard allowed and the audit log
    /// recorded.
    fn get<'a>(
        &'a self,
        name: &'a str,
        arguments: Map<String, Value>,
        ctx: ToolContext,
    ) -> ContentFuture<'a, GetPromptResult>;
}

/// Which list a provider changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// What `tools/list` would show (an upstream tool held back or released).
    Tools,
    /// What `resources/list` or `resources/templates/list` would show.
    Resources,
    /// What `prompts/list` would show.
    Prompts,
}

/// Rung by a provider when one of its lists changed, followed by the host, which tells its
/// clients (`notifications/*/list_changed`). One per registry: [`crate::Registry::changes`].
#[derive(Clone)]
pub struct Changes(Arc<tokio::sync::watch::Sender<[u64; 3]>>);

impl Default for Changes {
    fn default() -> Self {
        Changes(Arc::new(tokio::sync::watch::channel([0; 3]).0))
    }
}

impl Changes {
    /// Says that `list` changed.
    pub fn ring(&self, list: List) {
        self.0.send_modify(|c| c[list as usize] += 1);
    }

    /// A receiver of the change counters (tools, resources, prompts), each bumped per change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<[u64; 3]> {
        self.0.subscribe()
    }
}

/// Checks that `uri` is in the normal form the guard compares prefixes against.
pub fn check_uri(uri: &str) -> Result<(), ToolError> {
    let refuse = |why: &str| Err(ToolError::invalid("uri", format!("`{uri}`: {why}")));
    if uri.is_empty() {
        return refuse("a resource URI cannot be empty");
    }
    if uri.len() > MAX_URI_LEN {
        return refuse("longer than 4096 bytes");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return refuse("a resource URI needs a scheme (`file:`, `https:`, ...)");
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return refuse("the scheme is not a URI scheme");
    }
    if uri.chars().any(|c| c.is_control() || c == '\\') {
        return refuse("control characters and backslashes are refused");
    }
    if scheme.chars().any(|c| c.is_ascii_uppercase()) {
        return refuse("the scheme must be lower case");
    }
    if let Some(after) = rest.strip_prefix("//") {
        let authority = after.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.chars().any(|c| c.is_ascii_uppercase()) {
            return refuse("the host must be lower case");
        }
    }
    // A percent-encoded unreserved character, `/`, `\`, `%` or NUL has one spelling without
    // the escape (or none at all): encoding it only ever serves to slip past a prefix.
    let bytes = rest.as_bytes();
    for (i, _) in rest.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return refuse("a `%` must start a two-digit hex escape");
        };
        if byte.is_ascii_alphanumeric() || b"-._~/\\%".contains(&byte) || byte == 0 {
            return refuse(
                "escapes of letters, digits, `-._~`, `/`, `\\`, `%` and NUL are refused; write the character itself",
            );
        }
    }
    // Dot segments anywhere (path, query, fragment, `..;` parameters).
    if rest
        .split(['/', '?', '#', '&', '='])
        .any(|seg| matches!(seg.split(';').next(), Some(".") | Some("..")))
    {
        return refuse("dot segments (`.`, `..`) are refused; ask for the URI in normal form");
    }
    Ok(())
}

/// Matches `uri` against a level-1 URI template (`test://template/{id}/data`): each `{var}`
/// stands for a non-empty run without `/`, `?` or `#`. Returns the variables, or `None`.
pub fn template_match(template: &str, uri: &str) -> Option<Vec<(String, String)>> {
    let mut vars = Vec::new();
    let mut rest_t = template;
    let mut rest_u = uri;
    loop {
        match rest_t.find('{') {
            None => return (rest_t == rest_u).then_some(vars),
            Some(open) => {
                let literal = &rest_t[..open];
                rest_u = rest_u.strip_prefix(literal)?;
                let close = rest_t[open..].find('}')? + open;
                let name = &rest_t[open + 1..close];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return None;
                }
                rest_t = &rest_t[close + 1..];
                let end = rest_u.find(['/', '?', '#']).unwrap_or(rest_u.len());
                // The value ends where the template's next literal begins (or at a separator).
                let next_lit = rest_t.split('{').next().unwrap_or_default();
                let value_end = if next_lit.is_empty() {
                    end
                } else {
                    rest_u[..end]
                        .find(next_lit)
                        .or_else(|| next_lit.starts_with(['/', '?', '#']).then_some(end))?
                };
                if value_end == 0 {
                    return None;
                }
                vars.push((name.to_owned(), rest_u[..value_end].to_owned()));
                rest_u = &rest_u[value_end..];
            }
        }
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The pseudo-tool hosting a [`ResourceSource`]: arguments `{uri}`, resource = the URI.
pub(crate) struct ResourcesTool {
    spec: ToolSpec,
    pub(crate) source: Arc<dyn ResourceSource>,
}

impl ResourcesTool {
    pub(crate) fn new(name: &str, source: Arc<dyn ResourceSource>) -> Self {
        let schema = object(json!({
            "type": "object",
            "properties": {"uri": {"type": "string", "minLength": 1, "maxLength": MAX_URI_LEN}},
            "required": ["uri"],
            "additionalProperties": false
        }));
        ResourcesTool {
            spec: ToolSpec::new(
                name,
                "resources/read of this provider's resources",
                Operation::Read,
                schema,
            ),
            source,
        }
    }
}

impl Tool for ResourcesTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        let uri = crate::tool::str_arg(args, "uri")?;
        check_uri(uri)?;
        Ok(Resource::new(uri))
    }

    /// A granted prefix must be in the normal form URIs are compared in: a task asking for
    /// `notes://%61cme/` (or `NOTES://acme/`) would slip past a tenant's `notes://acme/`.
    fn canonical_prefix(&self, prefix: &str) -> Result<String, ToolError> {
        if !prefix.is_empty() {
            check_uri(prefix)?;
        }
        Ok(prefix.to_owned())
    }

    fn call(&self, input: ToolInput) -> ToolFuture<'_> {
        Box::pin(async move {
            let (_, resource, ctx) = input.into_parts();
            let read = self.source.read(resource.as_str(), ctx).await?;
            let value = serde_json::to_value(read)
                .map_err(|e| ToolError::failed(format!("the read result does not encode: {e}")))?;
            Ok(ToolOutput {
                content: Vec::new(),
                structured: Some(value),
            })
        })
    }
}

/// The pseudo-tool hosting a [`PromptSource`]: arguments `{name, arguments}`, resource =
/// `prompt:<name>`. Its prompts are hosted as `<prefix>__<name>`, or as `<name>` without a
/// prefix.
pub(crate) struct PromptsTool {
    spec: ToolSpec,
    pub(crate) prefix: Option<String>,
    pub(crate) source: Arc<dyn PromptSource>,
}

impl PromptsTool {
    pub(crate) fn new(name: &str, prefix: Option<String>, source: Arc<dyn PromptSource>) -> Self {
        let schema = object(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256},
                "arguments": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "required": ["name"],
            "additionalProperties": false
        }));
        PromptsTool {
            spec: ToolSpec::new(
                name,
                "prompts/get of this provider's prompts",
                Operation::Read,
                schema,
            ),
            prefix,
            source,
        }
    }

    /// The name a client asks for, for a prompt the source calls `name`.
    pub(crate) fn hosted(&self, name: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}__{name}"),
            None => name.to_owned(),
        }
    }

    /// The source's name for a hosted prompt name, when it is one of this source's.
    pub(crate) fn own(&self, hosted: &str) -> Option<String> {
        let name = match &self.prefix {
            Some(p) => hosted.strip_prefix(p.as_str())?.strip_prefix("__")?,
            // `__` is where upstream prompts are hosted (`<upstream>__<prompt>`): a native
            // prompt so named could be confused with one, so it is not hosted.
            None if hosted.contains("__") => return None,
            None => hosted,
        };
        self.source
            .prompts()
            .iter()
            .any(|p| p.name == name)
            .then(|| name.to_owned())
    }
}

impl Tool for PromptsTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        let name = crate::tool::str_arg(args, "name")?;
        if name.chars().any(char::is_control) {
            return Err(ToolError::invalid("name", "control characters are refused"));
        }
        Ok(Resource::new(format!("{PROMPT_PREFIX}{name}")))
    }

    fn call(&self, input: ToolInput) -> ToolFuture<'_> {
        Box::pin(async move {
            let (mut args, _, ctx) = input.into_parts();
            let Some(Value::String(name)) = args.remove("name") else {
                return Err(ToolError::invalid("name", "missing"));
            };
            let arguments = match args.remove("arguments") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let got = self.source.get(&name, arguments, ctx).await?;
            let value = serde_json::to_value(got)
                .map_err(|e| ToolError::failed(format!("the prompt does not encode: {e}")))?;
            Ok(ToolOutput {
                content: Vec::new(),
                structured: Some(value),
            })
        })
    }
}

type Reader =
    Arc<dyn Fn(&str, &[(String, String)]) -> Result<ReadResourceResult, ToolError> + Send + Sync>;
type Getter = Arc<dyn Fn(&Map<String, Value>) -> Result<GetPromptResult, ToolError> + Send + Sync>;

/// Fixed resources and templates answered by functions: the simplest [`ResourceSource`].
///
/// ```
/// use capgate_core::content::Resources;
/// use capgate_core::rmcp::model::{ReadResourceResult, Resource, ResourceContents};
/// let docs = Resources::new().resource(
///     Resource::new("docs://readme", "readme").with_mime_type("text/plain"),
///     |uri, _| Ok(ReadResourceResult::new(vec![ResourceContents::text("hello", uri)])),
/// );
/// # let _ = docs;
/// ```
#[derive(Default, Clone)]
pub struct Resources {
    listed: Vec<(McpResource, Reader)>,
    templates: Vec<(ResourceTemplate, Reader)>,
}

impl Resources {
    /// No resources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A listed resource, read by `read(uri, [])`.
    pub fn resource(
        mut self,
        resource: McpResource,
        read: impl Fn(&str, &[(String, String)]) -> Result<ReadResourceResult, ToolError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.listed.push((resource, Arc::new(read)));
        self
    }

    /// A template; a URI it matches is read by `read(uri, variables)`.
    pub fn template(
        mut self,
        template: ResourceTemplate,
        read: impl Fn(&str, &[(String, String)]) -> Result<ReadResourceResult, ToolError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.templates.push((template, Arc::new(read)));
        self
    }
}

impl ResourceSource for Resources {
    fn resources(&self) -> Vec<McpResource> {
        self.listed.iter().map(|(r, _)| r.clone()).collect()
    }

    fn templates(&self) -> Vec<ResourceTemplate> {
        self.templates.iter().map(|(t, _)| t.clone()).collect()
    }

    fn read<'a>(
        &'a self,
        uri: &'a str,
        _ctx: ToolContext,
    ) -> ContentFuture<'a, ReadResourceResult> {
        let result = if let Some((_, read)) = self.listed.iter().find(|(r, _)| r.uri == uri) {
            read(uri, &[])
        } else if let Some((vars, read)) = self
            .templates
            .iter()
            .find_map(|(t, read)| template_match(&t.uri_template, uri).map(|v| (v, read)))
        {
            read(uri, &vars)
        } else {
            Err(ToolError::failed(format!("no resource `{uri}`")))
        };
        Box::pin(std::future::ready(result))
    }
}

/// Fixed prompts answered by functions: the simplest [`PromptSource`].
#[derive(Default, Clone)]
pub struct Prompts {
    prompts: Vec<(Prompt, Getter)>,
}

impl Prompts {
    /// No prompts yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A prompt, fetched by `get(arguments)`. Arguments the prompt marks `required` are
    /// checked before `get` runs.
    pub fn prompt(
        mut self,
        prompt: Prompt,
        get: impl Fn(&Map<String, Value>) -> Result<GetPromptResult, ToolError> + Send + Sync + 'static,
    ) -> Self {
        self.prompts.push((prompt, Arc::new(get)));
        self
    }
}

impl PromptSource for Prompts {
    fn prompts(&self) -> Vec<Prompt> {
        self.prompts.iter().map(|(p, _)| p.clone()).collect()
    }

    fn get<'a>(
        &'a self,
        name: &'a str,
        arguments: Map<String, Value>,
        _ctx: ToolContext,
    ) -> ContentFuture<'a, GetPromptResult> {
        let result = match self.prompts.iter().find(|(p, _)| p.name == name) {
            None => Err(ToolError::failed(format!("no prompt `{name}`"))),
            Some((prompt, get)) => {
                let missing = prompt
                    .arguments
                    .iter()
                    .flatten()
                    .find(|a| a.required == Some(true) && !arguments.contains_key(&a.name));
                match missing {
                    Some(a) => Err(ToolError::invalid(
                        format!("arguments.{}", a.name),
                        "required by the prompt",
                    )),
                    None => get(&arguments),
                }
            }
        };
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_in_normal_form_pass() {
        for ok in [
            "test://static-text",
            "file:///docs/a.md",
            "https://example.com/a?b=c#d",
            "notes://ticket/ab-1",
            "demo://resource/static/document/a%20b.md",
            "https://example.com/a?b=%C3%A9",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn uris_that_could_walk_out_of_a_prefix_are_refused() {
        for bad in [
            "",
            "no-scheme",
            "1x://a",
            "file:///docs/../etc/passwd",
            "file:///docs/./a",
            "file:///docs/..",
            "file:///docs/%2e%2e/etc",
            "file:///docs%2F..%2Fetc",
            "file:///docs\\..\\etc",
            "file:///docs/\n",
            "file:///a%00b",
            "notes://%61cme/secret",
            "NOTES://acme/x",
            "notes://ACME/x",
            "file:///docs/x?/../../etc/passwd",
            "file:///docs/..;/etc",
            "file:///docs/%252e%252e/etc",
            "file:///docs/%zz",
            "file:///docs/%2",
        ] {
            assert!(check_uri(bad).is_err(), "{bad:?}");
        }
        assert!(check_uri(&format!("x://{}", "a".repeat(MAX_URI_LEN))).is_err());
    }

    #[test]
    fn templates_match_level_one_variables() {
        let v = template_match("test://template/{id}/data", "test://template/123/data").unwrap();
        assert_eq!(v, vec![("id".to_owned(), "123".to_owned())]);
        assert!(template_match("test://template/{id}/data", "test://template//data").is_none());
        assert!(template_match("test://template/{id}/data", "test://template/1/2/data").is_none());
        assert!(template_match("test://template/{id}/data", "test://template/1/datax").is_none());
        let v = template_match("t://{a}-{b}", "t://x-y").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].1, "y");
        assert!(template_match("t://{a}", "t://").is_none());
        assert!(template_match("t://{}", "t://x").is_none());
    }

    #[test]
    fn required_prompt_arguments_are_checked() {
        use rmcp::model::{PromptArgument, PromptMessage, Role};
        let mut arg = PromptArgument::new("a");
        arg.required = Some(true);
        let p = Prompts::new().prompt(Prompt::new("p", Some("d"), Some(vec![arg])), |args| {
            Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                Role::User,
                format!("{:?}", args.get("a")),
            )]))
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(p.get("p", Map::new(), ToolContext::detached("prompts")));
        assert!(matches!(got, Err(ToolError::InvalidArgument { .. })));
        let mut m = Map::new();
        m.insert("a".into(), json!("x"));
        assert!(
            rt.block_on(p.get("p", m, ToolContext::detached("prompts")))
                .is_ok()
        );
        assert!(
            rt.block_on(p.get("q", Map::new(), ToolContext::detached("prompts")))
                .is_err()
        );
    }
}
