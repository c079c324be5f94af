//! capgate-core's error: a tool that cannot be hosted, or a prefix a tool refuses.

/// Why a tool cannot be registered, or a resource prefix cannot be canonicalized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name breaks `^[a-zA-Z0-9_-]{1,64}$`.
    #[error(
        "tool name `{name}` must match ^[a-zA-Z0-9_-]{{1,64}}$ (some MCP clients refuse other names)"
    )]
    BadToolName {
        /// The name.
        name: String,
    },
    /// The name is one of capgate's own in-band tools.
    #[error("tool name `{name}` is reserved for capgate's in-band task tools; pick another name")]
    ReservedToolName {
        /// The name.
        name: String,
    },
    /// Two tools with one name.
    #[error("tool `{name}` is registered twice; tool names must be unique")]
    DuplicateTool {
        /// The name.
        name: String,
    },
    /// The input schema is not an object schema.
    #[error(
        "tool `{name}`: the input schema must have \"type\": \"object\" (MCP arguments are an object)"
    )]
    SchemaNotObject {
        /// The tool.
        name: String,
    },
    /// The input schema is not a valid JSON schema.
    #[error("tool `{name}`: the input schema is not a valid JSON schema")]
    InvalidSchema {
        /// The tool.
        name: String,
        /// What the validator found.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No tool by that name.
    #[error("unknown tool `{name}`; hosted tools: {hosted}")]
    UnknownTool {
        /// The name asked for.
        name: String,
        /// What is hosted.
        hosted: String,
    },
    /// The tool refuses a resource prefix.
    #[error("resource prefix `{prefix}` for tool `{tool}`")]
    Prefix {
        /// The tool.
        tool: String,
        /// The prefix as written.
        prefix: String,
        /// Why the tool refused it.
        #[source]
        source: crate::tool::ToolError,
    },
}

/// An error and every source under it, joined with `: `, for a message that leaves capgate
/// (a wire answer, a log line) where no error-chain formatter runs.
pub fn chain(e: &dyn std::error::Error) -> String {
    use std::fmt::Write as _;
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let _ = write!(out, ": {s}");
        next = s.source();
    }
    out
}
