//! `fs_write`: replace a file atomically, or append to it; parent directories made on request.

use std::path::Path;
use std::sync::Arc;

use cap_std::fs::OpenOptions;
use capgate_core::{Operation, Resource, ToolError, ToolOutput};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::io::{io_failed, open_regular, temp_file};
use super::{FsRoot, FsTool};

/// Arguments of `fs_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteArgs {
    /// File to write, relative to the tool root.
    pub(super) path: String,
    /// The new content (UTF-8 text).
    pub(super) content: String,
    /// Append instead of replacing (default false).
    #[serde(default)]
    pub(super) append: bool,
    /// Create missing parent directories (default false).
    #[serde(default)]
    pub(super) create_dirs: bool,
}

/// `fs_write`.
pub(crate) fn fs_write(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    FsTool {
        name: "fs_write",
        title: "Write file",
        description: "Write (or append to) a text file inside the workspace. Replacing is atomic.",
        operation: Operation::Write,
        path: |root, a: &WriteArgs| {
            if a.content.len() as u64 > root.limits.max_write_bytes {
                return Err(ToolError::invalid(
                    "content",
                    format!(
                        "{} bytes is over the {}-byte limit",
                        a.content.len(),
                        root.limits.max_write_bytes
                    ),
                ));
            }
            root.resource("path", &a.path)
        },
        work: |root, resource, args, _| write(root, resource, args),
    }
    .build(root)
}

pub(super) fn write(
    root: &FsRoot,
    resource: &Resource,
    args: &WriteArgs,
) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    if rel == Path::new(".") {
        return Err(ToolError::failed(
            "cannot write to the root directory itself",
        ));
    }
    let (dir, name) = match root.open_parent(rel, args.create_dirs) {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ToolError::failed(format!(
                "the directory of `{shown}` does not exist; pass create_dirs: true to create it"
            )));
        }
        Err(e) => return Err(io_failed("cannot open the directory of", &shown, e)),
    };
    if let Ok(meta) = dir.symlink_metadata(name)
        && meta.is_dir()
    {
        return Err(ToolError::failed(format!("`{shown}` is a directory")));
    }
    if args.append {
        use std::io::Write;
        let mut f = open_regular(&dir, name, OpenOptions::new().append(true).create(true))
            .map_err(|e| io_failed("cannot open", &shown, e))?;
        f.write_all(args.content.as_bytes())
            .map_err(|e| io_failed("cannot append to", &shown, e))?;
    } else {
        use std::io::Write;
        // Write a sibling temporary file, then rename over the target: a failure halfway never
        // leaves a truncated file behind. The temporary is created exclusively, so nothing
        // planted under its name (a symbolic link, a FIFO) is ever opened.
        // Unique per call (two writes to one file must not share a temporary) and never an
        // existing name: whatever sits there, even a leftover, is not opened or removed.
        let (tmp, mut file) =
            temp_file(&dir, name).map_err(|e| io_failed("cannot write", &shown, e))?;
        let written = file.write_all(args.content.as_bytes());
        drop(file);
        if let Err(e) = written {
            let _ = dir.remove_file(&tmp);
            return Err(io_failed("cannot write", &shown, e));
        }
        if let Err(e) = dir.rename(&tmp, &dir, name) {
            let _ = dir.remove_file(&tmp);
            return Err(io_failed("cannot replace", &shown, e));
        }
    }
    Ok(ToolOutput::text(format!(
        "{} {} bytes to {shown}",
        if args.append { "appended" } else { "wrote" },
        args.content.len()
    ))
    .with_structured(json!({"path": shown, "bytes": args.content.len(), "append": args.append})))
}
