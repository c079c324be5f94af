//! The registry: every tool capgate hosts, by name, with its compiled input-schema validator.
//!
//! Invariant: the registry hands out tool *descriptions* and validated, resource-resolved
//! [`ToolCall`]s, never a callable tool. Calling a tool needs an
//! [`Authorized`](crate::guard::Authorized) call, which only the guard builds.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::Error;
use crate::guard::Authorized;
use crate::session::ToolContext;
use crate::tool::{Arguments, Resource, Tool, ToolError, ToolFuture, ToolInput, ToolSpec};

/// The one dispatch path: runs a tool call the guard has authorized.
///
/// There is no other way to invoke a hosted tool: the registry never hands out a tool, and a
/// [`ToolCall`] can only be run through this function, which demands the guard's
/// [`Authorized`] wrapper.
pub fn dispatch(call: Authorized<ToolCall>, ctx: ToolContext) -> ToolFuture<'static> {
    let (call, _grant) = call.into_parts();
    let ToolCall {
        tool,
        args,
        resource,
    } = call;
    Box::pin(async move {
        tool.call(ToolInput {
            args,
            resource,
            ctx,
        })
        .await
    })
}

/// Names of capgate's own in-band control tools; hosted tools may not take them.
pub const RESERVED_NAMES: &[&str] = &["task_begin", "task_end"];

/// A hosted tool with its compiled schema validator.
struct Entry {
    tool: Arc<dyn Tool>,
    validator: jsonschema::Validator,
}

/// All hosted tools.
#[derive(Default)]
pub struct Registry {
    tools: BTreeMap<String, Entry>,
}

/// A call that named a real tool, whose arguments passed the tool's schema and whose resource
/// has been derived. It can be authorized, not run.
pub struct ToolCall {
    // Private to this module: the only code that can reach `tool` is `dispatch` below, which
    // takes nothing but a guard-authorized call.
    tool: Arc<dyn Tool>,
    args: Arguments,
    resource: Resource,
}

impl ToolCall {
    /// The tool's description.
    pub fn spec(&self) -> &ToolSpec {
        self.tool.spec()
    }

    /// The validated arguments.
    pub fn args(&self) -> &Arguments {
        &self.args
    }

    /// The canonical resource the call touches.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// Why a call could not even be put before the guard.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// No tool by that name.
    #[error("unknown tool `{name}`; tools/list shows the tools this token can call")]
    UnknownTool {
        /// The name asked for.
        name: String,
    },
    /// The arguments do not match the tool's schema, or name something the tool refuses.
    #[error("invalid arguments for tool `{tool}`: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// The first offending field, as a JSON pointer without the leading slash.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool. Refuses a malformed or reserved name, a duplicate, or an input schema that
    /// is not a valid JSON schema for an object.
    pub fn register(&mut self, tool: impl Tool) -> Result<(), Error> {
        self.register_arc(Arc::new(tool))
    }

    /// Adds a shared tool.
    pub fn register_arc(&mut self, tool: Arc<dyn Tool>) -> Result<(), Error> {
        let spec = tool.spec();
        let name = spec.name.clone();
        if !valid_tool_name(&name) {
            return Err(Error::Registry(format!(
                "tool name `{name}` must match ^[a-zA-Z0-9_-]{{1,64}}$ (some MCP clients refuse other names)"
            )));
        }
        if RESERVED_NAMES.contains(&name.as_str()) {
            return Err(Error::Registry(format!(
                "tool name `{name}` is reserved for capgate's in-band task tools; pick another name"
            )));
        }
        if self.tools.contains_key(&name) {
            return Err(Error::Registry(format!(
                "tool `{name}` is registered twice; tool names must be unique"
            )));
        }
        if spec.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(Error::Registry(format!(
                "tool `{name}`: the input schema must have \"type\": \"object\" (MCP arguments are an object)"
            )));
        }
        let schema = Value::Object(spec.input_schema.clone());
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            Error::Registry(format!(
                "tool `{name}`: the input schema is not a valid JSON schema: {e}"
            ))
        })?;
        self.tools.insert(name, Entry { tool, validator });
        Ok(())
    }

    /// The descriptions of all hosted tools, by name.
    pub fn specs(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.values().map(|e| e.tool.spec())
    }

    /// A hosted tool's description.
    pub fn spec(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.get(name).map(|e| e.tool.spec())
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
        let entry = self.tools.get(tool).ok_or_else(|| {
            Error::Registry(format!(
                "unknown tool `{tool}`; hosted tools: {}",
                self.tools.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        entry.tool.canonical_prefix(prefix).map_err(|e| {
            Error::Registry(format!("resource prefix `{prefix}` for tool `{tool}`: {e}"))
        })
    }

    /// Resolves a call: the tool must exist, the arguments must pass its schema, and its
    /// resource function must accept them. Nothing here performs the tool's effect.
    pub fn prepare(&self, name: &str, args: Option<Arguments>) -> Result<ToolCall, CallError> {
        let entry = self.tools.get(name).ok_or_else(|| CallError::UnknownTool {
            name: name.to_owned(),
        })?;
        let args = args.unwrap_or_default();
        let instance = Value::Object(args);
        if let Some(error) = entry.validator.iter_errors(&instance).next() {
            let (field, message) = describe_schema_error(&error);
            return Err(CallError::InvalidArguments {
                tool: name.to_owned(),
                field,
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
            },
            ToolError::Failed(message) => CallError::InvalidArguments {
                tool: name.to_owned(),
                field: String::new(),
                message,
            },
        })?;
        Ok(ToolCall {
            tool: Arc::clone(&entry.tool),
            args,
            resource,
        })
    }
}

/// `^[a-zA-Z0-9_-]{1,64}$`.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Names the offending field of a schema error, and says what is wrong in words.
fn describe_schema_error(error: &jsonschema::ValidationError<'_>) -> (String, String) {
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
        let missing = reg.prepare("echo", None).err().unwrap();
        match missing {
            CallError::InvalidArguments { field, message, .. } => {
                assert_eq!(field, "text");
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
}
