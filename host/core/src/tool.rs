//! The Tool API: what a developer implements or registers to host a tool in capgate.
//!
//! A tool declares its name, description, input schema and the kind of operation it performs,
//! derives the canonical *resource* a call touches from the call's arguments, and runs.
//!
//! Invariant: a tool never sees a call the guard has not authorized and the audit log has not
//! recorded. [`Tool::call`] takes a [`ToolInput`], which has no public constructor: only the
//! [door](crate::door) builds one, for a call that passed both stages. The resource in
//! [`ToolInput::resource`] is exactly the one the guard checked; tools act on that value rather
//! than re-deriving it from the arguments.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use rmcp::model::ContentBlock;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use crate::context::ToolContext;

/// Arguments of a tool call: a JSON object, already validated against the tool's input schema.
pub type Arguments = Map<String, Value>;

/// MCP content a tool returns: text, image, audio, embedded resource or resource link.
pub type Content = ContentBlock;

/// The future a tool's [`Tool::call`] returns.
pub type ToolFuture<'a> = Pin<Box<dyn Future<Output = Result<ToolOutput, ToolError>> + Send + 'a>>;

/// What a tool does to the world, as policy sees it (the `operation($op)` fact).
///
/// Issuance policy uses it to demand human approval for side effects; the shipped policy asks
/// for `approved_by` on anything but `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Observes state without changing it.
    Read,
    /// Changes stored state (files, records).
    Write,
    /// Runs code or commands.
    Execute,
    /// Talks to other hosts on the network.
    Network,
}

impl Operation {
    /// The fact value: `read`, `write`, `execute` or `network`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Execute => "execute",
            Operation::Network => "network",
        }
    }

    /// Parses the fact value back.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Operation::Read),
            "write" => Some(Operation::Write),
            "execute" => Some(Operation::Execute),
            "network" => Some(Operation::Network),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical resource a call touches: an absolute canonical path for files, a normalized
/// URL for HTTP, or `tool:<name>` for a tool that touches nothing nameable.
///
/// It is the `resource($r)` fact the guard authorizes, so it must already be in canonical form:
/// two spellings of the same thing must produce the same string, or a prefix check could be
/// walked around.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource(String);

impl Resource {
    /// A resource in canonical form. The caller vouches that `canonical` is canonical.
    pub fn new(canonical: impl Into<String>) -> Self {
        Resource(canonical.into())
    }

    /// The resource of a tool that touches nothing but itself.
    pub fn of_tool(tool: &str) -> Self {
        Resource(format!("tool:{tool}"))
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tool's public description: what `tools/list` shows and what policy reads.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// Unique name, `^[a-zA-Z0-9_-]{1,64}$`.
    pub name: String,
    /// Optional human title.
    pub title: Option<String>,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON schema of the arguments (an object schema).
    pub input_schema: Map<String, Value>,
    /// Optional JSON schema of `structuredContent`.
    pub output_schema: Option<Map<String, Value>>,
    /// The operation the tool performs.
    pub operation: Operation,
}

impl ToolSpec {
    /// A spec with a JSON schema given at run time.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        operation: Operation,
        input_schema: Map<String, Value>,
    ) -> Self {
        ToolSpec {
            name: name.into(),
            title: None,
            description: description.into(),
            input_schema,
            output_schema: None,
            operation,
        }
    }

    /// A spec whose input schema is derived from a schemars type.
    pub fn from_type<A: JsonSchema>(
        name: impl Into<String>,
        description: impl Into<String>,
        operation: Operation,
    ) -> Self {
        Self::new(name, description, operation, schema_of::<A>())
    }

    /// Sets the human title.
    pub fn with_title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the output schema.
    pub fn with_output_schema(mut self, schema: Map<String, Value>) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// The JSON schema of a schemars type, as an object map.
pub fn schema_of<A: JsonSchema>() -> Map<String, Value> {
    let schema = schemars::schema_for!(A);
    match serde_json::to_value(schema) {
        Ok(Value::Object(map)) => map,
        // A schemars schema always serializes to an object; `true`/`false` schemas are
        // normalized to the schema that accepts any object.
        _ => {
            let mut map = Map::new();
            map.insert("type".into(), Value::String("object".into()));
            map
        }
    }
}

/// What a successful tool call returns.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    /// Content blocks for the model.
    pub content: Vec<Content>,
    /// Optional structured result (`structuredContent`).
    pub structured: Option<Value>,
}

impl ToolOutput {
    /// A single text block.
    pub fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            content: vec![Content::text(text)],
            structured: None,
        }
    }

    /// Content blocks.
    pub fn content(content: Vec<Content>) -> Self {
        ToolOutput {
            content,
            structured: None,
        }
    }

    /// A structured result, with its JSON text as the content block older clients read.
    pub fn structured(value: Value) -> Self {
        ToolOutput {
            content: vec![Content::text(value.to_string())],
            structured: Some(value),
        }
    }

    /// Adds a structured result to existing content.
    pub fn with_structured(mut self, value: Value) -> Self {
        self.structured = Some(value);
        self
    }
}

/// Why a tool call did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// An argument is unusable (for instance a path that leaves the tool's root). Reported to
    /// the client as a tool execution error (`isError: true`, SEP-1303) naming the field, so the
    /// model reads why; when the resource function returns it, the guard never ran.
    #[error("argument `{field}`: {message}")]
    InvalidArgument {
        /// The argument's name.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The tool ran and failed. Reported as a result with `isError: true`, so the model reads it.
    #[error("{0}")]
    Failed(String),
}

impl ToolError {
    /// An unusable argument.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ToolError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A failure of the tool itself.
    pub fn failed(message: impl Into<String>) -> Self {
        ToolError::Failed(message.into())
    }
}

/// Why a hosted tool is held back from callers for now (see [`Tool::withheld`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The denial reason, low-cardinality (`definition_changed`, `store_unavailable`).
    pub reason: &'static str,
    /// One sentence for the agent and the operator: what changed and who can release it.
    pub message: String,
    /// True when capgate itself cannot tell (its store failed), not because of the tool.
    pub fault: bool,
}

/// Everything a tool receives for one authorized, recorded call.
///
/// It has no public constructor: the door builds it for a call that passed the guard and the
/// audit stage, so [`Tool::call`] cannot be reached any other way.
///
/// ```compile_fail,E0451
/// use capgate_core::{Arguments, Resource, ToolContext, ToolInput};
/// // Private fields: a ToolInput cannot be made up outside the door.
/// let _ = ToolInput { args: Arguments::new(), resource: Resource::new("/etc/shadow"), ctx: ToolContext::detached("fs_read") };
/// ```
pub struct ToolInput {
    args: Arguments,
    resource: Resource,
    ctx: ToolContext,
}

impl ToolInput {
    /// Only the door builds inputs, for calls it authorized and recorded.
    pub(crate) fn new(args: Arguments, resource: Resource, ctx: ToolContext) -> Self {
        ToolInput {
            args,
            resource,
            ctx,
        }
    }

    /// The validated arguments.
    pub fn args(&self) -> &Arguments {
        &self.args
    }

    /// The canonical resource the guard authorized. Act on this, not on a re-derivation.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Progress, logging, cancellation, nested calls.
    pub fn ctx(&self) -> &ToolContext {
        &self.ctx
    }

    /// The arguments, the resource and the context, taken apart.
    pub fn into_parts(self) -> (Arguments, Resource, ToolContext) {
        (self.args, self.resource, self.ctx)
    }
}

/// A tool hosted by capgate.
///
/// Most tools are easier to build with [`TypedTool`] (schema from a schemars type) or
/// [`DynamicTool`] (schema given at run time); implement this trait directly for full control.
pub trait Tool: Send + Sync + 'static {
    /// The tool's description.
    fn spec(&self) -> &ToolSpec;

    /// Derives the canonical resource a call touches from its (schema-valid) arguments.
    ///
    /// Runs before authorization; it must not perform the tool's effect. Return
    /// [`ToolError::InvalidArgument`] for arguments that name something the tool must never touch.
    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError>;

    /// Brings a resource *prefix* written by a person (in a token, a task request or a config
    /// file) to the canonical form [`Tool::resource`] produces, so `starts_with` compares like
    /// with like. The default keeps it as written.
    fn canonical_prefix(&self, prefix: &str) -> Result<String, ToolError> {
        Ok(prefix.to_owned())
    }

    /// Whether [`Tool::canonical_prefix`] spells prefixes the way this tool's resources are
    /// spelled (paths resolved under a root, normalized URLs), rather than keeping them as
    /// written. Only then does a tenant's prefix, so spelled, name resources of this tool.
    fn canonicalizes_prefixes(&self) -> bool {
        false
    }

    /// Why the tool may not be called right now, if it may not: for a tool whose definition
    /// is not (or no longer) the one an operator accepted. A withheld tool is hidden from
    /// `tools/list` and the guard refuses its calls with [`Withheld::reason`]. The default is
    /// never withheld.
    fn withheld(&self) -> Option<Withheld> {
        None
    }

    /// Performs the call. Reached only through the door ([`Door::dispatch`]), for a call the
    /// guard allowed and the audit stage recorded: nothing outside this crate can build the
    /// [`ToolInput`] it takes.
    ///
    /// ```compile_fail,E0624
    /// use capgate_core::{Arguments, Resource, Tool, ToolContext, ToolInput};
    /// fn run_directly(tool: &dyn Tool, ctx: ToolContext) {
    ///     // No public constructor: a tool cannot be called around the door.
    ///     let _ = tool.call(ToolInput::new(Arguments::new(), Resource::new("/etc/shadow"), ctx));
    /// }
    /// ```
    ///
    /// [`Door::dispatch`]: crate::door::Door::dispatch
    fn call(&self, input: ToolInput) -> ToolFuture<'_>;
}

type ResourceFn<A> = dyn Fn(&A) -> Result<Resource, ToolError> + Send + Sync;
type PrefixFn = dyn Fn(&str) -> Result<String, ToolError> + Send + Sync;

/// A tool whose arguments are a Rust type: the input schema comes from `schemars`, the
/// arguments arrive deserialized.
pub struct TypedTool<A, F> {
    spec: ToolSpec,
    resource: Box<ResourceFn<A>>,
    prefix: Option<Box<PrefixFn>>,
    run: F,
    _args: PhantomData<fn(A)>,
}

impl<A, F, Fut> TypedTool<A, F>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A, Resource, ToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
{
    /// A typed tool. Its resource defaults to `tool:<name>`; set one with [`Self::resource`].
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        operation: Operation,
        run: F,
    ) -> Self {
        let spec = ToolSpec::from_type::<A>(name, description, operation);
        let fixed = Resource::of_tool(&spec.name);
        TypedTool {
            spec,
            resource: Box::new(move |_| Ok(fixed.clone())),
            prefix: None,
            run,
            _args: PhantomData,
        }
    }

    /// Sets the function that derives the canonical resource from the arguments.
    pub fn resource(
        mut self,
        f: impl Fn(&A) -> Result<Resource, ToolError> + Send + Sync + 'static,
    ) -> Self {
        self.resource = Box::new(f);
        self
    }

    /// Sets the function that canonicalizes a granted resource prefix.
    pub fn canonical_prefix(
        mut self,
        f: impl Fn(&str) -> Result<String, ToolError> + Send + Sync + 'static,
    ) -> Self {
        self.prefix = Some(Box::new(f));
        self
    }

    /// Sets the human title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.spec.title = Some(title.into());
        self
    }

    fn decode(args: &Arguments) -> Result<A, ToolError> {
        A::deserialize(Value::Object(args.clone()))
            .map_err(|e| ToolError::invalid("arguments", e.to_string()))
    }
}

impl<A, F, Fut> Tool for TypedTool<A, F>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A, Resource, ToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        let typed = Self::decode(args)?;
        (self.resource)(&typed)
    }

    fn canonical_prefix(&self, prefix: &str) -> Result<String, ToolError> {
        match &self.prefix {
            Some(f) => f(prefix),
            None => Ok(prefix.to_owned()),
        }
    }

    fn canonicalizes_prefixes(&self) -> bool {
        self.prefix.is_some()
    }

    fn call(&self, input: ToolInput) -> ToolFuture<'_> {
        let (args, resource, ctx) = input.into_parts();
        let typed = Self::decode(&args);
        Box::pin(async move {
            let typed = typed?;
            (self.run)(typed, resource, ctx).await
        })
    }
}

type DynResourceFn = dyn Fn(&Arguments) -> Result<Resource, ToolError> + Send + Sync;
type DynRunFn = dyn Fn(ToolInput) -> ToolFuture<'static> + Send + Sync;

/// A tool described entirely at run time: a JSON schema, a resource function and a handler over
/// raw JSON arguments. This is the form for guarding tools whose shape is only known when
/// capgate starts (for example the tools of another MCP server).
pub struct DynamicTool {
    spec: ToolSpec,
    resource: Box<DynResourceFn>,
    prefix: Option<Box<PrefixFn>>,
    run: Box<DynRunFn>,
}

impl DynamicTool {
    /// A run-time tool. Its resource defaults to `tool:<name>`; set one with [`Self::resource`].
    pub fn new<F, Fut>(spec: ToolSpec, run: F) -> Self
    where
        F: Fn(Arguments, Resource, ToolContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ToolOutput, ToolError>> + Send + 'static,
    {
        let fixed = Resource::of_tool(&spec.name);
        let run = Arc::new(run);
        DynamicTool {
            spec,
            resource: Box::new(move |_| Ok(fixed.clone())),
            prefix: None,
            run: Box::new(move |input: ToolInput| {
                let run = Arc::clone(&run);
                let (args, resource, ctx) = input.into_parts();
                Box::pin(async move { run(args, resource, ctx).await })
            }),
        }
    }

    /// Sets the function that derives the canonical resource from the arguments.
    pub fn resource(
        mut self,
        f: impl Fn(&Arguments) -> Result<Resource, ToolError> + Send + Sync + 'static,
    ) -> Self {
        self.resource = Box::new(f);
        self
    }

    /// Sets the function that canonicalizes a granted resource prefix.
    pub fn canonical_prefix(
        mut self,
        f: impl Fn(&str) -> Result<String, ToolError> + Send + Sync + 'static,
    ) -> Self {
        self.prefix = Some(Box::new(f));
        self
    }
}

impl Tool for DynamicTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn resource(&self, args: &Arguments) -> Result<Resource, ToolError> {
        (self.resource)(args)
    }

    fn canonical_prefix(&self, prefix: &str) -> Result<String, ToolError> {
        match &self.prefix {
            Some(f) => f(prefix),
            None => Ok(prefix.to_owned()),
        }
    }

    fn canonicalizes_prefixes(&self) -> bool {
        self.prefix.is_some()
    }

    fn call(&self, input: ToolInput) -> ToolFuture<'_> {
        (self.run)(input)
    }
}

/// Reads a string argument, for resource functions over raw arguments.
pub fn str_arg<'a>(args: &'a Arguments, field: &str) -> Result<&'a str, ToolError> {
    match args.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ToolError::invalid(field, "expected a string")),
        None => Err(ToolError::invalid(field, "is required")),
    }
}
