//! The `syncgate` command line: `run`, `check`, `demo`, and `completions` / `man` for packaging.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use syncgate::Config;
use syncgate::{notify_systemd, SystemdState};

/// `--version`: the crate version and the commit it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SYNCGATE_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "syncgate",
    version = VERSION,
    about = "A readiness-gated reverse proxy for push APIs"
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy daemon.
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Start beside a running syncgate on the same listen addresses (restarts and
        /// upgrades without a failed request): listen once every pool has a ready backend;
        /// then stop the old instance yourself (SIGTERM). Without it, an address in use is
        /// an error.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file (exit 0), or print every error (exit 1).
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Replay the late-joining-worker outage twice, side by side: behind an ordinary health
    /// check and behind syncgate's gate and guard. Exits 1 if a 401 gets through syncgate.
    Demo {
        /// How long the load runs, e.g. "20s"; the timeline scales with it.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Print a shell completion script (e.g. `syncgate completions bash > /etc/bash_completion.d/syncgate`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `syncgate man > /usr/share/man/man1/syncgate.1`.
    Man,
}

fn init_tracing(format: LogFormat, default: &str) {
    let format = match format {
        LogFormat::Text => syncgate::logging::LogFormat::Text,
        LogFormat::Json => syncgate::logging::LogFormat::Json,
    };
    syncgate::logging::init(format, default);
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("syncgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => Ok(check(&config)),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "syncgate", &mut out);
            print_all(&out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .context("rendering the manual page")?;
            print_all(&out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config, takeover } => {
            init_tracing(cli.log_format, "info");
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let options = syncgate::StartOptions { takeover };
            control_runtime()?.block_on(daemon(cfg, options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { duration } => {
            // The demo tells its own story on stdout; syncgate's warnings (every contradicted
            // 401 is one) would bury it. RUST_LOG still turns them on.
            init_tracing(cli.log_format, "error");
            let opts = syncgate::demo::DemoOptions::for_duration(duration);
            let report = control_runtime()?.block_on(syncgate::demo::run(opts))?;
            Ok(if report.unauthorized() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The control plane (probers, reloads, admin) is light: one thread. Proxy threads have
/// runtimes of their own.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control runtime")
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            print_summary(path, &cfg);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `PATH: ok`, then one screen: listeners, pools, backends, routes.
fn print_summary(path: &std::path::Path, cfg: &Config) {
    use std::fmt::Write as _;
    let mut out = format!("{}: ok\n", path.display());
    let listen: Vec<String> = cfg.server.listen.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "listen: {}", listen.join(", "));
    if let Some(tls) = &cfg.server.tls {
        let l: Vec<String> = tls.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "tls listen: {}", l.join(", "));
    }
    let _ = writeln!(out, "admin: {}", cfg.admin.listen);
    for p in &cfg.pools {
        let _ = writeln!(
            out,
            "pool {}: {}, probe {} every {:?} ({}), {} backend(s)",
            p.name,
            p.balance,
            p.probe.path,
            p.probe.interval,
            p.probe.contract,
            p.backends.len()
        );
        if p.probe.timeout > p.probe.interval {
            let _ = writeln!(
                out,
                "  note: probe timeout {:?} exceeds the interval {:?}; probes of one backend never \
                 overlap, so a slow one delays the next",
                p.probe.timeout, p.probe.interval
            );
        }
        for b in &p.backends {
            let _ = writeln!(
                out,
                "  {:<20} {:<22} weight {}",
                b.name,
                b.addr.to_string(),
                b.weight
            );
        }
        for d in &p.discover {
            let resolver = d
                .resolver
                .map_or_else(|| "system resolver".to_owned(), |r| format!("resolver {r}"));
            let _ = writeln!(
                out,
                "  discover {} {} {} every {:?} ({resolver})",
                d.name,
                d.query.kind(),
                d.query.target(),
                d.interval
            );
        }
    }
    for r in &cfg.routes {
        let host = match &r.host {
            None => "*".to_string(),
            Some(syncgate::HostMatch::Exact(h)) => h.clone(),
            Some(syncgate::HostMatch::Wildcard(s)) => format!("*{s}"),
        };
        let _ = writeln!(out, "route {host}{} -> {}", r.path_prefix, r.pool);
    }
    print_all(out.as_bytes());
}

/// Writes to stdout in one go. `check | head` closes the pipe early: that is no error worth a
/// panic (`print!` would panic).
fn print_all(bytes: &[u8]) {
    let _ = std::io::Write::write_all(&mut std::io::stdout(), bytes);
}

async fn daemon(cfg: Config, options: syncgate::StartOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: once systemd hears READY=1 it may send SIGHUP or SIGTERM at once, and
    // a signal without a handler would kill the process.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // logrotate's `postrotate` sends SIGUSR1 once it has renamed the access log.
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let running = syncgate::start_with(cfg, options)
        .await
        .context("starting syncgate")?;
    // With --takeover, only now that the listeners listen (every pool has a ready backend).
    notify_systemd(SystemdState::Ready);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "stopping"); break; }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "stopping"); break; }
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading");
                // Errors are logged and kept for GET /api/config by the reload itself, which
                // also tells systemd RELOADING=1 / READY=1. Not awaited: SIGTERM and the next
                // SIGHUP are heard while it runs.
                running.control().spawn_reload("signal");
            }
            _ = usr1.recv() => {
                tracing::info!(signal = "SIGUSR1", "reopening the access log");
                running.reopen_access_log();
            }
        }
    }
    notify_systemd(SystemdState::Stopping);
    running.shutdown().await;
    Ok(())
}
