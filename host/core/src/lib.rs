//! capgate-core: what tool authors and every layer of capgate share.
//!
//! * [`tool`]: the Tool API ([`Tool`], [`TypedTool`], [`DynamicTool`], [`ToolSpec`],
//!   [`Resource`], [`Operation`], outputs and errors);
//! * [`content`]: resources and prompts, registered beside tools and hosted as pseudo-tools;
//! * [`door`]: the one way to run a hosted tool: a [`Registry`] sealed into a [`Door`] whose
//!   stages (the guard, the audit) every call passes, in order, as types;
//! * [`context`]: what a running tool may do besides its work (progress, logging,
//!   cancellation, nested calls);
//! * [`task`]: tasks as agents ask for them, issuance grants them and the store keeps them;
//! * [`vocab`]: the Biscuit vocabulary, one constant per fact;
//! * [`time`]: time as tokens and records spell it;
//! * [`section`]: the config section a tool pack owns;
//! * [`canon`]: the one spelling of URL and path resources.
//!
//! Invariant: nothing here decides or records anything. The core holds the door and the words;
//! the layers above supply the guard (capgate-authz) and the audit log (capgate-server).

pub mod canon;
pub mod content;
pub mod context;
pub mod door;
pub mod error;
pub mod section;
pub mod task;
pub mod time;
pub mod tool;
pub mod vocab;

pub use content::{Changes, List, PromptSource, Prompts, ResourceSource, Resources};
pub use context::{CallScope, ContextParts, LogLevel, ToolContext};
pub use door::{Action, CallError, Catalog, Door, Prepared, Registry, Stages};
pub use error::Error;
pub use section::Section;
pub use tool::{
    Arguments, Content, DynamicTool, Operation, Resource, Tool, ToolError, ToolFuture, ToolInput,
    ToolOutput, ToolSpec, TypedTool, Withheld, schema_of, str_arg,
};

/// The MCP model types, for tool authors.
pub use rmcp;
