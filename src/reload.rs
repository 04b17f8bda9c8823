//! Hot reload and the control plane's lifecycle: read → parse → validate → build → one atomic
//! swap, triggered by file changes (the config's directory is watched, so rename-over and
//! ConfigMap symlink swaps are seen), `SIGHUP` (in `main.rs`) and `POST /api/reload`.
//!
//! [`Control`] owns what the control plane runs: prober tasks (one per live backend), drains of
//! removed backends, discover sources, and the config identity (generation, sha256, last
//! error). A file that does not load changes nothing. Every snapshot install, a reload's or a
//! DNS change's, happens under one more lock together with the prober changes it calls for, so
//! that neither loses the other's update.
//!
//! A file whose bytes did not change is not reloaded when the watcher sees it; an explicit
//! reload (`SIGHUP`, `POST /api/reload`) loads it anyway, so that static `host:port` backend
//! addresses are resolved again.
//!
//! Nothing a config names may stall the pipeline (issue 10, item 2): files are read bounded and
//! never block (`files`), the reading, validating and certificate loading run off the control
//! runtime, and a reload that has not finished within [`RELOAD_TIMEOUT`] fails, leaving the way
//! free for the next. Each reload draws a ticket; a newer trigger supersedes a reload still
//! validating (its result is discarded, as the newer one reads the file as it is now, and its
//! caller gets the newer one's outcome), and applying is serialised by an async mutex held only
//! for the swap.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::{Config, ConfigError, HostLookup, SystemLookup};
use crate::digest::sha256_hex;
use crate::discover::{Discovery, Resolution};
use crate::snapshot::{Installed, Shared, Snapshot};
use crate::systemd::{notify_systemd, SystemdState};
use crate::tls::{CertStore, Prepared};

/// Quiet time after the last file event before reloading: editors and config tools write in
/// bursts (truncate, write, rename, chmod).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A burst never delays a reload longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_millis(600);
/// A reload that has not read, validated and prepared its config within this fails (the work
/// left over, such as a resolver that does not answer, finishes in the background and is
/// discarded).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The identity of the running config and the last failed load, for `GET /api/config`.
#[derive(Debug, Clone)]
pub struct ConfigStatus {
    /// The config file, if any.
    pub path: Option<PathBuf>,
    /// Generation of the running config (1 at start; +1 per applied reload).
    pub generation: u64,
    /// Hex sha256 of the running config file's bytes ("" without a file).
    pub sha256: String,
    /// When the running config was loaded.
    pub loaded_at: SystemTime,
    /// The last reload that failed, while the file on disk still does not load.
    pub last_error: Option<ReloadFailure>,
    /// Reloads applied since start.
    pub reloads_ok: u64,
    /// Reloads that failed since start.
    pub reloads_failed: u64,
    /// Settings of the running config file that differ from those the process started with
    /// and need a restart (`server.listen`, `server.tls.listen`, `admin.listen`,
    /// `server.worker_threads`, `server.max_connections`); empty when there are none. Set by
    /// every applied reload: the started values keep running meanwhile.
    pub restart_required: Vec<&'static str>,
}

/// A failed reload: when, what triggered it, and every error.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    /// When it failed.
    pub at: SystemTime,
    /// `file`, `signal`, or `api`.
    pub trigger: &'static str,
    /// Every error, with file:line:col.
    pub errors: Vec<ConfigError>,
}

/// The control plane of a running syncgate.
#[derive(Debug)]
pub struct Control {
    /// State shared with the proxy threads.
    pub shared: Arc<Shared>,
    token: CancellationToken,
    tasks: TaskTracker,
    probers: Mutex<HashMap<u64, CancellationToken>>,
    status: Mutex<ConfigStatus>,
    certs: Option<Arc<CertStore>>,
    /// The ticket of the newest reload asked for: an older one still validating is superseded.
    requested: AtomicU64,
    /// Held while a reload applies its result (never while it reads or validates).
    apply_lock: tokio::sync::Mutex<()>,
    /// The newest reload that ran to its end (not superseded): its ticket and outcome, for the
    /// callers of the reloads it superseded.
    completed: watch::Sender<(u64, Outcome)>,
    /// [`RELOAD_TIMEOUT`] in milliseconds (shorter in tests; an atomic because the control
    /// plane is shared by its tasks from the start).
    reload_timeout_ms: AtomicU64,
    /// Held across every snapshot install and the prober changes that follow it (a reload's,
    /// or a discover source's), so that a reload and a DNS change never lose each other's
    /// update. Never held across an await.
    install_lock: Mutex<()>,
    discovery: Discovery,
    /// Resolves static `host:port` backend addresses at each reload.
    lookup: Arc<dyn HostLookup>,
}

/// A reload's outcome: the generation running after it, or every error.
type Outcome = Result<u64, Vec<ConfigError>>;

/// Why a reload applied nothing.
enum Failed {
    /// The file, or what it names, did not load: every error.
    Errors(Vec<ConfigError>),
    /// A newer reload was asked for while this one validated (one error saying so).
    Superseded(Vec<ConfigError>),
}

/// What a reload read and prepared, off the control runtime.
enum Loaded {
    /// The file's bytes equal the running config's (and the reload did not ask to load it
    /// anyway); maybe a new certificate for it.
    Unchanged(Option<Prepared>),
    /// A new config, its sha256, and its certificate when that changed.
    New(Box<Config>, String, Option<Prepared>),
}

impl Control {
    /// A control plane for `shared`, whose first config came from `path` with these bytes.
    /// Starts a prober per backend and the config's discover sources.
    pub fn new(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        file_bytes: Option<&[u8]>,
        certs: Option<Arc<CertStore>>,
        token: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Control> {
        Control::create(
            shared,
            path,
            file_bytes,
            certs,
            token,
            tasks,
            Arc::new(SystemLookup),
        )
    }

    /// [`Control::new`], resolving static host names at reloads with `lookup`.
    fn create(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        file_bytes: Option<&[u8]>,
        certs: Option<Arc<CertStore>>,
        token: CancellationToken,
        tasks: TaskTracker,
        lookup: Arc<dyn HostLookup>,
    ) -> Arc<Control> {
        let (discovery, resolutions) = Discovery::new();
        let control = Arc::new(Control {
            status: Mutex::new(ConfigStatus {
                path,
                generation: shared.snapshot().generation,
                sha256: file_bytes.map(sha256_hex).unwrap_or_default(),
                loaded_at: SystemTime::now(),
                last_error: None,
                reloads_ok: 0,
                reloads_failed: 0,
                restart_required: Vec::new(),
            }),
            shared,
            token,
            tasks,
            certs,
            probers: Mutex::new(HashMap::new()),
            requested: AtomicU64::new(0),
            apply_lock: tokio::sync::Mutex::new(()),
            completed: watch::Sender::new((0, Ok(0))),
            reload_timeout_ms: AtomicU64::new(RELOAD_TIMEOUT.as_millis() as u64),
            install_lock: Mutex::new(()),
            discovery,
            lookup,
        });
        control.sync_probers(&control.shared.snapshot(), &[]);
        control.discovery.reconcile(
            &control.shared.snapshot().config,
            &control.tasks,
            &control.token,
        );
        control
            .tasks
            .spawn(apply_resolutions(control.clone(), resolutions));
        control.tasks.spawn(crate::availability::watch(
            control.shared.clone(),
            control.token.clone(),
        ));
        control
    }

    /// [`RELOAD_TIMEOUT`], or the shorter bound a test set.
    fn reload_timeout(&self) -> Duration {
        Duration::from_millis(self.reload_timeout_ms.load(Ordering::Relaxed))
    }

    /// The root cancellation token of the control plane.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker owning every control-plane task.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The discover sources of the running config.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Holds the install lock (see the field).
    fn serialise_installs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.install_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a discover source's resolution and, when its addresses changed, installs the
    /// running config with the new members: new addresses start `pending` with a prober,
    /// vanished ones drain, the other pools are left as they are.
    fn resolved(&self, resolution: Resolution) {
        let _serial = self.serialise_installs();
        let started = std::time::Instant::now();
        if !self.discovery.record(resolution, &self.shared.metrics) {
            return;
        }
        let running = self.shared.snapshot();
        let installed = self
            .shared
            .install_members(self.discovery.members(&running.config));
        self.started(&installed);
        self.shared
            .metrics
            .discovery_install
            .observe(started.elapsed());
    }

    /// Probers and drains for what an install changed.
    fn started(&self, installed: &Installed) {
        self.sync_probers(&installed.snapshot, &installed.removed);
    }

    /// The running config's identity and the last error.
    pub fn status(&self) -> ConfigStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the config file and the TLS certificate. Returns the generation now running
    /// (unchanged when the file's bytes are identical), or every error (and the running config
    /// and certificate stay: a config whose certificate does not load is not applied). A reload
    /// that takes longer than [`RELOAD_TIMEOUT`] fails. One superseded by a newer trigger while
    /// it validated applies nothing and answers with the newer reload's outcome (or, should
    /// that not come within [`RELOAD_TIMEOUT`], an error saying it was superseded); it is not
    /// counted as a failure.
    pub async fn reload(&self, trigger: &'static str) -> Outcome {
        let ticket = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        notify_systemd(SystemdState::Reloading);
        let result = self.reload_ticket(trigger, ticket).await;
        let result = match result {
            Ok(generation) => Ok(generation),
            Err(Failed::Superseded(errors)) => {
                tracing::info!(trigger, "reload superseded by a newer one");
                let mut newer = self.completed.subscribe();
                let waited = tokio::time::timeout(
                    self.reload_timeout(),
                    newer.wait_for(|(t, _)| *t > ticket),
                )
                .await;
                let newer_outcome = waited.ok().and_then(Result::ok).map(|done| done.1.clone());
                newer_outcome.unwrap_or(Err(errors))
            }
            Err(Failed::Errors(errors)) => {
                let (shown, more) = crate::config::shown_errors(&errors);
                for err in shown {
                    tracing::error!(trigger, error = %err, "reload failed; the running config stays");
                }
                if more > 0 {
                    tracing::error!(trigger, more, "reload failed with more errors than shown");
                }
                self.record_failure(trigger, errors.clone());
                Err(errors)
            }
        };
        if ticket > self.completed.borrow().0 {
            self.completed.send_if_modified(|done| {
                // Checked again under the channel's lock: outcomes only move forward.
                let newer = ticket > done.0;
                if newer {
                    *done = (ticket, result.clone());
                }
                newer
            });
        }
        notify_systemd(SystemdState::Ready);
        result
    }

    /// Starts a reload as a task of the control plane and returns at once: the file watcher
    /// and `SIGHUP` do not wait for one reload before they can trigger the next.
    pub fn spawn_reload(self: &Arc<Self>, trigger: &'static str) {
        let control = self.clone();
        self.tasks.spawn(async move {
            // Errors are logged and kept for `GET /api/config` by the reload itself.
            let _ = control.reload(trigger).await;
        });
    }

    fn record_failure(&self, trigger: &'static str, errors: Vec<ConfigError>) {
        self.shared
            .metrics
            .reloads_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.reloads_failed += 1;
        st.last_error = Some(ReloadFailure {
            at: SystemTime::now(),
            trigger,
            errors,
        });
    }

    async fn reload_ticket(&self, trigger: &'static str, ticket: u64) -> Result<u64, Failed> {
        let Some(path) = self.status().path else {
            return Err(Failed::Errors(vec![ConfigError {
                file: "<config>".into(),
                line: 1,
                col: 1,
                message: "syncgate was started without a config file; nothing to reload".into(),
            }]));
        };
        let at_path = |message: String| ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message,
        };
        // The watcher reloads only changed bytes; an explicit trigger loads the file anyway,
        // resolving static host names again.
        let explicit = trigger != "file";
        let loaded =
            match tokio::time::timeout(self.reload_timeout(), self.load(&path, explicit)).await {
                Ok(loaded) => loaded,
                Err(_) => Err(vec![at_path(format!(
                    "the reload did not finish within {} (reading, validating or resolving the \
                 config); the running config stays",
                    humantime::format_duration(self.reload_timeout())
                ))]),
            };
        let _serial = self.apply_lock.lock().await;
        if self.requested.load(Ordering::Acquire) != ticket {
            return Err(Failed::Superseded(vec![at_path(
                "superseded by a newer reload, which reads the file as it is now".into(),
            )]));
        }
        match loaded.map_err(Failed::Errors)? {
            Loaded::New(config, sha, cert)
                if !explicit || self.changes_something(&config, &sha) =>
            {
                let generation = self.apply(*config, sha, trigger);
                if let Some(cert) = cert {
                    self.install_certs(cert);
                }
                Ok(generation)
            }
            Loaded::Unchanged(cert) | Loaded::New(_, _, cert) => {
                tracing::info!(
                    trigger,
                    generation = self.status().generation,
                    "config unchanged"
                );
                // The file loads again (it holds the running config's bytes): an earlier
                // failure no longer describes it.
                self.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = None;
                if let Some(cert) = cert {
                    self.install_certs(cert);
                }
                Ok(self.status().generation)
            }
        }
    }

    /// Whether a config loaded by an explicit reload differs from the running one: its bytes,
    /// or (same bytes) the addresses its static host names resolve to now.
    fn changes_something(&self, config: &Config, sha: &str) -> bool {
        if sha != self.status().sha256 {
            return true;
        }
        let running = self.shared.snapshot();
        running.config.pools.len() != config.pools.len()
            || running
                .config
                .pools
                .iter()
                .zip(&config.pools)
                .any(|(a, b)| a.backends != b.backends)
    }

    fn install_certs(&self, cert: Prepared) {
        if let Some(store) = &self.certs {
            store.install(cert);
        }
    }

    /// Reads and validates the file, and loads the certificate it names, off the control
    /// runtime: validation may resolve backend host names, and neither a slow resolver nor a
    /// large file may stall the probers, the admin API or signal handling. Bytes equal to the
    /// running config's are [`Loaded::Unchanged`] unless `always`.
    async fn load(&self, path: &Path, always: bool) -> Result<Loaded, Vec<ConfigError>> {
        let owned = path.to_path_buf();
        let lookup = self.lookup.clone();
        let running_sha = self.status().sha256;
        let running = self.shared.snapshot();
        let certs = self.certs.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Loaded, Vec<ConfigError>> {
            let bytes = Config::read(&owned).map_err(|e| e.errors())?;
            let sha = sha256_hex(&bytes);
            if !always && sha == running_sha {
                let cert = prepare_certs(certs.as_deref(), running.config.server.tls.as_ref())?;
                return Ok(Loaded::Unchanged(cert));
            }
            let config =
                Config::parse_bytes_with(&bytes, Some(&owned), &*lookup).map_err(|e| e.errors())?;
            let cert = prepare_certs(certs.as_deref(), config.server.tls.as_ref())?;
            Ok(Loaded::New(Box::new(config), sha, cert))
        })
        .await;
        loaded.unwrap_or_else(|e| {
            Err(vec![ConfigError {
                file: path.display().to_string(),
                line: 1,
                col: 1,
                message: format!("config validation failed: {e}"),
            }])
        })
    }

    fn apply(&self, mut config: Config, sha: String, trigger: &'static str) -> u64 {
        let old = self.shared.snapshot();
        let restart_required = keep_listeners(&old.config, &mut config);
        if !restart_required.is_empty() {
            tracing::warn!(
                trigger,
                settings = ?restart_required,
                "these settings need a restart; the rest of the new config applies"
            );
        }
        let installed = {
            let _serial = self.serialise_installs();
            self.discovery.reconcile(&config, &self.tasks, &self.token);
            let members = self.discovery.members(&config);
            let installed = self.shared.install(config, members);
            self.started(&installed);
            installed
        };
        let (snapshot, removed) = (&installed.snapshot, &installed.removed);
        // A new path or format applies to the requests that complete from now on.
        self.shared
            .access_log
            .configure(&snapshot.config.server.access_log);
        self.shared
            .metrics
            .reloads_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.generation = snapshot.generation;
        st.sha256 = sha;
        st.loaded_at = SystemTime::now();
        st.last_error = None;
        st.reloads_ok += 1;
        st.restart_required = restart_required;
        tracing::info!(
            trigger,
            generation = snapshot.generation,
            backends = snapshot.backends().count(),
            removed = removed.len(),
            "config reloaded"
        );
        snapshot.generation
    }

    /// Starts probers for new backends, stops those of removed ones, and drains removed
    /// backends: they leave the registry when idle or after `drain_timeout`.
    pub fn sync_probers(&self, snapshot: &Snapshot, removed: &[Arc<Backend>]) {
        let mut probers = self.probers.lock().unwrap_or_else(|e| e.into_inner());
        for b in snapshot.backends() {
            probers.entry(b.id).or_insert_with(|| {
                let token = self.token.child_token();
                self.tasks.spawn(crate::readiness::run_prober(
                    b.clone(),
                    self.shared.clone(),
                    token.clone(),
                ));
                token
            });
        }
        let drain = snapshot.config.server.drain_timeout;
        for b in removed {
            if let Some(t) = probers.remove(&b.id) {
                t.cancel();
            }
            self.tasks.spawn(drain_removed(
                b.clone(),
                self.shared.clone(),
                drain,
                self.token.child_token(),
            ));
        }
    }
}

/// Loads the certificate and key that `tls` names when their files changed; `None` when there
/// is nothing new to serve.
fn prepare_certs(
    store: Option<&CertStore>,
    tls: Option<&crate::config::TlsConfig>,
) -> Result<Option<Prepared>, Vec<ConfigError>> {
    let (Some(store), Some(tls)) = (store, tls) else {
        return Ok(None);
    };
    store.prepare(&tls.cert, &tls.key).map_err(|e| {
        vec![ConfigError {
            file: e
                .path()
                .map_or_else(|| tls.cert.display().to_string(), str::to_owned),
            line: 1,
            col: 1,
            message: e.reason(),
        }]
    })
}

/// Listener addresses and proxy threads are bound at start: a reload that changes them keeps
/// the running values, applies the rest, and names the settings that need a restart (the
/// running config holds the started values, so a later reload of the same file names them
/// again, until the process restarts).
fn keep_listeners(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
        new.server.listen = old.server.listen.clone();
    }
    let old_tls = old.server.tls.as_ref().map(|t| &t.listen);
    if old_tls != new.server.tls.as_ref().map(|t| &t.listen) {
        changed.push("server.tls.listen");
        // A TLS section added or removed by a reload opens or closes no listener either.
        if let (Some(n), Some(o)) = (new.server.tls.as_mut(), old.server.tls.as_ref()) {
            n.listen = o.listen.clone();
        }
    }
    if old.admin.listen != new.admin.listen {
        changed.push("admin.listen");
        new.admin.listen = old.admin.listen;
    }
    if old.server.worker_threads != new.server.worker_threads {
        changed.push("server.worker_threads");
        new.server.worker_threads = old.server.worker_threads;
    }
    if old.server.max_connections != new.server.max_connections {
        changed.push("server.max_connections");
        new.server.max_connections = old.server.max_connections;
    }
    changed
}

/// Receives the discover sources' resolutions until shutdown and applies each.
async fn apply_resolutions(control: Arc<Control>, mut rx: mpsc::UnboundedReceiver<Resolution>) {
    loop {
        let resolution = tokio::select! {
            _ = control.token.cancelled() => return,
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        control.resolved(resolution);
    }
}

/// Waits for a removed backend to go idle (or the drain deadline), then forgets it. Stops
/// early when the backend is taken back (it is in the config or DNS again).
async fn drain_removed(
    backend: Arc<Backend>,
    shared: Arc<Shared>,
    deadline: Duration,
    token: CancellationToken,
) {
    let until = crate::clock::deadline(tokio::time::Instant::now(), deadline);
    while backend.is_removed() && backend.in_flight() > 0 && tokio::time::Instant::now() < until {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    if !backend.is_removed() {
        return;
    }
    tracing::info!(pool = %backend.pool, backend = %backend.name, in_flight = backend.in_flight(), "removed backend drained");
    shared.forget(&backend);
}

/// Whether a file-system event may change what a reload reads: a change (not a mere read: the
/// reload's own reads must not trigger the next one) to the config file, the certificate or
/// key, or a Kubernetes ConfigMap internal (`..data`, `..2026_…`, `..data_tmp`). A rename
/// over the config file carries its name, so editors and config tools are seen.
fn is_relevant(event: &notify::Event, names: &[OsString]) -> bool {
    // The kernel's queue overflowed: events were lost, so anything may have changed.
    if event.need_rescan() || event.paths.is_empty() {
        return true;
    }
    if matches!(event.kind, notify::EventKind::Access(_)) {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name().is_some_and(|n| {
            names.iter().any(|w| w == n) || n.as_encoded_bytes().starts_with(b"..")
        })
    })
}

/// The file names whose changes matter: the config file, its symlink target, and the running
/// certificate and key.
fn watched_names(config: &Path, shared: &Shared) -> Vec<OsString> {
    let target = std::fs::canonicalize(config).ok();
    let snapshot = shared.snapshot();
    let tls = snapshot.config.server.tls.as_ref();
    [Some(config), target.as_deref()]
        .into_iter()
        .chain(tls.map(|t| Some(t.cert.as_path())))
        .chain(tls.map(|t| Some(t.key.as_path())))
        .flatten()
        .filter_map(|p| p.file_name().map(OsString::from))
        .collect()
}

/// Watches the config file's directory and reloads after each burst of changes.
pub fn watch(control: Arc<Control>, path: &Path) -> Result<(), notify::Error> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let (config_path, shared) = (path.to_path_buf(), control.shared.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Computed per event: a reload may have renamed the certificate, and the config may
        // be a symlink whose target is what gets edited.
        if is_relevant(&event, &watched_names(&config_path, &shared)) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    // The certificate and key may live elsewhere (certs/); their directories are watched too.
    if let Some(store) = &control.certs {
        let (cert, key) = store.paths();
        let mut extra: Vec<PathBuf> = [cert, key]
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| *d != dir && !d.as_os_str().is_empty())
            .collect();
        extra.dedup();
        for d in extra {
            watcher.watch(&d, notify::RecursiveMode::NonRecursive)?;
        }
    }
    let token = control.token.clone();
    let tasks = control.tasks.clone();
    tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                ev = rx.recv() => if ev.is_none() { return },
            }
            let burst_end = tokio::time::Instant::now() + MAX_DEBOUNCE;
            loop {
                match tokio::time::timeout_at(
                    (tokio::time::Instant::now() + DEBOUNCE).min(burst_end),
                    rx.recv(),
                )
                .await
                {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // Not awaited: a burst that ends while this reload validates starts the next one,
            // which supersedes it.
            control.spawn_reload("file");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    const POOL: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\
        [[pools.push.backends]]\nname = \"w1\"\naddr = \"127.0.0.1:9\"\n";

    #[test]
    fn keep_listeners_names_each_setting_that_needs_a_restart_and_keeps_its_started_value() {
        let old = Config::parse_bytes(POOL.as_bytes(), None).unwrap();
        let mut same = Config::parse_bytes(POOL.as_bytes(), None).unwrap();
        assert!(keep_listeners(&old, &mut same).is_empty());
        let text = POOL
            .replace(
                "listen = [\"127.0.0.1:0\"]",
                "listen = [\"127.0.0.1:1\"]\nworker_threads = 3\nmax_connections = 77",
            )
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:2\"");
        let mut new = Config::parse_bytes(text.as_bytes(), None).unwrap();
        assert_eq!(
            keep_listeners(&old, &mut new),
            [
                "server.listen",
                "admin.listen",
                "server.worker_threads",
                "server.max_connections"
            ]
        );
        assert_eq!(new.server.listen, old.server.listen);
        assert_eq!(new.admin.listen, old.admin.listen);
        assert_eq!(new.server.worker_threads, old.server.worker_threads);
        assert_eq!(new.server.max_connections, old.server.max_connections);
    }

    #[tokio::test]
    async fn a_reload_superseded_while_it_validated_applies_nothing_and_answers_with_the_newer_outcome(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syncgate.toml");
        std::fs::write(&path, POOL).unwrap();
        let bytes = Config::read(&path).unwrap();
        let config = Config::parse_bytes(&bytes, Some(&path)).unwrap();
        let control = Control::new(
            Shared::new(config),
            Some(path.clone()),
            Some(&bytes),
            None,
            CancellationToken::new(),
            TaskTracker::new(),
        );
        std::fs::write(&path, format!("{POOL}[pools.push]\nretries = 1\n")).unwrap();
        // An older reload draws its ticket; a newer trigger comes while it validates.
        let older = control.requested.fetch_add(1, Ordering::AcqRel) + 1;
        control.requested.fetch_add(1, Ordering::AcqRel);
        let result = control.reload_ticket("file", older).await;
        assert!(matches!(result, Err(Failed::Superseded(_))));
        let status = control.status();
        assert_eq!(
            status.generation, 1,
            "a superseded reload applied its config"
        );
        assert_eq!(status.reloads_failed, 0);
        assert!(status.last_error.is_none());
        // The newest reload applies the file as it is now.
        assert_eq!(control.reload("api").await.unwrap(), 2);
        assert_eq!(control.shared.snapshot().pools[0].retries, 1);
        // Two at once: the older is superseded while it validates, and its caller gets the
        // newer one's outcome.
        std::fs::write(&path, format!("{POOL}[pools.push]\nretries = 2\n")).unwrap();
        let (older, newer) = tokio::join!(control.reload("file"), control.reload("api"));
        assert_eq!(newer.unwrap(), 3);
        assert_eq!(older.unwrap(), 3);
        assert_eq!(control.status().reloads_ok, 2);
        control.token().cancel();
    }

    #[tokio::test]
    async fn a_reload_past_its_time_bound_fails_and_the_next_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syncgate.toml");
        std::fs::write(&path, POOL).unwrap();
        let bytes = Config::read(&path).unwrap();
        let config = Config::parse_bytes(&bytes, Some(&path)).unwrap();
        let control = Control::new(
            Shared::new(config),
            Some(path.clone()),
            Some(&bytes),
            None,
            CancellationToken::new(),
            TaskTracker::new(),
        );
        // A bound no validation of a large file meets (it goes on in the background, and its
        // result is dropped).
        control.reload_timeout_ms.store(1, Ordering::Relaxed);
        let mut big = POOL.to_owned();
        for i in 0..20_000 {
            big.push_str(&format!(
                "[[pools.push.backends]]\nname = \"b{i}\"\naddr = \"10.1.{}.{}:9\"\n",
                i / 256,
                i % 256
            ));
        }
        std::fs::write(&path, big).unwrap();
        let errors = control.reload("api").await.unwrap_err();
        assert!(
            errors[0]
                .message
                .starts_with("the reload did not finish within 1ms"),
            "{errors:?}"
        );
        let status = control.status();
        assert_eq!(status.generation, 1);
        assert!(status.last_error.is_some_and(|f| f.errors == errors));
        // Nothing stays locked: the next reload runs (here with a bound it meets).
        control
            .reload_timeout_ms
            .store(RELOAD_TIMEOUT.as_millis() as u64, Ordering::Relaxed);
        std::fs::write(&path, format!("{POOL}[pools.push]\nretries = 1\n")).unwrap();
        assert_eq!(control.reload("api").await.unwrap(), 2);
        control.token().cancel();
    }

    /// A resolver whose answer the test changes: every host name has this one address.
    #[derive(Debug)]
    struct Answers(Mutex<SocketAddr>);

    impl HostLookup for Answers {
        fn lookup(&self, _host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let ip = self.0.lock().unwrap_or_else(|e| e.into_inner()).ip();
            Ok(vec![SocketAddr::new(ip, port)])
        }
    }

    #[tokio::test]
    async fn an_explicit_reload_resolves_static_host_names_again_and_the_watcher_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("syncgate.toml");
        let text = "[admin]\nlisten = \"127.0.0.1:0\"\n\
                    [[pools.push.backends]]\nname = \"w1\"\naddr = \"workers.internal:9000\"\n";
        std::fs::write(&path, text).expect("write config");
        let answers = Arc::new(Answers(Mutex::new("127.0.0.2:0".parse().unwrap())));
        let config = Config::parse_with(text, Some(&path), &*answers).expect("valid");
        let shared = Shared::new(config);
        let control = Control::create(
            shared.clone(),
            Some(path),
            Some(text.as_bytes()),
            None,
            CancellationToken::new(),
            TaskTracker::new(),
            answers.clone(),
        );
        let addr = || shared.snapshot().backends().next().map(|b| b.addr);
        assert_eq!(addr(), Some("127.0.0.2:9000".parse().unwrap()));

        *answers.0.lock().unwrap() = "127.0.0.3:0".parse().unwrap();
        // The watcher sees the same bytes: nothing to do.
        assert_eq!(control.reload("file").await, Ok(1));
        assert_eq!(addr(), Some("127.0.0.2:9000".parse().unwrap()));
        // SIGHUP (and the API) load the file anyway: the name resolves to its new address.
        assert_eq!(control.reload("signal").await, Ok(2));
        assert_eq!(addr(), Some("127.0.0.3:9000".parse().unwrap()));
        // Same bytes, same answer: no new generation.
        assert_eq!(control.reload("api").await, Ok(2));
        control.token().cancel();
    }
}
