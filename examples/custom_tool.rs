//! Hosting your own tools in capgate, in both registration forms.
//!
//! This binary is the full `capgate` CLI with two extra tools:
//!
//! * `ticket_get`, a [`TypedTool`]: its arguments are a Rust type, its input schema comes from
//!   `schemars`, and it reads.
//! * `ticket_create`, a [`DynamicTool`]: its JSON schema is given at run time (as it would be for
//!   a tool discovered from another MCP server), and it writes, so the shipped issuance policy
//!   asks for an approver before any task may use it.
//!
//! Both derive the canonical *resource* a call touches (`ticket:<project>/<id>`), which is what
//! tasks are granted and what the guard checks before the tool runs. Nothing here checks
//! permissions: the guard has already decided by the time a tool's function is called.
//!
//! ```text
//! cargo run --example custom_tool -- serve --http 127.0.0.1:8080
//! cargo run --example custom_tool -- token mint --agent triage --tenant default \
//!     --tool ticket_get --tool ticket_create --resource ticket_create=ticket:web/
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use capgate::core::{
    DynamicTool, Operation, Resource, ToolError, ToolOutput, ToolSpec, TypedTool, str_arg,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// A toy ticket tracker shared by the two tools.
#[derive(Default)]
struct Tracker {
    tickets: Mutex<BTreeMap<String, Value>>,
}

/// Arguments of `ticket_get`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GetTicket {
    /// The project, e.g. `web`.
    project: String,
    /// The ticket number.
    id: u32,
}

/// Project names become part of a resource: refuse anything that could smuggle a separator.
fn project(name: &str) -> Result<&str, ToolError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(name)
    } else {
        Err(ToolError::invalid(
            "project",
            "letters, digits and `-` only",
        ))
    }
}

fn main() -> ExitCode {
    let tracker = Arc::new(Tracker::default());
    capgate::main_with(move |registry, _config| {
        // Form 1: a typed tool. Schema from `GetTicket`, arguments arrive deserialized.
        let t = Arc::clone(&tracker);
        registry.register(
            TypedTool::new(
                "ticket_get",
                "Read one ticket.",
                Operation::Read,
                move |args: GetTicket, resource: Resource, _ctx| {
                    let t = Arc::clone(&t);
                    async move {
                        let tickets = t
                            .tickets
                            .lock()
                            .map_err(|_| ToolError::failed("tracker unavailable"))?;
                        match tickets.get(resource.as_str()) {
                            Some(ticket) => Ok(ToolOutput::structured(ticket.clone())),
                            None => Err(ToolError::failed(format!(
                                "no ticket {}/{}",
                                args.project, args.id
                            ))),
                        }
                    }
                },
            )
            .resource(|a: &GetTicket| {
                Ok(Resource::new(format!(
                    "ticket:{}/{}",
                    project(&a.project)?,
                    a.id
                )))
            }),
        )?;

        // Form 2: a dynamic tool. Schema as JSON at run time, arguments as a JSON object.
        let schema = json!({
            "type": "object",
            "properties": {
                "project": {"type": "string", "description": "The project, e.g. `web`."},
                "title": {"type": "string", "minLength": 1, "maxLength": 200},
                "priority": {"type": "string", "enum": ["low", "normal", "high"], "default": "normal"}
            },
            "required": ["project", "title"],
            "additionalProperties": false
        });
        let Value::Object(schema) = schema else {
            unreachable!("a JSON object literal")
        };
        let t = Arc::clone(&tracker);
        registry.register(
            DynamicTool::new(
                ToolSpec::new("ticket_create", "Open a ticket in a project.", Operation::Write, schema),
                move |args, resource: Resource, ctx| {
                    let t = Arc::clone(&t);
                    async move {
                        let (id, ticket) = {
                            let mut tickets = t.tickets.lock().map_err(|_| ToolError::failed("tracker unavailable"))?;
                            let id = tickets.len() as u32 + 1;
                            let ticket = json!({"id": id, "title": args["title"],
                                                "priority": args.get("priority").cloned().unwrap_or(json!("normal"))});
                            tickets.insert(format!("{}{id}", resource.as_str()), ticket.clone());
                            (id, ticket)
                        };
                        // Reaches the client only when it asked for progress on this call.
                        ctx.progress(1.0, Some(1.0), Some(format!("ticket {id} created"))).await;
                        Ok(ToolOutput::structured(ticket))
                    }
                },
            )
            // Creating touches the project: the resource is the project's prefix.
            .resource(|args| Ok(Resource::new(format!("ticket:{}/", project(str_arg(args, "project")?)?)))),
        )?;
        Ok(())
    })
}
