//! Hot reload and the control plane's lifecycle: read → parse → validate → build → one atomic
//! swap, triggered by file changes (the config's directory is watched, so rename-over and
//! ConfigMap symlink swaps are seen), `SIGHUP` (in `main.rs`) and `POST /api/reload`.
//!
//! [`Control`] owns what the control plane runs: prober tasks (one per live backend), drains of
//! removed backends, and the config identity (generation, sha256, last error). Reloads are
//! serialised by an async mutex; a file that does not load changes nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::config::{Config, ConfigError, LoadError};
use crate::digest::sha256_hex;
use crate::snapshot::{Shared, Snapshot};
use crate::systemd::{notify_systemd, SystemdState};
use crate::tls::{CertStore, Prepared};

/// Quiet time after the last file event before reloading: editors and config tools write in
/// bursts (truncate, write, rename, chmod).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A burst never delays a reload longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_millis(600);

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
    reload_lock: tokio::sync::Mutex<()>,
}

impl Control {
    /// A control plane for `shared`, whose first config came from `path` with these bytes.
    pub fn new(
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        file_bytes: Option<&[u8]>,
        certs: Option<Arc<CertStore>>,
        token: CancellationToken,
        tasks: TaskTracker,
    ) -> Arc<Control> {
        let control = Arc::new(Control {
            status: Mutex::new(ConfigStatus {
                path,
                generation: shared.snapshot().generation,
                sha256: file_bytes.map(sha256_hex).unwrap_or_default(),
                loaded_at: SystemTime::now(),
                last_error: None,
                reloads_ok: 0,
                reloads_failed: 0,
            }),
            shared,
            token,
            tasks,
            certs,
            probers: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        control.sync_probers(&control.shared.snapshot(), &[]);
        control
    }

    /// The root cancellation token of the control plane.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker owning every control-plane task.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
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
    /// and certificate stay: a config whose certificate does not load is not applied).
    pub async fn reload(&self, trigger: &'static str) -> Result<u64, Vec<ConfigError>> {
        let _serial = self.reload_lock.lock().await;
        notify_systemd(SystemdState::Reloading);
        let result = self.reload_locked(trigger).await;
        if let Err(errors) = &result {
            for err in errors {
                tracing::error!(trigger, error = %err, "reload failed; the running config stays");
            }
            self.record_failure(trigger, errors.clone());
        }
        notify_systemd(SystemdState::Ready);
        result
    }

    /// Loads the certificate and key the config `tls` names when their files changed; `None`
    /// when there is nothing new to serve.
    fn prepare_certs(
        &self,
        tls: Option<&crate::config::TlsConfig>,
    ) -> Result<Option<Prepared>, Vec<ConfigError>> {
        let (Some(store), Some(tls)) = (&self.certs, tls) else {
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

    async fn reload_locked(&self, trigger: &'static str) -> Result<u64, Vec<ConfigError>> {
        let Some(path) = self.status().path else {
            return Err(vec![ConfigError {
                file: "<config>".into(),
                line: 1,
                col: 1,
                message: "syncgate was started without a config file; nothing to reload".into(),
            }]);
        };
        match self.load(&path).await.map_err(|e| e.errors())? {
            None => {
                // The file loads again (it holds the running config's bytes): an earlier
                // failure no longer describes it.
                self.status
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = None;
                let running = self.shared.snapshot();
                if let Some(cert) = self.prepare_certs(running.config.server.tls.as_ref())? {
                    self.install_certs(cert);
                }
                Ok(self.status().generation)
            }
            Some((config, sha)) => {
                let cert = self.prepare_certs(config.server.tls.as_ref())?;
                let generation = self.apply(config, sha, trigger);
                if let Some(cert) = cert {
                    self.install_certs(cert);
                }
                Ok(generation)
            }
        }
    }

    fn install_certs(&self, cert: Prepared) {
        if let Some(store) = &self.certs {
            store.install(cert);
        }
    }

    /// Reads and validates the file; `None` when its bytes equal the running config's.
    async fn load(&self, path: &Path) -> Result<Option<(Config, String)>, LoadError> {
        let owned = path.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || Config::read(&owned))
            .await
            .map_err(|e| LoadError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(format!("config read failed: {e}")),
            })??;
        let sha = sha256_hex(&bytes);
        if sha == self.status().sha256 {
            return Ok(None);
        }
        // Off the control runtime: validation may resolve backend host names, and a slow
        // resolver must not stall the probers, the admin API or signal handling.
        let owned = path.to_path_buf();
        let parsed =
            tokio::task::spawn_blocking(move || Config::parse_bytes(&bytes, Some(&owned))).await;
        match parsed {
            Ok(config) => Ok(Some((config?, sha))),
            Err(e) => Err(LoadError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(format!("config validation failed: {e}")),
            }),
        }
    }

    fn apply(&self, mut config: Config, sha: String, trigger: &'static str) -> u64 {
        let old = self.shared.snapshot();
        keep_listeners(&old.config, &mut config);
        let (snapshot, removed) = self.shared.install(config);
        self.sync_probers(&snapshot, &removed);
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

/// Listener addresses and proxy threads are bound at start: a reload that changes them says
/// so and applies the rest.
fn keep_listeners(old: &Config, new: &mut Config) {
    let old_tls = old.server.tls.as_ref().map(|t| &t.listen);
    let new_tls = new.server.tls.as_ref().map(|t| &t.listen);
    if old.server.listen != new.server.listen
        || old_tls != new_tls
        || old.admin.listen != new.admin.listen
        || old.server.worker_threads != new.server.worker_threads
        || old.server.max_connections != new.server.max_connections
    {
        tracing::warn!("listen addresses, worker_threads and max_connections need a restart; the rest of the new config applies");
        new.server.listen = old.server.listen.clone();
        new.server.worker_threads = old.server.worker_threads;
        new.server.max_connections = old.server.max_connections;
        new.admin.listen = old.admin.listen;
        if let (Some(n), Some(o)) = (new.server.tls.as_mut(), old.server.tls.as_ref()) {
            n.listen = o.listen.clone();
        }
    }
}

/// Waits for a removed backend to go idle (or the drain deadline), then forgets it.
async fn drain_removed(
    backend: Arc<Backend>,
    shared: Arc<Shared>,
    deadline: Duration,
    token: CancellationToken,
) {
    let until = crate::clock::deadline(tokio::time::Instant::now(), deadline);
    while backend.in_flight() > 0 && tokio::time::Instant::now() < until {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
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
            let _ = control.reload("file").await;
        }
    });
    Ok(())
}
