//! The state file: API overrides written atomically (temp file, fsync, rename) and read at start.

use super::overlay::Overlay;
use crate::config::files::{read_regular, MAX_FILE_BYTES};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reads the overlay; `Ok(None)` when the file does not exist yet.
pub fn load(path: &Path) -> Result<Option<Overlay>, String> {
    match read_regular(path, MAX_FILE_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a valid state file: {e}", path.display())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the overlay so that a crash leaves either the old file or the new one, never half.
pub async fn save(path: &Path, overlay: &Overlay) -> Result<(), String> {
    let json = serde_json::to_vec_pretty(overlay).map_err(|e| e.to_string())?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        write_atomic(&path, &json).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename is durable once the directory entry is.
    std::fs::File::open(dir)?.sync_all()
}
