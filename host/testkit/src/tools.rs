//! Small tools for tests: each counts its runs, so a test can assert that a refused call ran
//! nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use capgate_core::{DynamicTool, Operation, Resource, ToolOutput, ToolSpec, str_arg};
use serde_json::{Map, Value, json};

/// A JSON object literal as a map.
pub fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("expected a JSON object"),
    }
}

/// A tool with an optional `path` argument whose resource is `<prefix><path>` (or
/// `tool:<name>` without a prefix), counting its runs in `runs`.
pub fn counting(
    name: &str,
    operation: Operation,
    prefix: Option<&str>,
    runs: &Arc<AtomicUsize>,
) -> DynamicTool {
    let schema = object(json!({
        "type": "object",
        "properties": {"path": {"type": "string"}, "append": {}},
    }));
    let runs = Arc::clone(runs);
    let tool = DynamicTool::new(
        ToolSpec::new(name, "counts its runs", operation, schema),
        move |_args, resource, _ctx| {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(ToolOutput::text(format!("did {resource}")))
            }
        },
    );
    match prefix {
        Some(p) => {
            let p = p.to_owned();
            tool.resource(move |args| Ok(Resource::new(format!("{p}{}", str_arg(args, "path")?))))
        }
        None => tool,
    }
}
