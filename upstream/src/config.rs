//! `[[upstream]]`: one table per MCP server capgate fronts, as `../shared/DESIGN.md` spells it.
//!
//! Invariant: everything that can be checked without starting the upstream is checked here, at
//! load time, and each problem names its key: the name's alphabet, exactly one of `command` and
//! `url`, hosted names that are valid tool names, resource rules whose arguments and templates
//! can be filled. `${VAR}` references are only *resolved* when `serve` starts the upstream
//! ([`UpstreamConfig::resolved_env`], [`UpstreamConfig::resolved_headers`]), so the CLI, which
//! never talks to an upstream, needs none of its secrets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use capgate_core::{Operation, Section};
use serde::Deserialize;

use crate::error::Error;

/// The separator between an upstream's name and its tool's: `notes__read_note`.
pub const SEPARATOR: &str = "__";
/// The suffix of an upstream's resources pseudo-tool (`<upstream>__resources`).
pub(crate) const RESOURCES: &str = "resources";
/// The suffix of an upstream's prompts pseudo-tool (`<upstream>__prompts`).
pub(crate) const PROMPTS: &str = "prompts";

/// One upstream MCP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `[a-z0-9-]{1,32}`: the prefix of every name hosted from this upstream.
    pub name: String,
    /// A stdio upstream: the program capgate starts as its child.
    pub command: Option<String>,
    /// The child's arguments.
    pub args: Vec<String>,
    /// The child's whole environment, besides PATH and HOME. Values may use `${VAR}`.
    pub env: BTreeMap<String, String>,
    /// The child's working directory, and the base of relative `path` arguments. Default: the
    /// config file's directory.
    pub cwd: Option<PathBuf>,
    /// A streamable-HTTP upstream.
    pub url: Option<String>,
    /// Headers capgate sends to an HTTP upstream (its own credential). Values may use `${VAR}`.
    pub headers: BTreeMap<String, String>,
    /// Which of the upstream's tools are hosted.
    pub expose: Expose,
    /// How long one call may take before the caller gets an `isError` result (and the upstream
    /// a cancellation).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The hosted tools, by the upstream's name for them.
    pub tools: BTreeMap<String, ToolRule>,
    /// What the upstream may ask of the client whose call it is serving (passed on to that
    /// client, never answered by capgate). Default: nothing; every such request is refused.
    pub allow: BTreeSet<Ask>,
}

/// A request an upstream may send back to the client (`allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ask {
    /// `sampling/createMessage`: the client's model answers the upstream.
    Sampling,
    /// `elicitation/create`: the client's user answers the upstream.
    Elicitation,
    /// `roots/list`: the client's roots, as it reports them.
    Roots,
}

impl Ask {
    /// Its name in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Ask::Sampling => "sampling",
            Ask::Elicitation => "elicitation",
            Ask::Roots => "roots",
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            url: None,
            headers: BTreeMap::new(),
            expose: Expose::Declared,
            timeout: Duration::from_secs(60),
            tools: BTreeMap::new(),
            allow: BTreeSet::new(),
        }
    }
}

/// `expose`: least privilege by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expose {
    /// Only the tools declared in `[upstream.tools.*]`.
    #[default]
    Declared,
    /// The others too, as `execute` on `tool:<hosted name>`.
    All,
}

/// `[upstream.tools.NAME]`: what one hosted tool does, and what it touches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    /// The operation the guard authorizes.
    pub operation: Operation,
    /// How the resource is derived from the arguments. None: `tool:<hosted name>`.
    #[serde(default)]
    pub resource: Option<ResourceRule>,
}

/// How a call's resource is derived from its arguments, before the guard runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ResourceRule {
    /// The named argument is a path, made absolute and canonical.
    Path(String),
    /// The named argument is a URL, normalized as `http_fetch` does.
    Url(String),
    /// `{arg}` placeholders filled from arguments; a value that could smuggle a separator is
    /// refused.
    Template(String),
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Text kept as written.
    Text(String),
    /// The value of this argument.
    Arg(String),
}

/// Splits `ticket:{project}/{id}` into text and placeholders.
pub(crate) fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("`{{` without `}}` in `{template}`"))?;
        let name = &after[..close];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "placeholder `{{{name}}}` in `{template}` must name an argument ([A-Za-z0-9_-]+)"
            ));
        }
        pieces.push(Piece::Arg(name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    if pieces
        .iter()
        .any(|p| matches!(p, Piece::Text(t) if t.contains('}')))
    {
        return Err(format!("`}}` without `{{` in `{template}`"));
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Arg(_))) {
        return Err(format!(
            "`{template}` has no `{{argument}}`: every call would touch the same resource; leave `resource` out for that"
        ));
    }
    Ok(pieces)
}

fn valid_upstream_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl UpstreamConfig {
    /// The name hosted for the upstream's tool `tool`.
    pub fn hosted_name(&self, tool: &str) -> String {
        format!("{}{SEPARATOR}{tool}", self.name)
    }

    /// The pseudo-tool its resources (`RESOURCES`) or prompts (`PROMPTS`) are granted by.
    pub fn pseudo(&self, what: &str) -> String {
        self.hosted_name(what)
    }

    /// Whether this is a child process (else an HTTP upstream).
    pub fn is_stdio(&self) -> bool {
        self.command.is_some()
    }

    /// Where the child runs and relative paths are resolved.
    pub fn base(&self) -> &Path {
        self.cwd.as_deref().unwrap_or(Path::new("/"))
    }

    /// `env` with `${VAR}` read from capgate's environment.
    pub fn resolved_env(&self) -> Result<BTreeMap<String, String>, Error> {
        self.env
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.expand(&format!("env.{k}"), v)?)))
            .collect()
    }

    /// `headers` with `${VAR}` read from capgate's environment.
    pub fn resolved_headers(&self) -> Result<BTreeMap<String, String>, Error> {
        self.headers
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.expand(&format!("headers.{k}"), v)?)))
            .collect()
    }

    fn expand(&self, key: &str, value: &str) -> Result<String, Error> {
        expand_vars(value, |var| std::env::var(var).ok()).map_err(|message| Error::Config {
            upstream: self.name.clone(),
            key: key.to_owned(),
            message,
        })
    }
}

/// Replaces each `${VAR}` with `lookup(VAR)`; `$$` is a literal `$`. A variable that is unset is
/// an error (a credential silently sent as an empty string would be worse than not starting).
pub(crate) fn expand_vars(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("`${{` without `}}` in `{value}`"))?;
            let var = &body[..end];
            if var.is_empty() {
                return Err("`${}` names no variable".into());
            }
            let got = lookup(var).ok_or_else(|| {
                format!("environment variable `{var}` is not set (capgate reads it when it starts the upstream)")
            })?;
            out.push_str(&got);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Section for UpstreamConfig {
    fn finish(&mut self, base: &Path) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !valid_upstream_name(&self.name) {
            problems.push((
                "name".to_owned(),
                format!(
                    "`{}`: an upstream name is 1 to 32 of [a-z0-9-] (its tools are hosted as `<name>__<tool>`)",
                    self.name
                ),
            ));
        }
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => problems.push((
                "url".to_owned(),
                "give `command` (a stdio upstream) or `url` (a streamable-HTTP upstream), not both"
                    .to_owned(),
            )),
            (None, None) => problems.push((
                "command".to_owned(),
                "give `command` (a stdio upstream) or `url` (a streamable-HTTP upstream)"
                    .to_owned(),
            )),
            (Some(c), None) if c.trim().is_empty() => {
                problems.push(("command".to_owned(), "is empty".to_owned()))
            }
            (None, Some(u)) => match reqwest::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => problems.push((
                    "url".to_owned(),
                    format!("`{u}`: scheme `{}` is not http or https", url.scheme()),
                )),
                Err(e) => problems.push(("url".to_owned(), format!("`{u}`: {e}"))),
            },
            _ => {}
        }
        for pseudo in [RESOURCES, PROMPTS] {
            if self.tools.contains_key(pseudo) {
                problems.push((
                    format!("tools.{pseudo}"),
                    format!(
                        "`{}` is the pseudo-tool the upstream's {pseudo} are granted by; it cannot host a tool",
                        self.pseudo(pseudo)
                    ),
                ));
            }
        }
        if self.url.is_some() {
            if !self.env.is_empty() || !self.args.is_empty() || self.cwd.is_some() {
                problems.push((
                    "env".to_owned(),
                    "`env`, `args` and `cwd` are for a stdio upstream (`command`)".to_owned(),
                ));
            }
        } else if !self.headers.is_empty() {
            problems.push((
                "headers".to_owned(),
                "`headers` are for an HTTP upstream (`url`)".to_owned(),
            ));
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                problems.push((format!("headers.{k}"), "is not a valid header name".into()));
            }
            let lower = k.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "accept" | "mcp-session-id" | "mcp-protocol-version" | "last-event-id" | "host"
            ) {
                problems.push((
                    format!("headers.{k}"),
                    "is set by the MCP transport itself".into(),
                ));
            }
            if let Err(m) = expand_vars(v, |_| Some(String::new())) {
                problems.push((format!("headers.{k}"), m));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                problems.push((format!("env.{k}"), "is not a valid variable name".into()));
            }
            if let Err(m) = expand_vars(v, |_| Some(String::new())) {
                problems.push((format!("env.{k}"), m));
            }
        }
        if self.timeout.is_zero() {
            problems.push(("timeout".to_owned(), "must be more than 0s".to_owned()));
        }
        if self.command.is_some() {
            self.cwd = Some(match self.cwd.take() {
                Some(dir) if dir.is_absolute() => dir,
                Some(dir) => base.join(dir),
                None => base.to_path_buf(),
            });
        }
        for (tool, rule) in &self.tools {
            let hosted = self.hosted_name(tool);
            if !capgate_core::door::valid_tool_name(&hosted) {
                problems.push((
                    format!("tools.{tool}"),
                    format!(
                        "hosted as `{hosted}`, which is not a tool name (^[a-zA-Z0-9_-]{{1,64}}$)"
                    ),
                ));
            }
            match &rule.resource {
                Some(ResourceRule::Path(arg) | ResourceRule::Url(arg)) if arg.is_empty() => {
                    problems.push((
                        format!("tools.{tool}.resource"),
                        "names no argument".to_owned(),
                    ))
                }
                Some(ResourceRule::Template(t)) => {
                    if let Err(m) = parse_template(t) {
                        problems.push((format!("tools.{tool}.resource.template"), m));
                    }
                }
                _ => {}
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<UpstreamConfig, Vec<(String, String)>> {
        let mut c: UpstreamConfig =
            toml::from_str(toml_text).map_err(|e| vec![(String::new(), e.to_string())])?;
        let problems = c.finish(Path::new("/etc/capgate"));
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(
            r#"
            name = "notes"
            command = "python3"
            args = ["notes_server.py"]
            env = { NOTES_DIR = "/srv/notes" }
            [tools.read_note]
            operation = "read"
            resource = { path = "path" }
            [tools.ticket]
            operation = "write"
            resource = { template = "ticket:{project}/{id}" }
            "#,
        )
        .unwrap();
        assert_eq!(c.hosted_name("read_note"), "notes__read_note");
        assert_eq!(c.cwd.as_deref(), Some(Path::new("/etc/capgate")));
        assert_eq!(
            c.tools["read_note"].resource,
            Some(ResourceRule::Path("path".into()))
        );
        assert_eq!(c.expose, Expose::Declared);
    }

    #[test]
    fn mistakes_name_their_key() {
        let keys = |t: &str| -> Vec<String> {
            parse(t).unwrap_err().into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            keys(
                r#"name = "Notes"
command = "x""#
            ),
            ["name"]
        );
        assert_eq!(keys(r#"name = "n""#), ["command"]);
        assert_eq!(
            keys(
                r#"name = "n"
command = "x"
[tools.resources]
operation = "read""#
            ),
            ["tools.resources"]
        );
        assert_eq!(
            keys(
                r#"name = "n"
command = "x"
url = "http://h/mcp""#
            ),
            ["url"]
        );
        assert_eq!(
            keys(
                r#"name = "n"
url = "file:///x""#
            ),
            ["url"]
        );
        assert_eq!(
            keys(
                r#"name = "n"
command = "x"
[tools.t]
operation = "read"
resource = { template = "ticket:{}" }"#
            ),
            ["tools.t.resource.template"]
        );
        assert_eq!(
            keys(
                r#"name = "n"
url = "http://h/mcp"
headers = { Accept = "x" }"#
            ),
            ["headers.Accept"]
        );
        // A typo is refused by serde, not ignored.
        assert!(
            parse(
                r#"name = "n"
comand = "x""#
            )
            .is_err()
        );
        assert!(
            parse(
                r#"name = "n"
command = "x"
[tools.t]
operation = "delete""#
            )
            .is_err()
        );
    }

    #[test]
    fn allow_names_only_known_requests() {
        let c =
            parse("name = \"n\"\ncommand = \"x\"\nallow = [\"elicitation\", \"roots\"]").unwrap();
        assert_eq!(
            c.allow.into_iter().collect::<Vec<_>>(),
            [Ask::Elicitation, Ask::Roots]
        );
        assert!(
            parse("name = \"n\"\ncommand = \"x\"")
                .unwrap()
                .allow
                .is_empty()
        );
        let e = parse("name = \"n\"\ncommand = \"x\"\nallow = [\"everything\"]").unwrap_err();
        assert!(e[0].1.contains("everything"), "{e:?}");
    }

    #[test]
    fn variables_expand_or_refuse() {
        let env = |v: &str| (v == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(
            expand_vars("Bearer ${TOKEN}", env).unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(expand_vars("a$$b $x", env).unwrap(), "a$b $x");
        assert!(
            expand_vars("${MISSING}", env)
                .unwrap_err()
                .contains("MISSING")
        );
        assert!(expand_vars("${TOKEN", env).is_err());
    }

    #[test]
    fn templates_split_into_pieces() {
        assert_eq!(
            parse_template("ticket:{project}/{id}").unwrap(),
            vec![
                Piece::Text("ticket:".into()),
                Piece::Arg("project".into()),
                Piece::Text("/".into()),
                Piece::Arg("id".into()),
            ]
        );
        assert!(parse_template("fixed").is_err());
        assert!(parse_template("a{b").is_err());
        assert!(parse_template("a}b{c}").is_err());
    }
}
