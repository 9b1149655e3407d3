//! The control plane: the file config, the API overlay, the generation, and the one place that
//! builds and swaps in a new runtime.

pub mod external;
pub mod overlay;
pub mod persist;
mod restart;
pub mod state;

use crate::config::{self, model::RawConfig, model::RawRoute, model::RawRule, Config, FieldError};
use crate::metrics::hub::ResultLabel;
use crate::runtime::{Runtime, SharedRuntime};
use crate::tls::CertStore;
use external::{External, RouteUpdate, SubsetUpdate};
use overlay::{Dropped, Overlay, OverlayError, Overridden, RouteOverlay};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// How many dropped overrides `/v1/state` keeps listing.
const MAX_DROPPED_LISTED: usize = 50;

/// What a reload did.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    /// The generation now live.
    pub generation: u64,
    /// API overrides this reload could not keep.
    pub dropped: Vec<Dropped>,
    /// Settings of the file that differ from those the gateway started with and that only a
    /// restart applies (`admin.address`, `listeners`, ...); the rest of the file is live.
    pub restart_required: Vec<&'static str>,
}

/// Why a change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeError {
    /// The request names something that does not exist (HTTP 404).
    NotFound {
        /// The field at fault.
        field: String,
        /// What is missing.
        message: String,
    },
    /// The request is malformed or not applicable (HTTP 400).
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// `If-Match` named another generation (HTTP 409).
    Stale {
        /// The generation now live.
        current: u64,
        /// The one the caller expected.
        expected: u64,
    },
    /// The config file could not be used (reload); the running config stays.
    Config(Vec<FieldError>),
    /// The route belongs to an object outside the file (HTTP 409): change that instead.
    Owned {
        /// The route.
        route: String,
        /// Its owner (`VirtualService shop/web`).
        owner: String,
    },
    /// The state file could not be written, so the change would not survive a restart: it was
    /// not made (HTTP 500).
    Persist {
        /// Why the write failed.
        message: String,
    },
}

impl From<OverlayError> for ChangeError {
    fn from(e: OverlayError) -> Self {
        if e.not_found {
            ChangeError::NotFound {
                field: e.field,
                message: e.message,
            }
        } else {
            ChangeError::Invalid {
                field: e.field,
                message: e.message,
            }
        }
    }
}

/// Outcome of the last file reload.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    /// When it was tried.
    pub at: SystemTime,
    /// The problems, if it was rejected.
    pub errors: Vec<String>,
}

/// What the control plane holds, guarded by one lock so changes apply in order.
#[derive(Debug)]
pub struct ControlState {
    /// The file config last accepted.
    pub file: RawConfig,
    /// API overrides.
    pub overlay: Overlay,
    /// The effective config now live.
    pub effective: Config,
    /// Overrides the last apply could not keep.
    pub dropped: Vec<Dropped>,
    /// The last file reload, if any.
    pub last_reload: Option<ReloadStatus>,
    /// Problem with the state file at start or on the last write, if any.
    pub state_file_error: Option<String>,
    /// Routes and services from Kubernetes, when the config has a `kubernetes` section.
    pub external: Option<External>,
}

/// The control plane. Cheap to share; every change goes through `commit`.
#[derive(Debug)]
pub struct Control {
    runtime: SharedRuntime,
    state: Mutex<ControlState>,
    /// Hash of the config file bytes last read (0: none yet), so the watcher skips content that
    /// was already loaded (e.g. by `POST /v1/reload`).
    file_hash: AtomicU64,
    config_path: Option<PathBuf>,
    state_file: Option<PathBuf>,
    draining: AtomicBool,
    /// Whether `external` (if any) is complete; true without one.
    synced: AtomicBool,
    /// The TLS listeners' certificates, for `/v1/state`.
    cert_stores: OnceLock<Vec<Arc<CertStore>>>,
    /// The settings only a restart applies, as the gateway started with them.
    started_with: restart::RestartOnly,
}

/// The first generation of a process: the start time in microseconds since the Unix epoch, or
/// one past the generation the state file was written at if that is higher (a clock set back).
/// Every change adds one and takes well over a microsecond, so a process never reaches the
/// start time of the next one: a generation is never given out twice, across restarts too,
/// and a controller's `If-Match` from before a restart is stale after it. (Microseconds stay
/// below 2^53, exact in a JSON number read as a double, until the year 2255.)
fn first_generation(saved: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    now.max(saved.saturating_add(1)).max(1)
}

/// Sets a state file that cannot be restored aside (see [`persist::set_aside`]) and says
/// where it went, for the log and `/v1/state`; a file that is not there is left alone.
fn keep_aside(path: &Path) -> String {
    if !path.exists() {
        return String::new();
    }
    match persist::set_aside(path) {
        Ok(aside) => format!("the file was kept as {}", aside.display()),
        Err(e) => e,
    }
}

impl Control {
    /// Builds the first runtime from `file` plus the overlay restored from the state file (if the
    /// config names one and it is readable), at the process's first generation (see
    /// [`first_generation`]).
    pub fn new(file: Config, config_path: Option<PathBuf>) -> Arc<Self> {
        let state_file = file.raw.admin.state_file.as_ref().map(PathBuf::from);
        // Not ready until the cluster's objects have been read once.
        let external = file.kubernetes.as_ref().map(|_| External::default());
        let synced = external.is_none();
        let (saved, state_file_error) = match &state_file {
            Some(p) => match persist::load(p) {
                Ok(o) => (o.unwrap_or_default(), None),
                Err(e) => {
                    let e = format!("{e}; {}", keep_aside(p));
                    tracing::error!(file = %p.display(), error = %e, "cannot restore API overrides; starting from the config file");
                    (persist::Saved::default(), Some(e))
                }
            },
            None => (persist::Saved::default(), None),
        };
        let first = first_generation(saved.generation);
        let overlay = saved.overlay;
        let (overlay, effective, dropped) = match effective_config(&file.raw, &overlay) {
            Ok((eff, dropped)) => {
                let dropped: Vec<Dropped> = dropped
                    .into_iter()
                    .map(|d| Dropped {
                        generation: first,
                        ..d
                    })
                    .collect();
                (prune(overlay, &dropped), eff, dropped)
            }
            Err(errors) => {
                let kept = state_file.as_deref().map(keep_aside).unwrap_or_default();
                tracing::error!(
                    ?errors,
                    kept,
                    "restored API overrides do not validate; starting from the config file"
                );
                (Overlay::default(), file.clone(), Vec::new())
            }
        };
        for d in &dropped {
            tracing::warn!(route = %d.route, what = ?d.what, reason = %d.reason, "restored override dropped");
        }
        let runtime: SharedRuntime = Arc::new(arc_swap::ArcSwap::from_pointee(config::compile(
            &effective, None, first,
        )));
        let started_with = restart::RestartOnly::of(&file.raw);
        Arc::new(Control {
            runtime,
            state: Mutex::new(ControlState {
                file: file.raw,
                overlay,
                effective,
                dropped,
                last_reload: None,
                state_file_error,
                external,
            }),
            file_hash: AtomicU64::new(
                config_path
                    .as_deref()
                    .and_then(config::file_hash)
                    .unwrap_or(0),
            ),
            config_path,
            state_file,
            draining: AtomicBool::new(false),
            synced: AtomicBool::new(synced),
            cert_stores: OnceLock::new(),
            started_with,
        })
    }

    /// The live runtime, for the data plane.
    pub fn runtime(&self) -> &SharedRuntime {
        &self.runtime
    }

    /// The generation now live (the live snapshot's).
    pub fn generation(&self) -> u64 {
        self.runtime.load().generation
    }

    /// File reloads so far: (accepted, rejected), as `splitgate_config_reloads_total` counts them.
    pub fn reload_counts(&self) -> (u64, u64) {
        let reloads = &self.runtime.load().hub.own.reloads;
        let count = |result| reloads.get_or_create(&ResultLabel { result }).get();
        (count("ok"), count("error"))
    }

    /// Hash of the config file bytes last read (see `config::content_hash`).
    pub fn file_hash(&self) -> u64 {
        self.file_hash.load(Ordering::SeqCst)
    }

    /// The config file this control plane reloads, if any.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config_path.as_ref()
    }

    /// Shows the TLS listeners' certificates in `/v1/state` (set once, at start).
    pub fn attach_cert_stores(&self, stores: &[Arc<CertStore>]) {
        let _ = self.cert_stores.set(stores.to_vec());
    }

    /// The TLS listeners' certificates.
    pub fn cert_stores(&self) -> &[Arc<CertStore>] {
        self.cert_stores.get().map_or(&[], Vec::as_slice)
    }

    /// Marks the gateway as shutting down (readiness turns 503).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether the routes from outside the file (if any) are complete: readiness waits.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Serves `external` beside the file's routes: one atomic swap, unless nothing served
    /// changes. A set that does not validate with the file changes nothing and says why.
    pub async fn set_external(&self, external: External) -> Result<u64, Vec<FieldError>> {
        let mut st = self.state.lock().await;
        let started = Instant::now();
        let base = external::merged(&st.file, Some(&external));
        let (effective, dropped) = validated(base, st.overlay.clone()).await.inspect_err(|errors| {
            tracing::error!(?errors, "routes from Kubernetes do not validate with the config file; the running config stays");
        })?;
        self.synced.store(external.synced, Ordering::SeqCst);
        let same = effective.raw == st.effective.raw;
        st.external = Some(external);
        if same {
            return Ok(self.generation());
        }
        let overlay = prune(st.overlay.clone(), &dropped);
        Ok(self
            .commit(&mut st, effective, overlay, dropped, started)
            .await)
    }

    /// Gives subsets of the outside services new endpoints (with their pod labels and
    /// workloads), routes unchanged: the fast path for pod churn. Only the services touched are
    /// rebuilt; the rest of the snapshot is shared. Returns the generation live after it, or
    /// `None`, changing nothing, when an update names a subset that is not served from outside
    /// or does not validate: the caller then sets the whole set with
    /// [`set_external`](Self::set_external).
    pub async fn update_external_subsets(
        &self,
        updates: &[SubsetUpdate],
        last_event: Option<std::time::Instant>,
        error: Option<String>,
    ) -> Option<u64> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let ext = st.external.as_mut()?;
        // Everything is checked before anything changes.
        let mut checked = Vec::new();
        for u in updates {
            let current = ext.services.get(&u.service)?.subsets.get(&u.subset)?;
            if *current == u.value {
                continue;
            }
            let i = st
                .effective
                .services
                .binary_search_by(|s| s.name.as_str().cmp(&u.service))
                .ok()?;
            let j = st.effective.services[i]
                .subsets
                .binary_search_by(|s| s.name.as_str().cmp(&u.subset))
                .ok()?;
            let spec = config::validate::validate_subset(&u.service, &u.subset, &u.value).ok()?;
            checked.push((u, i, j, spec));
        }
        ext.last_event = last_event;
        ext.error = error;
        if checked.is_empty() {
            return Some(self.generation());
        }
        let mut changed = Vec::new();
        for (u, i, j, spec) in checked {
            let raw = st.effective.raw.services.get_mut(&u.service)?;
            *raw.subsets.get_mut(&u.subset)? = u.value.clone();
            *ext.services
                .get_mut(&u.service)?
                .subsets
                .get_mut(&u.subset)? = u.value.clone();
            st.effective.services[i].subsets[j] = spec;
            changed.push(i);
        }
        changed.sort_unstable();
        changed.dedup();
        Some(self.swap_runtime(|previous, generation| {
            config::compile::recompile_services(&st.effective, previous, &changed, generation)
        }))
    }

    /// Replaces routes from outside the file that keep their names and hosts, services
    /// unchanged: the fast path for a VirtualService's weight step. Only those routes are
    /// validated and compiled; the host index, the other routes and every service are shared
    /// with the snapshot before. Returns the generation live after it, or `None`, changing
    /// nothing, when an update does not fit that path (an unknown route, other hosts, API
    /// overrides on it, or a route that does not validate against the services): the caller
    /// then sets the whole set with [`set_external`](Self::set_external).
    pub async fn update_external_routes(
        &self,
        updates: &[RouteUpdate],
        last_event: Option<std::time::Instant>,
        error: Option<String>,
    ) -> Option<u64> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let ext = st.external.as_mut()?;
        // Everything is checked before anything changes.
        let mut checked = Vec::new();
        for u in updates {
            let at = ext.routes.iter().position(|r| r.name == u.route.name)?;
            let current = &ext.routes[at];
            if current.hosts != u.route.hosts || st.overlay.routes.contains_key(&u.route.name) {
                return None;
            }
            let i = st
                .effective
                .raw
                .routes
                .iter()
                .position(|r| r.name == u.route.name)?;
            let changed = *current != u.route;
            let spec = if changed {
                let effective = &st.effective;
                let reweighed = config::validate::reweigh(
                    &effective.raw.routes[i],
                    &u.route,
                    &effective.routes[i],
                );
                match reweighed {
                    Some(spec) => Some((spec, true)),
                    None => Some((
                        config::validate::validate_route(i, &u.route, &effective.services).ok()?,
                        false,
                    )),
                }
            } else {
                None
            };
            checked.push((u, at, i, spec));
        }
        ext.last_event = last_event;
        ext.error = error;
        let mut changed = Vec::new();
        for (u, at, i, spec) in checked {
            if let Some(entry) = ext.objects.as_array_mut().and_then(|objects| {
                objects.iter_mut().find(|o| {
                    ["kind", "namespace", "name"]
                        .iter()
                        .all(|f| o.get(f) == u.object.get(f))
                })
            }) {
                *entry = u.object.clone();
            }
            let Some((spec, weights_only)) = spec else {
                continue;
            };
            ext.routes[at] = u.route.clone();
            let old = std::mem::replace(&mut st.effective.raw.routes[i], u.route.clone());
            st.effective.routes[i] = spec;
            changed.push((i, old, weights_only));
        }
        if changed.is_empty() {
            return Some(self.generation());
        }
        let same_destinations = changed.iter().all(|c| c.2);
        let replaced: Vec<(usize, &RawRoute)> = changed.iter().map(|(i, r, _)| (*i, r)).collect();
        Some(self.swap_runtime(|previous, generation| {
            config::compile::recompile_routes(
                &st.effective,
                previous,
                &replaced,
                same_destinations,
                generation,
            )
        }))
    }

    /// The drain settings of the config as last accepted.
    pub async fn drain_spec(&self) -> config::validate::DrainSpec {
        self.state.lock().await.effective.drain
    }

    /// The config file as last accepted.
    pub async fn file_config(&self) -> RawConfig {
        self.state.lock().await.file.clone()
    }

    /// Notes that the outside source is not current (or is again), without changing routes.
    pub async fn set_external_error(&self, error: Option<String>) {
        if let Some(ext) = self.state.lock().await.external.as_mut() {
            ext.error = error;
        }
    }

    /// Applies a change to the overlay: `edit` gets the overlay and the file config and returns
    /// the route it touched (checked before anything is committed).
    pub async fn change<F>(&self, if_match: Option<u64>, edit: F) -> Result<u64, ChangeError>
    where
        F: FnOnce(&mut Overlay, &RawConfig) -> Result<String, ChangeError>,
    {
        let mut st = self.state.lock().await;
        self.check_generation(if_match)?;
        let started = Instant::now();
        let mut overlay = st.overlay.clone();
        // The file alone needs no copy.
        let base = match &st.external {
            None => Cow::Borrowed(&st.file),
            Some(ext) => Cow::Owned(external::merged(&st.file, Some(ext))),
        };
        let route = edit(&mut overlay, &base)?;
        if let Some(owner) = st.external.as_ref().and_then(|e| e.owners.get(&route)) {
            return Err(ChangeError::Owned {
                route,
                owner: owner.clone(),
            });
        }
        overlay.routes.retain(|_, ro| !ro.is_empty());
        if let Some((i, rules, spec)) =
            reweighed(&st.effective, &st.overlay, &base, &overlay, &route)
        {
            // Durable first: a change the state file does not hold is not made.
            self.persist_change(&mut st, &overlay).await?;
            // Only weights changed: those rules are rebuilt, and nothing else is, nor copied.
            let raw = &mut st.effective.raw.routes[i];
            let old: Vec<(usize, RawRule)> = rules
                .into_iter()
                .map(|(k, rule)| (k, std::mem::replace(&mut raw.http[k], rule)))
                .collect();
            st.effective.routes[i] = spec;
            st.overlay = overlay;
            let generation = self.swap_runtime(|previous, generation| {
                config::compile::reweigh_route(&st.effective, previous, i, &old, generation)
            });
            self.count_compile(started);
            return Ok(generation);
        }
        overlay::check(&base, &overlay, &route)?;
        let base = base.into_owned();
        // The overlay check above catches what the API can get wrong; this is the backstop.
        let (effective, dropped) =
            validated(base, overlay.clone())
                .await
                .map_err(|errors| ChangeError::Invalid {
                    field: "body".into(),
                    message: format!(
                        "the change does not validate: {}",
                        errors
                            .first()
                            .map(|e| e.message.as_str())
                            .unwrap_or("unknown error")
                    ),
                })?;
        self.persist_change(&mut st, &overlay).await?;
        let generation = self
            .commit(&mut st, effective, overlay, dropped, started)
            .await;
        Ok(generation)
    }

    /// Re-reads the config file and applies it with the overlay on top. A file that fails to
    /// parse or validate changes nothing.
    pub async fn reload(&self, if_match: Option<u64>) -> Result<ReloadOutcome, ChangeError> {
        let outcome = self.reload_file(if_match, false).await?;
        Ok(outcome.expect("a reload not asked to skip an unchanged file makes one"))
    }

    /// [`Control::reload`], when the file's bytes differ from the ones read last (the file
    /// watcher's call); `None` when they do not. Compared under the lock that a reload holds, so
    /// an edit that `POST /v1/reload` loaded meanwhile is not loaded a second time.
    pub async fn reload_if_changed(&self) -> Result<Option<ReloadOutcome>, ChangeError> {
        self.reload_file(None, true).await
    }

    async fn reload_file(
        &self,
        if_match: Option<u64>,
        if_changed: bool,
    ) -> Result<Option<ReloadOutcome>, ChangeError> {
        let Some(path) = self.config_path.clone() else {
            return Err(ChangeError::Invalid {
                field: "config".into(),
                message: "this gateway was not started from a file".into(),
            });
        };
        let mut st = self.state.lock().await;
        self.check_generation(if_match)?;
        if if_changed {
            let file = path.clone();
            let now = off_thread(move || config::file_hash(&file)).await;
            // An unreadable file is left for the next change or poll.
            if now.is_none_or(|h| h == self.file_hash()) {
                return Ok(None);
            }
        }
        let started = Instant::now();
        let (external, overlay, file) = (st.external.clone(), st.overlay.clone(), path.clone());
        let (hash, result) = off_thread(move || {
            let (hash, loaded) = config::load_hashed(&file);
            let result = loaded.map_err(|e| e.errors).and_then(|file| {
                let base = external::merged(&file.raw, external.as_ref());
                let (effective, dropped) = effective_config(&base, &overlay)?;
                Ok((file, effective, dropped))
            });
            (hash, result)
        })
        .await;
        if let Some(h) = hash {
            self.file_hash.store(h, Ordering::SeqCst);
        }
        match result {
            Ok((file, effective, dropped)) => {
                let restart_required = self.started_with.differences(&file.raw);
                if !restart_required.is_empty() {
                    tracing::warn!(
                        restart_required = %serde_json::json!(restart_required),
                        "these settings changed in the config file and take effect at the next restart; the rest is applied now"
                    );
                }
                st.file = file.raw;
                let overlay = prune(st.overlay.clone(), &dropped);
                for d in &dropped {
                    tracing::warn!(route = %d.route, what = ?d.what, reason = %d.reason, "API override dropped by reload");
                }
                let pruned = overlay != st.overlay;
                let generation = self
                    .commit(&mut st, effective, overlay, dropped, started)
                    .await;
                st.last_reload = Some(ReloadStatus {
                    at: SystemTime::now(),
                    errors: Vec::new(),
                });
                self.count_reload("ok");
                if pruned {
                    self.persist(&mut st).await;
                }
                tracing::info!(generation, "config file reloaded");
                let dropped = st
                    .dropped
                    .iter()
                    .filter(|d| d.generation == generation)
                    .cloned()
                    .collect();
                Ok(Some(ReloadOutcome {
                    generation,
                    dropped,
                    restart_required,
                }))
            }
            Err(errors) => {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(file = %path.display(), errors = %serde_json::json!(lines), "config file rejected; the running config stays");
                st.last_reload = Some(ReloadStatus {
                    at: SystemTime::now(),
                    errors: lines,
                });
                self.count_reload("error");
                Err(ChangeError::Config(errors))
            }
        }
    }

    /// A consistent view for `GET /v1/state`.
    pub async fn state(&self) -> state::StateView {
        let st = self.state.lock().await;
        state::view(self, &st)
    }

    /// Counts a new snapshot's validation and compile time, from `started`.
    fn count_compile(&self, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.runtime.load().hub.own.compile_seconds.observe(seconds);
    }

    fn count_reload(&self, result: &'static str) {
        self.runtime
            .load()
            .hub
            .own
            .reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    fn check_generation(&self, if_match: Option<u64>) -> Result<(), ChangeError> {
        let current = self.generation();
        match if_match {
            Some(expected) if expected != current => Err(ChangeError::Stale { current, expected }),
            _ => Ok(()),
        }
    }

    /// Builds the next snapshot from the live one with `build` (given the next generation) and
    /// makes it live; returns that generation. Requests that start after this returns use it;
    /// requests in flight finish on the snapshot they started with.
    fn swap_runtime(&self, build: impl FnOnce(&Runtime, u64) -> Runtime) -> u64 {
        let previous = self.runtime.load_full();
        let generation = previous.generation + 1;
        self.runtime.store(Arc::new(build(&previous, generation)));
        generation
    }

    /// Builds the runtime for `effective`, off the serving threads, and makes it live; counts
    /// the time since `started` (validation included) in `splitgate_config_compile_seconds`.
    /// The caller holds the state lock, so no other snapshot is made meanwhile.
    async fn commit(
        &self,
        st: &mut ControlState,
        effective: Config,
        overlay: Overlay,
        dropped: Vec<Dropped>,
        started: Instant,
    ) -> u64 {
        let previous = self.runtime.load_full();
        let generation = previous.generation + 1;
        let (effective, runtime) = off_thread(move || {
            let runtime = config::compile(&effective, Some(&previous), generation);
            (effective, runtime)
        })
        .await;
        self.runtime.store(Arc::new(runtime));
        self.count_compile(started);
        st.effective = effective;
        st.overlay = overlay;
        // Drops are history: they stay listed (the latest ones) until later changes push them out.
        st.dropped
            .extend(dropped.into_iter().map(|d| Dropped { generation, ..d }));
        let excess = st.dropped.len().saturating_sub(MAX_DROPPED_LISTED);
        st.dropped.drain(..excess);
        generation
    }

    /// Writes the overlay after a reload (which does not fail for it: the file is the source of
    /// truth, and a restart prunes the same overrides again).
    async fn persist(&self, st: &mut ControlState) {
        let Some(path) = &self.state_file else { return };
        st.state_file_error = persist::save(path, &st.overlay, self.generation())
            .await
            .err();
        if let Some(e) = &st.state_file_error {
            tracing::error!(file = %path.display(), error = %e, "cannot persist API overrides");
        }
    }

    /// Writes `overlay` with the generation the change about to be made will have, before it
    /// is made: a change that could not be written is refused, and nothing changes.
    async fn persist_change(
        &self,
        st: &mut ControlState,
        overlay: &Overlay,
    ) -> Result<(), ChangeError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        match persist::save(path, overlay, self.generation() + 1).await {
            Ok(()) => {
                st.state_file_error = None;
                Ok(())
            }
            Err(message) => {
                tracing::error!(file = %path.display(), error = %message, "cannot persist API overrides; the change is refused");
                Err(ChangeError::Persist { message })
            }
        }
    }
}

/// A route's index, its rules that change (with their indexes), and the route compiled with
/// them.
type Reweighed = (usize, Vec<(usize, RawRule)>, config::validate::RouteSpec);

/// When the API change to `route` (the overlay going from `before` to `after`) changes only
/// rule weights of `effective`: the route's index, the rules that change with their indexes,
/// and the route compiled with them, the other rules shared. Costs what those rules cost, not
/// what the route does. `None` sends the change through the full path (which also gives the
/// errors): a route with no override before or after, header or mirror routes on it, an
/// override that does not apply, or a change to more than weights (a subset added).
fn reweighed<'a>(
    effective: &Config,
    before: &'a Overlay,
    base: &RawConfig,
    after: &'a Overlay,
    route: &str,
) -> Option<Reweighed> {
    let i = effective.raw.routes.iter().position(|r| r.name == route)?;
    let current = &effective.raw.routes[i];
    // A route with overrides has all its rules named (`rule-<index>` when the file names
    // none); one without has the file's names. So a route going from none to some, or back,
    // fits here only when the file names every rule.
    let none = RouteOverlay::default();
    let named = current.http.iter().all(|r| r.name.is_some());
    let overrides = |o: &'a Overlay| o.routes.get(route).or(named.then_some(&none));
    let (old, new) = (overrides(before)?, overrides(after)?);
    let plain = |ro: &RouteOverlay| ro.header_routes.is_empty() && ro.mirror_routes.is_empty();
    if !plain(old) || !plain(new) {
        return None;
    }
    let base_route = base.routes.iter().find(|r| r.name == route)?;
    if current.http.len() != base_route.http.len() {
        return None;
    }
    let changed: std::collections::BTreeSet<&String> = old
        .weights
        .keys()
        .chain(new.weights.keys())
        .filter(|rule| old.weights.get(*rule) != new.weights.get(*rule))
        .collect();
    let mut rules = Vec::new();
    for name in changed {
        let k = current
            .http
            .iter()
            .position(|r| r.name.as_ref() == Some(name))?;
        let mut rule = base_route.http[k].clone();
        rule.name.get_or_insert_with(|| format!("rule-{k}"));
        if let Some(weights) = new.weights.get(name) {
            let one = RawRoute {
                name: route.to_string(),
                hosts: Vec::new(),
                http: vec![rule],
                upgrades: None,
            };
            let ro = RouteOverlay {
                weights: [(name.clone(), weights.clone())].into(),
                ..RouteOverlay::default()
            };
            let (mut applied, failed) = overlay::apply_route(base, &one, &ro);
            if !failed.is_empty() {
                return None;
            }
            rule = applied.http.pop()?;
        }
        rules.push((k, rule));
    }
    let changes: Vec<_> = rules
        .iter()
        .map(|(k, rule)| (*k, &current.http[*k], rule))
        .collect();
    let spec = config::validate::reweigh_rules(&effective.routes[i], &changes)?;
    Some((i, rules, spec))
}

/// Runs `work` on the blocking pool, off the threads that serve requests: validating and
/// compiling a large config takes milliseconds, and a request queued behind it would wait.
async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`effective_config`], off the serving threads.
async fn validated(
    file: RawConfig,
    overlay: Overlay,
) -> Result<(Config, Vec<Dropped>), Vec<FieldError>> {
    off_thread(move || effective_config(&file, &overlay)).await
}

/// The file config with the overlay applied, validated.
fn effective_config(
    file: &RawConfig,
    overlay: &Overlay,
) -> Result<(Config, Vec<Dropped>), Vec<FieldError>> {
    let (raw, dropped) = overlay::apply(file, overlay);
    Ok((config::validate(&raw)?, dropped))
}

/// The overlay without the overrides that were dropped.
fn prune(mut overlay: Overlay, dropped: &[Dropped]) -> Overlay {
    for d in dropped {
        let Some(ro) = overlay.routes.get_mut(&d.route) else {
            continue;
        };
        match &d.what {
            Overridden::AllOverrides => *ro = RouteOverlay::default(),
            Overridden::Weights(rule) => {
                ro.weights.remove(rule);
            }
            Overridden::HeaderRoute(name) => ro.header_routes.retain(|h| &h.name != name),
            Overridden::MirrorRoute(name) => ro.mirror_routes.retain(|m| &m.name != name),
        }
    }
    overlay.routes.retain(|_, ro| !ro.is_empty());
    overlay
}
