//! capgate-upstream: other MCP servers' tools, hosted behind the door.
//!
//! A [`Gateway`] holds one connection per `[[upstream]]` table ([`UpstreamConfig`]): a child
//! process over stdio, or a streamable-HTTP server. It registers each hosted tool as
//! `<upstream>__<tool>` in the [`Registry`], as an ordinary [`capgate_core::Tool`] whose
//! resource is derived from the call's arguments (`resource` module) before the guard runs.
//!
//! Invariant: this crate depends on capgate-core alone. An upstream tool cannot reach the
//! guard, the store or the audit log, and nothing is sent upstream but from [`Tool::call`],
//! which only the door reaches, for a call it authorized and recorded.
//!
//! [`Tool::call`]: capgate_core::Tool::call

mod config;
mod content;
mod error;
mod link;
mod pins;
mod resource;
mod tool;

use std::sync::Arc;

use capgate_core::canon::PathMode;
use capgate_core::{Operation, Registry, ToolSpec};

pub use config::{Expose, ResourceRule, SEPARATOR, ToolRule, UpstreamConfig};
pub use error::Error;
pub use link::LinkState;
pub use pins::{Definition, PinBook, PinError};

use config::{PROMPTS, RESOURCES};
use content::{UpstreamPrompts, UpstreamResources};
use link::Link;
use resource::Derive;
use tool::{UpstreamTool, permissive_schema, stricter};

/// The upstreams of one capgate.
#[derive(Default)]
pub struct Gateway {
    links: Vec<Arc<Link>>,
}

/// One upstream, as `capgate upstream list` and the start-up log describe it.
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// Where it is: the command line or the URL.
    pub target: String,
    /// Its connection.
    pub state: String,
    /// The names hosted from it.
    pub hosted: Vec<String>,
}

impl Gateway {
    /// The upstreams of a config, not started: enough to know the names they host.
    pub fn new(configs: Vec<UpstreamConfig>) -> Result<Self, Error> {
        let mut seen = std::collections::BTreeSet::new();
        for c in &configs {
            if !seen.insert(c.name.clone()) {
                return Err(Error::DuplicateName(c.name.clone()));
            }
        }
        Ok(Gateway {
            links: configs.into_iter().map(Link::new).collect(),
        })
    }

    /// The upstreams with `expose = "all"`, whose hosted names depend on what they list.
    pub fn exposing_all(&self) -> impl Iterator<Item = &str> {
        self.links
            .iter()
            .filter(|l| l.config.expose == Expose::All)
            .map(|l| l.name())
    }

    /// Takes `definitions` (pinned ones, as JSON) as what a not-started upstream lists, so the
    /// CLI knows the names an `expose = "all"` upstream hosts without starting it. A
    /// definition that does not parse is left out.
    pub fn assume_listed<'a>(&self, upstream: &str, definitions: impl Iterator<Item = &'a str>) {
        let Some(link) = self.links.iter().find(|l| l.name() == upstream) else {
            return;
        };
        if !matches!(link.state(), LinkState::Idle) {
            return;
        }
        let tools = definitions
            .filter_map(|d| serde_json::from_str::<rmcp::model::Tool>(d).ok())
            .collect();
        link.assume_listed(tools);
    }

    /// Whether no upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Starts every upstream and waits for each one's first connection (bounded), so that
    /// [`Gateway::register`] sees the tools they list. An upstream that does not connect is
    /// retried in the background; only a config it cannot start with (a `${VAR}` not set) is
    /// an error.
    ///
    /// Every hosted tool's definition is judged against `pins` at each listing: pinned at first
    /// sight, held back when it differs from its pin.
    pub async fn start(&self, pins: Arc<dyn PinBook>) -> Result<(), Error> {
        let mut starts = Vec::new();
        for link in &self.links {
            let link = Arc::clone(link);
            let pins = Arc::clone(&pins);
            starts.push(tokio::spawn(async move { link.start(pins).await }));
        }
        let mut first_error = None;
        for s in starts {
            match s.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        match first_error {
            Some(e) => {
                self.stop().await;
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Stops every upstream: a child gets its stdin closed, then SIGTERM, then SIGKILL.
    pub async fn stop(&self) {
        let stops: Vec<_> = self
            .links
            .iter()
            .map(|l| {
                let l = Arc::clone(l);
                tokio::spawn(async move { l.stop().await })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }

    /// Registers every hosted tool: the declared ones always (with the upstream's description
    /// and schema when it listed them, else any object), and with `expose = "all"` every other
    /// tool the upstream listed, as `execute` on `tool:<hosted name>`.
    pub fn register(&self, registry: &mut Registry) -> Result<Vec<String>, Error> {
        let mut notes = Vec::new();
        for link in &self.links {
            let config = &link.config;
            // The pseudo-tools first: a tool the upstream happens to call `resources` cannot
            // take the name its resources are granted by.
            let wrap = |source| Error::Register {
                upstream: config.name.clone(),
                source,
            };
            let _ = link.changes.set(registry.changes());
            registry
                .register_resources(
                    &config.pseudo(RESOURCES),
                    UpstreamResources(Arc::clone(link)),
                )
                .map_err(wrap)?;
            registry
                .register_prompts(
                    &config.pseudo(PROMPTS),
                    Some(&config.name),
                    UpstreamPrompts(Arc::clone(link)),
                )
                .map_err(wrap)?;
            let listed = link.listed();
            let (base, mode) = if config.is_stdio() {
                (config.base().to_path_buf(), PathMode::Host)
            } else {
                (std::path::PathBuf::from("/"), PathMode::Lexical)
            };
            let find = |name: &str| {
                listed
                    .as_ref()
                    .and_then(|l| l.iter().find(|t| t.name == name))
            };
            let mut hosted: Vec<(String, Option<&rmcp::model::Tool>, Operation, Derive)> =
                Vec::new();
            for (remote, rule) in &config.tools {
                let name = config.hosted_name(remote);
                let def = find(remote);
                if listed.is_some() && def.is_none() {
                    notes.push(format!(
                        "upstream `{}` does not list its declared tool `{remote}`; `{name}` answers with the upstream's error",
                        config.name
                    ));
                }
                let derive = Derive::new(rule.resource.as_ref(), &name, base.clone(), mode);
                hosted.push((remote.clone(), def, stricter(rule.operation, def), derive));
            }
            if config.expose == Expose::All {
                for def in listed.iter().flatten() {
                    if config.tools.contains_key(def.name.as_ref()) {
                        continue;
                    }
                    let name = config.hosted_name(&def.name);
                    if [RESOURCES, PROMPTS].contains(&def.name.as_ref()) {
                        notes.push(format!(
                            "upstream `{}`: tool `{}` skipped: `{name}` is the name its {} are granted by",
                            config.name, def.name, def.name
                        ));
                        continue;
                    }
                    if !capgate_core::door::valid_tool_name(&name) {
                        notes.push(format!(
                            "upstream `{}`: tool `{}` skipped: `{name}` is not a valid tool name",
                            config.name, def.name
                        ));
                        continue;
                    }
                    let derive = Derive::new(None, &name, base.clone(), mode);
                    hosted.push((def.name.to_string(), Some(def), Operation::Execute, derive));
                }
            }
            for (remote, def, operation, derive) in hosted {
                let name = config.hosted_name(&remote);
                let build = |schema| UpstreamTool {
                    spec: spec_of(&name, &config.name, def, operation, schema),
                    remote: remote.clone(),
                    derive: derive.clone(),
                    link: Arc::clone(link),
                    registered: def.map(|d| pins::Definition::of(d).digest),
                };
                let wrap = |source| Error::Register {
                    upstream: config.name.clone(),
                    source,
                };
                let Some(def) = def else {
                    registry
                        .register(build(permissive_schema()))
                        .map_err(wrap)?;
                    continue;
                };
                match registry.register(build((*def.input_schema).clone())) {
                    Ok(()) => {}
                    // The upstream's own schema is unusable: a declared tool is still hosted
                    // (the upstream checks its arguments), an undeclared one is not.
                    Err(
                        e @ (capgate_core::Error::InvalidSchema { .. }
                        | capgate_core::Error::SchemaNotObject { .. }),
                    ) => {
                        let declared = config.tools.contains_key(&remote);
                        notes.push(format!(
                            "upstream `{}`: {}; {}",
                            config.name,
                            capgate_core::error::chain(&e),
                            if declared {
                                "hosted with a schema that accepts any object"
                            } else {
                                "not hosted"
                            }
                        ));
                        if declared {
                            registry
                                .register(build(permissive_schema()))
                                .map_err(wrap)?;
                        }
                    }
                    Err(source) => return Err(wrap(source)),
                }
            }
        }
        Ok(notes)
    }

    /// Each upstream's state and hosted names.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.links
            .iter()
            .map(|l| {
                let c = &l.config;
                let target = match (&c.command, &c.url) {
                    (Some(cmd), _) => std::iter::once(cmd.as_str())
                        .chain(c.args.iter().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join(" "),
                    (None, Some(url)) => url.clone(),
                    (None, None) => String::new(),
                };
                let state = match l.state() {
                    LinkState::Idle => "not started".to_owned(),
                    LinkState::Down(why) => format!("down: {why}"),
                    LinkState::Up(_) => "up".to_owned(),
                    LinkState::Stopped => "stopped".to_owned(),
                };
                let mut hosted: Vec<String> = c.tools.keys().map(|t| c.hosted_name(t)).collect();
                if c.expose == Expose::All {
                    for t in l.listed().into_iter().flatten() {
                        if !c.tools.contains_key(t.name.as_ref()) {
                            hosted.push(c.hosted_name(&t.name));
                        }
                    }
                }
                UpstreamStatus {
                    name: c.name.clone(),
                    target,
                    state,
                    hosted,
                }
            })
            .collect()
    }
}

fn spec_of(
    name: &str,
    upstream: &str,
    def: Option<&rmcp::model::Tool>,
    operation: Operation,
    schema: serde_json::Map<String, serde_json::Value>,
) -> ToolSpec {
    let description = match def.and_then(|d| d.description.as_deref()) {
        Some(d) => d.to_owned(),
        None => format!("A tool of the upstream MCP server `{upstream}`."),
    };
    let mut spec = ToolSpec::new(name, description, operation, schema);
    if let Some(title) = def.and_then(|d| d.title.clone()) {
        spec = spec.with_title(title);
    }
    if let Some(out) = def.and_then(|d| d.output_schema.as_ref()) {
        spec = spec.with_output_schema((**out).clone());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upstream(toml_text: &str) -> UpstreamConfig {
        use capgate_core::Section as _;
        let mut c: UpstreamConfig = toml::from_str(toml_text).unwrap();
        assert!(c.finish(std::path::Path::new("/srv")).is_empty());
        c
    }

    fn listed(name: &str, schema: serde_json::Value, read_only: Option<bool>) -> rmcp::model::Tool {
        let mut t: rmcp::model::Tool = serde_json::from_value(json!({
            "name": name,
            "description": format!("upstream's {name}"),
            "inputSchema": schema,
        }))
        .unwrap();
        if let Some(ro) = read_only {
            let mut a = rmcp::model::ToolAnnotations::default();
            a.read_only_hint = Some(ro);
            t.annotations = Some(a);
        }
        t
    }

    /// What `register` hosts from what the upstream listed: declared tools with the upstream's
    /// description, `read` tightened to `write` by `readOnlyHint: false`, a broken schema
    /// replaced (declared) or the tool left out (undeclared), and with `expose = "all"` the
    /// other tools as `execute` on `tool:<name>`.
    #[test]
    fn registration_follows_config_then_listing() {
        let obj = json!({"type": "object", "properties": {"path": {"type": "string"}}});
        let broken = json!({"type": "object", "properties": {"x": {"type": 12}}});
        let config = |expose: &str| {
            upstream(&format!(
                r#"
                name = "n"
                command = "x"
                expose = "{expose}"
                [tools.read]
                operation = "read"
                resource = {{ path = "path" }}
                [tools.writes]
                operation = "read"
                [tools.odd]
                operation = "read"
                [tools.missing]
                operation = "read"
                "#
            ))
        };
        let tools = vec![
            listed("read", obj.clone(), Some(true)),
            listed("writes", obj.clone(), Some(false)),
            listed("odd", broken.clone(), None),
            listed("extra", obj.clone(), None),
            listed("extra_broken", broken.clone(), None),
        ];
        for expose in ["declared", "all"] {
            let gateway = Gateway::new(vec![config(expose)]).unwrap();
            *link::lock(gateway.links[0].listed_slot()) = Some(tools.clone());
            let mut registry = Registry::new();
            let notes = gateway.register(&mut registry).unwrap();
            let cat = registry.catalog();
            let op = |n: &str| cat.spec(n).map(|s| s.operation);
            assert_eq!(op("n__read"), Some(Operation::Read));
            assert_eq!(cat.spec("n__read").unwrap().description, "upstream's read");
            assert_eq!(
                op("n__writes"),
                Some(Operation::Write),
                "annotations tighten"
            );
            assert_eq!(
                op("n__odd"),
                Some(Operation::Read),
                "declared: hosted anyway"
            );
            assert_eq!(
                cat.spec("n__odd").unwrap().input_schema.get("properties"),
                None,
                "with the permissive schema"
            );
            assert_eq!(op("n__missing"), Some(Operation::Read));
            assert!(notes.iter().any(|n| n.contains("missing")), "{notes:?}");
            assert_eq!(op("n__extra_broken"), None);
            if expose == "all" {
                assert_eq!(op("n__extra"), Some(Operation::Execute));
            } else {
                assert_eq!(op("n__extra"), None, "least privilege by default");
            }
        }
    }

    #[test]
    fn annotations_never_loosen() {
        let t = listed("t", json!({"type": "object"}), Some(true));
        assert_eq!(stricter(Operation::Write, Some(&t)), Operation::Write);
        assert_eq!(stricter(Operation::Execute, Some(&t)), Operation::Execute);
        let w = listed("t", json!({"type": "object"}), Some(false));
        assert_eq!(stricter(Operation::Read, Some(&w)), Operation::Write);
        assert_eq!(stricter(Operation::Read, None), Operation::Read);
    }

    #[test]
    fn two_upstreams_cannot_share_a_name() {
        let a = upstream("name = \"n\"\ncommand = \"x\"");
        assert!(matches!(
            Gateway::new(vec![a.clone(), a]),
            Err(Error::DuplicateName(_))
        ));
    }
}
