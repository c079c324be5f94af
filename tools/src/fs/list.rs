//! `fs_list`: the entries of one directory, names, kinds and sizes, up to a count.

use std::sync::Arc;

use capgate_core::{Operation, Resource, ToolContext, ToolError, ToolOutput};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::io::io_failed;
use super::{FsRoot, FsTool};

/// Arguments of `fs_list`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListArgs {
    /// Directory to list, relative to the tool root (default: the root).
    #[serde(default)]
    pub(super) path: Option<String>,
}

/// `fs_list`.
pub(crate) fn fs_list(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    FsTool {
        name: "fs_list",
        title: "List directory",
        description: "List a directory inside the workspace: names, kinds and sizes.",
        operation: Operation::Read,
        path: |root, a: &ListArgs| root.resource("path", a.path.as_deref().unwrap_or(".")),
        work: |root, resource, _, ctx| list(root, resource, ctx),
    }
    .build(root)
}

/// The entries of the directory the guard authorized that the call may also reach: another
/// tenant's directory, or capgate's own state, under it is left out.
pub(super) fn list(
    root: &FsRoot,
    resource: &Resource,
    ctx: &ToolContext,
) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    let entries = root
        .open_dir_strict(rel, false)
        .and_then(|dir| dir.entries())
        .map_err(|e| io_failed("cannot list", &shown, e))?;
    let mut items = Vec::new();
    let mut more = false;
    for entry in entries {
        let entry = entry.map_err(|e| io_failed("cannot list", &shown, e))?;
        if items.len() >= root.limits.max_list_entries {
            more = true;
            break;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry
            .file_type()
            .map_err(|e| io_failed("cannot list", &shown, e))?;
        if !root.reachable(&rel.join(&name), ft.is_dir(), ctx) {
            continue;
        }
        let kind = if ft.is_symlink() {
            "symlink"
        } else if ft.is_dir() {
            "dir"
        } else {
            "file"
        };
        let size = if ft.is_file() {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        items.push(json!({"name": name, "kind": kind, "size": size}));
    }
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let text = items
        .iter()
        .map(|i| {
            let suffix = if i["kind"] == "dir" { "/" } else { "" };
            format!("{}{suffix}", i["name"].as_str().unwrap_or(""))
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(ToolOutput::text(text)
        .with_structured(json!({"path": shown, "entries": items, "truncated": more})))
}
