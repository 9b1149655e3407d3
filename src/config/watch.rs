//! Hot reload: watches a file's directory and acts when the file's content changes (the config
//! file here; listener certificates in `tls::server`).
//!
//! Watching the directory (not the file) catches every way a file gets replaced: an in-place
//! write, an editor's write-to-temp-and-rename, and a Kubernetes ConfigMap update, where the
//! kubelet swaps the `..data` symlink to a new directory. When the path is a symlink into another
//! directory, that directory is watched too. Events are debounced, and a reload
//! happens only when the bytes behind the path differ from the last ones the control plane
//! read. A slow poll backs up the events in case one is missed.

use crate::control::Control;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// Fallback poll interval.
const POLL: Duration = Duration::from_secs(2);

/// The directory holding `path`.
fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Watches the directory of `path` and, when `path` is a symlink into another directory (as
/// with stow, Nix or Ansible links), that directory too. Called again after each change, since a
/// swapped link may point somewhere new.
fn watch_dirs(
    watcher: &mut impl Watcher,
    watched: &mut HashSet<PathBuf>,
    path: &Path,
) -> notify::Result<()> {
    let target = std::fs::canonicalize(path).ok();
    for dir in std::iter::once(dir_of(path)).chain(target.as_deref().map(dir_of)) {
        if !watched.contains(&dir) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            watched.insert(dir);
        }
    }
    Ok(())
}

/// Starts watching the config file at `path` until `stop` turns true.
pub fn spawn(
    control: Arc<Control>,
    path: PathBuf,
    stop: watch::Receiver<bool>,
) -> notify::Result<()> {
    watch_files(vec![path], POLL, stop, move || {
        let control = control.clone();
        async move {
            // Skips content already loaded, whoever loaded it (this watcher or `POST
            // /v1/reload`), checked under the reload's own lock. A rejected file is logged,
            // counted and shown in /v1/state by the reload itself.
            let _ = control.reload_if_changed().await;
        }
    })
}

/// Calls `on_change` after each settled burst of changes in the directories of `paths` (and of
/// their symlinks' targets), and every `poll` in case an event was missed, until `stop` turns
/// true. `on_change` decides whether anything it cares about really changed.
pub fn watch_files<F, Fut>(
    paths: Vec<PathBuf>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
    mut on_change: F,
) -> notify::Result<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening and reading are reported too, and the watcher itself reads the files: only a
        // change (or a writer closing a file) may wake it, or each read would set off the next.
        let wakes = |kind: &EventKind| {
            !kind.is_access()
                || matches!(
                    kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                )
        };
        if event.is_ok_and(|e| wakes(&e.kind)) {
            let _ = tx.send(());
        }
    })?;
    let mut watched = HashSet::new();
    for p in &paths {
        watch_dirs(&mut watcher, &mut watched, p)?;
    }
    tokio::spawn(async move {
        let mut poll = tokio::time::interval(poll);
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
            // A directory that disappeared (an old ConfigMap generation) just stops reporting.
            for p in &paths {
                if let Err(e) = watch_dirs(&mut watcher, &mut watched, p) {
                    tracing::debug!(path = %p.display(), error = %e, "cannot watch a file's new location; polling covers it");
                }
            }
            on_change().await;
        }
    });
    Ok(())
}
