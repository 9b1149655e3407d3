//! Hot reload: watches the config file's directory and reloads when the file's content changes.
//!
//! Watching the directory (not the file) catches every way a file gets replaced: an in-place
//! write, an editor's write-to-temp-and-rename, and a Kubernetes ConfigMap update, where the
//! kubelet swaps the `..data` symlink to a new directory. Events are debounced, and a reload
//! happens only when the bytes behind the path differ from the last ones seen. A slow poll backs
//! up the events in case one is missed.

use crate::control::Control;
use notify::{RecursiveMode, Watcher};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// Fallback poll interval.
const POLL: Duration = Duration::from_secs(2);

fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

/// Starts watching `path`; the returned watcher must be kept alive.
pub fn spawn(
    control: Arc<Control>,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let mut last = content_hash(&path);
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Let a burst of events (write, rename, symlink swap) settle.
                    while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                }
                _ = poll.tick() => {}
                _ = stop.changed() => return,
            }
            let now = content_hash(&path);
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            // A rejected file is logged, counted and shown in /v1/state by `reload` itself.
            let _ = control.reload(None).await;
        }
    });
    Ok(watcher)
}
