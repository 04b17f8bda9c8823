//! syncgate's own log (not the access log): `tracing` events to stderr, as text or as JSON.
//!
//! - Colour only when stderr is a terminal: journald and `docker logs` would otherwise show
//!   the escape codes.
//! - JSON lines carry every field at the top level (`{"timestamp", "level", "message",
//!   "pool", ...}`), not under `"fields"`, so log pipelines index them as they come.
//! - The `notify` crate (the config file watcher) is held at `warn` unless `RUST_LOG` names it:
//!   it logs every file event at `trace`, and with the log written into the config's
//!   directory each line it writes is a file event of its own, an endless loop.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// Installs the global subscriber, writing to stderr: `RUST_LOG` when set (and valid), else
/// `default` (e.g. `"info"`). Call once, at start.
pub fn init(format: LogFormat, default: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let ansi = std::io::stderr().is_terminal();
    subscriber(
        format,
        filter(rust_log.as_deref(), default),
        std::io::stderr,
        ansi,
    )
    .init();
}

/// The subscriber [`init`] installs, writing to `writer` (tests capture lines with it), with
/// ANSI colour only if `ansi`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// The filter: `rust_log` if it parses, else `default`; and `notify` held at `warn` unless
/// `rust_log` names it (see the module's doc).
pub fn filter(rust_log: Option<&str>, default: &str) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty());
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    if spec.is_some_and(|s| s.contains("notify")) {
        return filter;
    }
    match "notify=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn the_watcher_crate_is_held_at_warn_unless_named() {
        let f = filter(Some("trace"), "info");
        assert_eq!(f.max_level_hint(), Some(LevelFilter::TRACE));
        assert!(f.to_string().contains("notify=warn"), "{f}");
        let named = filter(Some("trace,notify=debug"), "info");
        assert!(!named.to_string().contains("notify=warn"), "{named}");
        let default = filter(None, "info");
        assert!(default.to_string().contains("notify=warn"), "{default}");
        assert_eq!(default.max_level_hint(), Some(LevelFilter::INFO));
    }
}
