//! The door: the one way to run a hosted tool.
//!
//! A call passes four stages, each a type that only the stage before can build:
//!
//! 1. [`Prepared`]: the tool exists, the arguments passed its input schema, and its resource is
//!    derived ([`Door::prepare`]);
//! 2. [`Authorized`]: the door's guard allowed it ([`Door::authorize`]);
//! 3. [`Recorded`]: the door's audit stage wrote the decision down before anything runs
//!    ([`Door::record`]);
//! 4. dispatched: [`Door::dispatch`] takes nothing but a `Recorded` call and runs the tool.
//!
//! The guard and the audit stage are the door's [`Stages`], fixed when the door is built from a
//! [`Registry`]; every call through that door meets the same ones. capgate-server builds one
//! door, with capgate-authz's guard and its own audit log as the stages.
//!
//! Invariant: a hosted tool runs only from [`Door::dispatch`]. The registry is consumed by the
//! door, the [`Catalog`] it leaves behind describes tools but cannot run them, the stage types'
//! fields are private, and [`Tool::call`] needs a [`ToolInput`] that only this module builds.
//!
//! ```compile_fail,E0451
//! use capgate_core::door::{Authorized, Prepared, Stages};
//! // An allow cannot be made up: only the door's guard stage builds one.
//! fn forge<S: Stages>(call: Prepared, grant: S::Grant) -> Authorized<S> {
//!     Authorized { call, grant }
//! }
//! ```
//!
//! ```compile_fail,E0308
//! use capgate_core::door::{Door, Prepared, Stages};
//! use capgate_core::ToolContext;
//! // Skipping the audit stage does not compile: dispatch takes a Recorded call only.
//! fn skip_audit<S: Stages>(door: &Door<S>, caller: &S::Caller, call: Prepared) {
//!     if let Ok(allowed) = door.authorize(caller, call) {
//!         let _ = door.dispatch(allowed, ToolContext::detached("x"));
//!     }
//! }
//! ```
//!
//! The same code through every stage compiles:
//!
//! ```
//! use capgate_core::door::{Door, Prepared, Stages};
//! use capgate_core::ToolContext;
//! fn through_the_door<S: Stages>(door: &Door<S>, caller: &S::Caller, call: Prepared) {
//!     if let Ok(allowed) = door.authorize(caller, call) {
//!         if let Ok(recorded) = door.record(caller, allowed) {
//!             let _ = door.dispatch(recorded, ToolContext::detached("x"));
//!         }
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::content::{Changes, PromptSource, PromptsTool, ResourceSource, ResourcesTool};
use crate::context::ToolContext;
use crate::error::Error;
use crate::tool::{
    Arguments, Resource, Tool, ToolError, ToolFuture, ToolInput, ToolSpec, Withheld,
};

/// Names of capgate's own in-band control tools; hosted tools may not take them.
pub const RESERVED_NAMES: &[&str] = &["task_begin", "task_end"];

/// The guard and the audit stage a door puts every call through.
pub trait Stages: Send + Sync + 'static {
    /// What a call is judged by (a verified credential and where the call came from).
    type Caller: ?Sized + Sync;
    /// What an allow rests on (the task, the token).
    type Grant: Send + Sync;
    /// Why a call was refused.
    type Denial: Send;

    /// The guard: allows a prepared call, or says why not. Any doubt is a denial.
    fn authorize(
        &self,
        caller: &Self::Caller,
        call: &Prepared,
    ) -> Result<Self::Grant, Self::Denial>;

    /// The audit stage: records an allowed call before it runs. An `Err` means the decision
    /// could not be recorded and the call must not run.
    fn record(
        &self,
        caller: &Self::Caller,
        call: &Prepared,
        grant: &Self::Grant,
    ) -> Result<(), Self::Denial>;
}

/// A hosted tool with its compiled schema validator.
struct Entry {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
    kind: Kind,
}

/// What a registry entry hosts: a tool, or the pseudo-tool of a resource or prompt source.
enum Kind {
    Tool,
    Resources(Arc<dyn ResourceSource>),
    Prompts(Arc<PromptsTool>),
}

/// What a request asks the door for. Each entry answers one action only, so `tools/call`
/// cannot reach the pseudo-tool of a resource source (and read around `resources/read`'s
/// routing), and `resources/read` cannot run a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// `tools/call`, and a tool's nested call.
    #[default]
    Call,
    /// `resources/read`: a resource source's pseudo-tool.
    Read,
    /// `prompts/get`: a prompt source's pseudo-tool.
    Prompt,
}

impl Kind {
    fn action(&self) -> Action {
        match self {
            Kind::Tool => Action::Call,
            Kind::Resources(_) => Action::Read,
            Kind::Prompts(_) => Action::Prompt,
        }
    }
}

/// The tools to host, while they are being registered. [`Door::new`] consumes it: after that
/// no one holds a tool but the door.
#[derive(Default)]
pub struct Registry {
    catalog: Catalog,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool. Refuses a malformed or reserved name, a duplicate, or an input schema that
    /// is not a valid JSON schema for an object. The tool moves into the registry: no callable
    /// copy stays with the caller.
    pub fn register(&mut self, tool: impl Tool) -> Result<(), Error> {
        let spec = tool.spec();
        self.check_name(&spec.name)?;
        if spec.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(Error::SchemaNotObject {
                name: spec.name.clone(),
            });
        }
        self.insert(Arc::new(tool), Kind::Tool)
    }

    /// Hosts a source of resources as the pseudo-tool `name`: `resources` for a tool pack's
    /// own, `<upstream>__resources` for an upstream's. A read of one of its URIs is authorized
    /// as that tool, operation `read`, on the URI.
    pub fn register_resources(
        &mut self,
        name: &str,
        source: impl ResourceSource,
    ) -> Result<(), Error> {
        let source: Arc<dyn ResourceSource> = Arc::new(source);
        let tool = ResourcesTool::new(name, Arc::clone(&source));
        self.check_name(name)?;
        self.insert(Arc::new(tool), Kind::Resources(source))
    }

    /// Hosts a source of prompts as the pseudo-tool `name` (`prompts`, or
    /// `<upstream>__prompts`). Its prompts are hosted as `<prefix>__<prompt>` (as the source
    /// spells them without a prefix); a fetch is authorized as that tool, operation `read`, on
    /// `prompt:<prompt>`.
    pub fn register_prompts(
        &mut self,
        name: &str,
        prefix: Option<&str>,
        source: impl PromptSource,
    ) -> Result<(), Error> {
        let tool = Arc::new(PromptsTool::new(
            name,
            prefix.map(str::to_owned),
            Arc::new(source),
        ));
        self.check_name(name)?;
        self.insert(Arc::clone(&tool) as Arc<dyn Tool>, Kind::Prompts(tool))
    }

    fn check_name(&self, name: &str) -> Result<(), Error> {
        if !valid_tool_name(name) {
            return Err(Error::BadToolName {
                name: name.to_owned(),
            });
        }
        if RESERVED_NAMES.contains(&name) {
            return Err(Error::ReservedToolName {
                name: name.to_owned(),
            });
        }
        if self.catalog.tools.contains_key(name) {
            return Err(Error::DuplicateTool {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn insert(&mut self, tool: Arc<dyn Tool>, kind: Kind) -> Result<(), Error> {
        let name = tool.spec().name.clone();
        let schema = Value::Object(tool.spec().input_schema.clone());
        let validator = jsonschema::validator_for(&schema).map_err(|e| Error::InvalidSchema {
            name: name.clone(),
            source: Box::new(e),
        })?;
        self.catalog.tools.insert(
            name,
            Entry {
                tool,
                validator,
                kind,
            },
        );
        Ok(())
    }

    /// Where a provider whose lists change at run time (an upstream) says so; the host tells
    /// its clients.
    pub fn changes(&self) -> Changes {
        self.catalog.changes.clone()
    }

    /// What is registered so far, described.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

/// The hosted tools, as everyone but the door sees them: descriptions and the canonical form
/// of resource prefixes. Nothing here runs a tool.
#[derive(Default)]
pub struct Catalog {
    tools: BTreeMap<String, Entry>,
    changes: Changes,
}

impl Catalog {
    /// The descriptions of all hosted tools, by name, the pseudo-tools of resource and prompt
    /// sources included (they are granted, audited and counted like tools).
    pub fn specs(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.values().map(|e| e.tool.spec())
    }

    /// What requests reach the entry `name`: [`Action::Call`] for a tool, `Read` or `Prompt`
    /// for a pseudo-tool. `tools/list` shows only the first.
    pub fn action_of(&self, name: &str) -> Option<Action> {
        self.tools.get(name).map(|e| e.kind.action())
    }

    /// The changes providers ring (see [`Registry::changes`]).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Whether any entry answers `action` (a host without resource sources does not offer
    /// `resources`).
    pub fn offers(&self, action: Action) -> bool {
        self.tools.values().any(|e| e.kind.action() == action)
    }

    /// The resource sources, by pseudo-tool name: native `resources` first, then the others in
    /// name order. A URI two sources claim is read from the first.
    pub fn resource_sources(&self) -> impl Iterator<Item = (&str, &dyn ResourceSource)> {
        let native = self.tools.get_key_value(crate::content::NATIVE_RESOURCES);
        native
            .into_iter()
            .chain(
                self.tools
                    .iter()
                    .filter(|(n, _)| n.as_str() != crate::content::NATIVE_RESOURCES),
            )
            .filter_map(|(n, e)| match &e.kind {
                Kind::Resources(s) => Some((n.as_str(), s.as_ref())),
                _ => None,
            })
    }

    /// The pseudo-tool whose source serves `uri`, if exactly one does. A URI that two sources
    /// list, or (listed by none) that two sources' templates match, is nobody's: a source
    /// cannot capture another's reads by listing its URIs (it gets a refusal, not the read).
    pub fn resource_owner(&self, uri: &str) -> Option<&str> {
        let listing: Vec<&str> = self
            .resource_sources()
            .filter(|(_, s)| s.resources().iter().any(|r| r.uri == uri))
            .map(|(n, _)| n)
            .collect();
        let claims = if listing.is_empty() {
            self.resource_sources()
                .filter(|(_, s)| s.serves(uri))
                .map(|(n, _)| n)
                .collect()
        } else {
            listing
        };
        match claims.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The listed URIs more than one source claims (see [`Catalog::resource_owner`]): a list
    /// leaves them out.
    pub fn contested_uris(&self) -> std::collections::HashSet<String> {
        let mut seen = std::collections::HashMap::<String, usize>::new();
        for (_, s) in self.resource_sources() {
            let mut own: Vec<String> = s.resources().into_iter().map(|r| r.uri).collect();
            own.sort();
            own.dedup();
            for uri in own {
                *seen.entry(uri).or_default() += 1;
            }
        }
        seen.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(u, _)| u)
            .collect()
    }

    /// Every prompt hosted now: (pseudo-tool, hosted name, the prompt as its source spells it).
    pub fn prompts(&self) -> Vec<(&str, String, rmcp::model::Prompt)> {
        let mut out = Vec::new();
        for (n, e) in &self.tools {
            if let Kind::Prompts(p) = &e.kind {
                for prompt in p.source.prompts() {
                    if p.prefix.is_none() && prompt.name.contains("__") {
                        continue;
                    }
                    out.push((n.as_str(), p.hosted(&prompt.name), prompt));
                }
            }
        }
        out
    }

    /// The pseudo-tool hosting the prompt a client calls `hosted`, and the source's name for it.
    pub fn prompt_owner(&self, hosted: &str) -> Option<(&str, String)> {
        self.tools.iter().find_map(|(n, e)| match &e.kind {
            Kind::Prompts(p) => p.own(hosted).map(|name| (n.as_str(), name)),
            _ => None,
        })
    }

    /// Why a hosted tool is held back from callers now, if it is (see [`Tool::withheld`]).
    pub fn withheld(&self, name: &str) -> Option<Withheld> {
        self.tools.get(name).and_then(|e| e.tool.withheld())
    }

    /// A hosted tool's description.
    pub fn spec(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.get(name).map(|e| e.tool.spec())
    }

    /// The hosted tools' names, comma-separated, for messages.
    pub fn names(&self) -> String {
        self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Number of hosted tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// True when no tool is hosted.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Canonicalizes a resource prefix for a tool, the way that tool writes its resources.
    pub fn canonical_prefix(&self, tool: &str, prefix: &str) -> Result<String, Error> {
        let entry = self.tools.get(tool).ok_or_else(|| Error::UnknownTool {
            name: tool.to_owned(),
            hosted: self.names(),
        })?;
        entry
            .tool
            .canonical_prefix(prefix)
            .map_err(|source| Error::Prefix {
                tool: tool.to_owned(),
                prefix: prefix.to_owned(),
                source,
            })
    }

    /// `prefix` as `tool` spells its own resources, when the tool canonicalizes prefixes at all
    /// (see [`Tool::canonicalizes_prefixes`]) and accepts this one.
    pub fn spelled_prefix(&self, tool: &str, prefix: &str) -> Option<String> {
        let entry = self.tools.get(tool)?;
        if !entry.tool.canonicalizes_prefixes() {
            return None;
        }
        entry.tool.canonical_prefix(prefix).ok()
    }

    /// Resolves a call (tool, schema, resource) without authorizing it: a [`Prepared`] call can
    /// be put to a guard (or described), never run; only the door runs calls.
    pub fn prepare(&self, name: &str, args: Option<Arguments>) -> Result<Prepared, CallError> {
        self.prepare_as(Action::Call, name, args)
    }

    /// Like [`Catalog::prepare`], for the entry that answers `action`: an entry of another
    /// kind is unknown to this request.
    pub fn prepare_as(
        &self,
        action: Action,
        name: &str,
        args: Option<Arguments>,
    ) -> Result<Prepared, CallError> {
        let entry = self
            .tools
            .get(name)
            .filter(|e| e.kind.action() == action)
            .ok_or_else(|| CallError::UnknownTool {
                name: name.to_owned(),
            })?;
        let args = args.unwrap_or_default();
        let instance = Value::Object(args);
        if let Some(error) = entry.validator.iter_errors(&instance).next() {
            let (field, rule, message) = describe_schema_error(&error);
            return Err(CallError::InvalidArguments {
                tool: name.to_owned(),
                field,
                rule,
                message,
            });
        }
        let Value::Object(args) = instance else {
            unreachable!("built from an object above")
        };
        let resource = entry.tool.resource(&args).map_err(|e| match e {
            ToolError::InvalidArgument { field, message } => CallError::InvalidArguments {
                tool: name.to_owned(),
                message: format!("`{field}`: {message}"),
                field,
                rule: "tool".into(),
            },
            ToolError::Failed(message) => CallError::InvalidArguments {
                tool: name.to_owned(),
                field: String::new(),
                rule: "tool".into(),
                message,
            },
        })?;
        Ok(Prepared {
            tool: Arc::clone(&entry.tool),
            args,
            resource,
        })
    }
}

/// A call that named a hosted tool, whose arguments passed the tool's schema and whose resource
/// has been derived. It can be put to the guard, not run.
pub struct Prepared {
    // Private: the only code that reaches `tool` is `Door::dispatch`.
    tool: Arc<dyn Tool>,
    args: Arguments,
    resource: Resource,
}

impl Prepared {
    /// The tool's description.
    pub fn spec(&self) -> &ToolSpec {
        self.tool.spec()
    }

    /// The validated arguments.
    pub fn args(&self) -> &Arguments {
        &self.args
    }

    /// Why the tool is held back from callers now, if it is: the guard refuses such a call.
    pub fn withheld(&self) -> Option<Withheld> {
        self.tool.withheld()
    }

    /// The canonical resource the call touches.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// The same call on another resource, for asking the guard about a resource the tool
    /// would reach beyond its own (see [`ToolContext::permits`]). Like any prepared call it
    /// can only run through the door.
    pub fn with_resource(&self, resource: Resource) -> Prepared {
        Prepared {
            tool: Arc::clone(&self.tool),
            args: self.args.clone(),
            resource,
        }
    }
}

/// A call the door's guard allowed. Only [`Door::authorize`] builds one.
pub struct Authorized<S: Stages> {
    call: Prepared,
    grant: S::Grant,
}

impl<S: Stages> Authorized<S> {
    /// The call.
    pub fn call(&self) -> &Prepared {
        &self.call
    }

    /// What the allow rests on.
    pub fn grant(&self) -> &S::Grant {
        &self.grant
    }
}

/// An allowed call whose decision the audit stage has recorded. Only [`Door::record`] builds
/// one, and [`Door::dispatch`] takes nothing else.
pub struct Recorded<S: Stages> {
    call: Prepared,
    grant: S::Grant,
}

impl<S: Stages> Recorded<S> {
    /// The call.
    pub fn call(&self) -> &Prepared {
        &self.call
    }

    /// What the allow rests on.
    pub fn grant(&self) -> &S::Grant {
        &self.grant
    }
}

/// The hosted tools behind their guard and audit stage.
pub struct Door<S: Stages> {
    catalog: Arc<Catalog>,
    stages: S,
}

impl<S: Stages> Door<S> {
    /// Seals `registry` behind `stages`.
    pub fn new(registry: Registry, stages: S) -> Self {
        Door {
            catalog: Arc::new(registry.catalog),
            stages,
        }
    }

    /// What is hosted, for those who describe tools (tools/list, issuance) but never run them.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The guard and audit stage.
    pub fn stages(&self) -> &S {
        &self.stages
    }

    /// Stage 1: the tool must exist, the arguments must pass its schema, and its resource
    /// function must accept them. Nothing here performs the tool's effect.
    pub fn prepare(&self, name: &str, args: Option<Arguments>) -> Result<Prepared, CallError> {
        self.catalog.prepare(name, args)
    }

    /// Stage 1 for a resource read or a prompt fetch (see [`Catalog::prepare_as`]).
    pub fn prepare_as(
        &self,
        action: Action,
        name: &str,
        args: Option<Arguments>,
    ) -> Result<Prepared, CallError> {
        self.catalog.prepare_as(action, name, args)
    }

    /// Stage 2: the guard decides.
    pub fn authorize(
        &self,
        caller: &S::Caller,
        call: Prepared,
    ) -> Result<Authorized<S>, S::Denial> {
        let grant = self.stages.authorize(caller, &call)?;
        Ok(Authorized { call, grant })
    }

    /// Stage 3: the decision is recorded before the tool runs; a call that cannot be recorded
    /// does not run.
    pub fn record(
        &self,
        caller: &S::Caller,
        call: Authorized<S>,
    ) -> Result<Recorded<S>, S::Denial> {
        self.stages.record(caller, &call.call, &call.grant)?;
        Ok(Recorded {
            call: call.call,
            grant: call.grant,
        })
    }

    /// Stage 4: runs a call that was authorized and recorded.
    pub fn dispatch(&self, call: Recorded<S>, ctx: ToolContext) -> ToolFuture<'static> {
        let Prepared {
            tool,
            args,
            resource,
        } = call.call;
        Box::pin(async move { tool.call(ToolInput::new(args, resource, ctx)).await })
    }
}

/// Why a call could not even be put before the guard.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No tool by that name: a protocol error (the request names nothing that exists).
    #[error("unknown tool `{name}`; tools/list shows the tools this token can call")]
    UnknownTool {
        /// The name asked for.
        name: String,
    },
    /// The arguments do not match the tool's schema, or name something the tool refuses. A tool
    /// execution error (SEP-1303): the model reads which field and which rule.
    #[error("invalid arguments for tool `{tool}`: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// The first offending field, dotted (`a.b`), empty for the arguments as a whole.
        field: String,
        /// The rule it broke: a JSON-schema keyword (`required`, `type`, ...), or `tool` when
        /// the tool itself refused the value (a path outside its root, a bad pattern), with
        /// the tool's reason in `message`.
        rule: String,
        /// What is wrong.
        message: String,
    },
}

/// `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Names the offending field of a schema error and the keyword it broke, and says what is
/// wrong in words.
fn describe_schema_error(error: &jsonschema::ValidationError<'_>) -> (String, String, String) {
    let (field, message) = describe_field(error);
    let rule = error.kind().keyword().to_owned();
    (field, rule, message)
}

fn describe_field(error: &jsonschema::ValidationError<'_>) -> (String, String) {
    let pointer = error.instance_path().to_string();
    let mut field = pointer.trim_start_matches('/').replace('/', ".");
    // A missing required property is reported at its parent; name the property itself.
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
        let prop = property
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| property.to_string());
        field = if field.is_empty() {
            prop
        } else {
            format!("{field}.{prop}")
        };
        return (field.clone(), format!("missing required field `{field}`"));
    }
    if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
        error.kind()
    {
        let names = unexpected.join("`, `");
        let first = unexpected.first().cloned().unwrap_or_default();
        let field = if field.is_empty() {
            first
        } else {
            format!("{field}.{first}")
        };
        return (field, format!("unexpected field `{names}`"));
    }
    if field.is_empty() {
        return (field, format!("arguments: {error}"));
    }
    let message = format!("field `{field}`: {error}");
    (field, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::{DynamicTool, Operation, ToolOutput};
    use serde_json::json;

    fn echo() -> DynamicTool {
        let schema = json!({
            "type": "object",
            "properties": {"text": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["text"],
            "additionalProperties": false
        });
        let Value::Object(schema) = schema else {
            unreachable!()
        };
        DynamicTool::new(
            ToolSpec::new("echo", "echoes", Operation::Read, schema),
            |args, _r, _c| async move { Ok(ToolOutput::structured(Value::Object(args))) },
        )
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_tool_name("fs_read"));
        assert!(valid_tool_name("a-b_C9"));
        assert!(!valid_tool_name(""));
        assert!(!valid_tool_name("has space"));
        assert!(!valid_tool_name("dotted.name"));
        assert!(!valid_tool_name(&"x".repeat(65)));
    }

    #[test]
    fn schema_errors_name_the_field() {
        let mut reg = Registry::new();
        reg.register(echo()).unwrap();
        let reg = reg.catalog();
        let missing = reg.prepare("echo", None).err().unwrap();
        match missing {
            CallError::InvalidArguments {
                field,
                rule,
                message,
                ..
            } => {
                assert_eq!(field, "text");
                assert_eq!(rule, "required");
                assert!(
                    message.contains("missing required field `text`"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let Value::Object(wrong) = json!({"text": 5}) else {
            unreachable!()
        };
        match reg.prepare("echo", Some(wrong)).err().unwrap() {
            CallError::InvalidArguments { field, .. } => assert_eq!(field, "text"),
            other => panic!("{other:?}"),
        }
        let Value::Object(extra) = json!({"text": "a", "zzz": 1}) else {
            unreachable!()
        };
        match reg.prepare("echo", Some(extra)).err().unwrap() {
            CallError::InvalidArguments { field, message, .. } => {
                assert_eq!(field, "zzz");
                assert!(message.contains("unexpected field"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reg.prepare("nope", None),
            Err(CallError::UnknownTool { .. })
        ));
    }

    #[test]
    fn registration_refuses_bad_tools() {
        let mut reg = Registry::new();
        reg.register(echo()).unwrap();
        assert!(reg.register(echo()).is_err(), "duplicate");
        let Value::Object(schema) = json!({"type": "object"}) else {
            unreachable!()
        };
        let reserved = DynamicTool::new(
            ToolSpec::new("task_begin", "x", Operation::Read, schema.clone()),
            |_a, _r, _c| async move { Ok(ToolOutput::text("")) },
        );
        assert!(reg.register(reserved).is_err());
        let Value::Object(not_object) = json!({"type": "string"}) else {
            unreachable!()
        };
        let bad = DynamicTool::new(
            ToolSpec::new("bad", "x", Operation::Read, not_object),
            |_a, _r, _c| async move { Ok(ToolOutput::text("")) },
        );
        assert!(reg.register(bad).is_err());
    }

    #[test]
    fn pseudo_tools_answer_their_own_action_only() {
        use crate::content::{Prompts, Resources};
        use rmcp::model::{Prompt, ReadResourceResult, Resource as McpResource};
        let mut reg = Registry::new();
        reg.register(echo()).unwrap();
        reg.register_resources(
            "resources",
            Resources::new().resource(McpResource::new("t://a", "a"), |_, _| {
                Ok(ReadResourceResult::new(Vec::new()))
            }),
        )
        .unwrap();
        reg.register_prompts(
            "up__prompts",
            Some("up"),
            Prompts::new().prompt(Prompt::new("p", Some("d"), None), |_| {
                Err(ToolError::failed("unused"))
            }),
        )
        .unwrap();
        // A second source under a taken name is refused.
        assert!(
            reg.register_resources("resources", Resources::new())
                .is_err()
        );
        let c = reg.catalog();
        let uri = |u: &str| {
            let mut m = Arguments::new();
            m.insert("uri".into(), json!(u));
            Some(m)
        };
        // tools/call cannot reach a pseudo-tool, nor resources/read a tool.
        assert!(matches!(
            c.prepare("resources", uri("t://a")),
            Err(CallError::UnknownTool { .. })
        ));
        assert!(matches!(
            c.prepare_as(Action::Read, "echo", None),
            Err(CallError::UnknownTool { .. })
        ));
        let p = c
            .prepare_as(Action::Read, "resources", uri("t://a"))
            .unwrap();
        assert_eq!(p.resource().as_str(), "t://a");
        assert!(matches!(
            c.prepare_as(Action::Read, "resources", uri("t://a/../b")),
            Err(CallError::InvalidArguments { .. })
        ));
        assert_eq!(c.resource_owner("t://a"), Some("resources"));
        assert_eq!(c.resource_owner("t://b"), None);
        assert_eq!(
            c.prompt_owner("up__p"),
            Some(("up__prompts", "p".to_owned()))
        );
        assert_eq!(c.prompt_owner("p"), None);
        assert_eq!(c.prompt_owner("up__q"), None);
        assert!(c.offers(Action::Read) && c.offers(Action::Prompt));
        assert_eq!(c.action_of("echo"), Some(Action::Call));
    }

    #[test]
    fn a_uri_two_sources_claim_is_nobodys() {
        use crate::content::{Prompts, Resources};
        use rmcp::model::{Prompt, ReadResourceResult, Resource as McpResource, ResourceTemplate};
        let read = |_: &str, _: &[(String, String)]| Ok(ReadResourceResult::new(Vec::new()));
        let mut reg = Registry::new();
        reg.register_resources(
            "resources",
            Resources::new()
                .resource(McpResource::new("t://a", "a"), read)
                .template(ResourceTemplate::new("t://x/{id}", "x"), read),
        )
        .unwrap();
        // A second source listing the first's URI, and an instance of its template.
        reg.register_resources(
            "evil__resources",
            Resources::new()
                .resource(McpResource::new("t://a", "a"), read)
                .template(ResourceTemplate::new("t://x/{any}", "x"), read),
        )
        .unwrap();
        reg.register_prompts(
            "prompts",
            None,
            Prompts::new().prompt(Prompt::new("up__p", Some("d"), None), |_| {
                Err(ToolError::failed("unused"))
            }),
        )
        .unwrap();
        let c = reg.catalog();
        assert_eq!(c.resource_owner("t://a"), None);
        assert_eq!(c.resource_owner("t://x/1"), None);
        assert!(c.contested_uris().contains("t://a"));
        // A native prompt named like an upstream's is not hosted.
        assert_eq!(c.prompt_owner("up__p"), None);
        assert!(c.prompts().is_empty());
    }
}
