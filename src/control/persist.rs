//! The state file: API overrides and the generation they were written at, written atomically
//! (temp file, fsync, rename) and read at start.

use super::overlay::{Overlay, RouteOverlay};
use crate::config::files::{read_regular, MAX_FILE_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the state file holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Saved {
    /// The API overrides.
    pub overlay: Overlay,
    /// The generation that was live when they were written (0 in files written before
    /// generations were saved).
    pub generation: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    routes: BTreeMap<String, RouteOverlay>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    generation: u64,
    routes: &'a BTreeMap<String, RouteOverlay>,
}

/// Moves a state file that cannot be restored out of the way, to `<path>.rejected-<unix
/// seconds>` beside it, so the next change writes a fresh one and the operator still has what
/// was there. Returns the new path.
pub fn set_aside(path: &Path) -> Result<PathBuf, String> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".rejected-{secs}"));
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside)
        .map(|()| aside)
        .map_err(|e| format!("cannot move it aside: {e}"))
}

/// Reads the state file; `Ok(None)` when it does not exist yet.
pub fn load(path: &Path) -> Result<Option<Saved>, String> {
    match read_regular(path, MAX_FILE_BYTES) {
        Ok(bytes) => serde_json::from_slice::<FileIn>(&bytes)
            .map(|f| {
                Some(Saved {
                    overlay: Overlay { routes: f.routes },
                    generation: f.generation,
                })
            })
            .map_err(|e| format!("{}: not a valid state file: {e}", path.display())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes the overlay and `generation` so that a crash leaves either the old file or the new
/// one, never half.
pub async fn save(path: &Path, overlay: &Overlay, generation: u64) -> Result<(), String> {
    let out = FileOut {
        generation,
        routes: &overlay.routes,
    };
    let json = serde_json::to_vec_pretty(&out).map_err(|e| e.to_string())?;
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
