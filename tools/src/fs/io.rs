//! File I/O that cannot be redirected: no symbolic link followed, no FIFO opened, writes
//! through exclusively created temporaries, and errors in words a model can act on.

use std::ffi::OsStr;

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, File, OpenOptions, OpenOptionsExt};
use capgate_core::ToolError;

/// Creates a fresh temporary file beside `name` in `dir`, exclusively.
pub(super) fn temp_file(dir: &Dir, name: &OsStr) -> std::io::Result<(String, File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut last = None;
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(
            ".{}.capgate-{}-{n}.tmp",
            name.to_string_lossy(),
            std::process::id()
        );
        match open_regular(
            dir,
            OsStr::new(&tmp),
            OpenOptions::new().write(true).create_new(true),
        ) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free temporary name")))
}

/// Opens `name` in `dir` without following a symbolic link and without blocking on a FIFO, and
/// accepts only a regular file.
pub(super) fn open_regular(
    dir: &Dir,
    name: &OsStr,
    opts: &mut OpenOptions,
) -> std::io::Result<File> {
    opts.follow(FollowSymlinks::No);
    #[cfg(unix)]
    opts.custom_flags(libc::O_NONBLOCK);
    let file = dir.open_with(name, opts)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // A second hard link to the file may stand anywhere on the file system, outside the root
    // or the grant: reading or appending through this name would reach that file too.
    #[cfg(unix)]
    {
        use cap_std::fs::MetadataExt;
        if meta.nlink() > 1 {
            return Err(std::io::Error::other(
                "it has other hard links, which may lie outside what was granted; refused",
            ));
        }
    }
    Ok(file)
}

pub(super) fn io_failed(what: &str, path: &str, e: std::io::Error) -> ToolError {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "not found".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (or it leads outside the tool root)".to_owned()
        }
        std::io::ErrorKind::IsADirectory => "it is a directory".to_owned(),
        // ELOOP / ENOTDIR: a symbolic link is on the way. `resolve` left none, so one appeared
        // after the check; following it could land anywhere.
        #[cfg(unix)]
        _ if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            "a symbolic link (or a file) is where a directory was checked; refused".to_owned()
        }
        _ => e.to_string(),
    };
    ToolError::failed(format!("{what} `{path}`: {reason}"))
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolError::failed(format!("the filesystem task failed: {e}")))?
}
