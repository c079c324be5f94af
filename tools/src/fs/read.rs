//! `fs_read`: a file, as text or (when it is not UTF-8) as a base64 blob, from an offset, up to a size.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use cap_std::fs::OpenOptions;
use capgate_core::rmcp::model::{ContentBlock, ResourceContents};
use capgate_core::{Operation, Resource, ToolError, ToolOutput};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::io::{io_failed, open_regular};
use super::{FsRoot, FsTool};

/// Arguments of `fs_read`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadArgs {
    /// File to read, relative to the tool root.
    pub(super) path: String,
    /// Byte offset to start from (default 0).
    #[serde(default)]
    pub(super) offset: Option<u64>,
    /// Most bytes to return (default and cap: the configured limit).
    #[serde(default)]
    pub(super) max_bytes: Option<u64>,
}

/// `fs_read`.
pub(crate) fn fs_read(root: Arc<FsRoot>) -> impl capgate_core::Tool {
    FsTool {
        name: "fs_read",
        title: "Read file",
        description: "Read a file inside the workspace. Text comes back as text, other files as base64.",
        operation: Operation::Read,
        path: |root, a: &ReadArgs| root.resource("path", &a.path),
        work: |root, resource, args, _| read(root, resource, args),
    }
    .build(root)
}

pub(super) fn read(
    root: &FsRoot,
    resource: &Resource,
    args: &ReadArgs,
) -> Result<ToolOutput, ToolError> {
    let rel = root.relative(resource)?;
    let shown = root.display(resource);
    if rel == Path::new(".") {
        return Err(ToolError::failed(format!(
            "`{shown}` is a directory; use fs_list"
        )));
    }
    let mut file = root
        .open_parent(rel, false)
        .and_then(|(dir, name)| open_regular(&dir, name, OpenOptions::new().read(true)))
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::IsADirectory => {
                ToolError::failed(format!("`{shown}` is a directory; use fs_list"))
            }
            _ => io_failed("cannot open", &shown, e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| io_failed("cannot read", &shown, e))?;
    let limit = args
        .max_bytes
        .unwrap_or(root.limits.max_read_bytes)
        .min(root.limits.max_read_bytes);
    let offset = args.offset.unwrap_or(0);
    if offset > 0 {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| io_failed("cannot seek in", &shown, e))?;
    }
    let mut buf = Vec::new();
    file.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| io_failed("cannot read", &shown, e))?;
    let size = meta.len();
    let truncated = offset + (buf.len() as u64) < size;
    let info = json!({
        "path": shown,
        "size": size,
        "offset": offset,
        "bytes": buf.len(),
        "truncated": truncated,
    });
    let content = match String::from_utf8(buf) {
        Ok(text) => ContentBlock::text(text),
        Err(e) => ContentBlock::resource(ResourceContents::BlobResourceContents {
            uri: format!("file://{}", resource.as_str()),
            mime_type: Some("application/octet-stream".into()),
            blob: base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            meta: None,
        }),
    };
    Ok(ToolOutput::content(vec![content]).with_structured(info))
}
