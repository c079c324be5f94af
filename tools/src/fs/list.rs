//! `fs_list`: the entries of one directory, names, kinds and sizes, up to a count.

use std::sync::Arc;

use capgate_core::{Operation, Resource, ToolError, ToolOutput, TypedTool};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::FsRoot;
use super::io::{blocking, io_failed};

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
    let (r1, r2, r3) = (root.clone(), root.clone(), root);
    TypedTool::new(
        "fs_list",
        "List a directory inside the workspace: names, kinds and sizes.",
        Operation::Read,
        move |_args: ListArgs, resource, _ctx| {
            let root = Arc::clone(&r1);
            async move { blocking(move || list(&root, &resource)).await }
        },
    )
    .title("List directory")
    .resource(move |a: &ListArgs| r2.resource("path", a.path.as_deref().unwrap_or(".")))
    .canonical_prefix(move |p| r3.canonical_prefix(p))
}

pub(super) fn list(root: &FsRoot, resource: &Resource) -> Result<ToolOutput, ToolError> {
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
