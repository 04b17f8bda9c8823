//! One `GET /metrics` answer as a body written while it is sent: a piece at a time (the pools'
//! families, then each per-backend family a slice of backends at a time, then the process's),
//! a chunk of about [`CHUNK`] bytes per poll. hyper asks for the next chunk while its write
//! buffer has room (the admin server caps it: `MAX_BUF` in `admin.rs`, 64 KiB), so a scrape
//! holds a few chunks of text however many backends there are. Rendered whole, the text of
//! 3,000 backends was 15 MB, and again as much for its conversion to the Prometheus format;
//! glibc kept both once freed (18.4 KiB of RSS per backend after scrapes, against 6.6 now:
//! `docs/benchmarks.md`).
//!
//! Counters are read as their piece is written, over the time the answer takes to send; the
//! backends shown and their key-sync reports are read once, when the scrape begins.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::backends::{Slice, FAMILIES};
use super::{to_prometheus_text, Collector};
use crate::backend::{Backend, KeySync};

/// Backends per piece of a per-backend family: a histogram family's piece stays near 40 KB.
const SLICE: usize = 16;
/// A chunk is sent once it holds this many bytes, or the text has ended.
const CHUNK: usize = 32 * 1024;

/// One piece of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    /// The per-pool families.
    Pools,
    /// Per-backend family `family` ([`FAMILIES`]) for the backends `from..from + SLICE`.
    Backends { family: usize, from: usize },
    /// The process-wide families.
    Process,
    /// OpenMetrics' closing `# EOF`.
    Eof,
}

/// Writes one piece through `prometheus-client` (a registry per piece: its encoder is made
/// only by encoding a registry).
#[derive(Debug)]
struct PieceCollector {
    collector: Arc<Collector>,
    backends: Arc<[Arc<Backend>]>,
    reports: Arc<[Option<KeySync>]>,
    piece: Piece,
}

impl prometheus_client::collector::Collector for PieceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        match self.piece {
            Piece::Pools => self.collector.encode_pools(e),
            Piece::Backends { family, from } => {
                let to = from.saturating_add(SLICE).min(self.backends.len());
                let slice = Slice {
                    backends: &self.backends[from.min(to)..to],
                    reports: &self.reports[from.min(to)..to],
                };
                FAMILIES[family](e, &slice)
            }
            Piece::Process => self.collector.encode_process_wide(e),
            Piece::Eof => Ok(()),
        }
    }
}

/// The body of a `GET /metrics` answer: OpenMetrics, or the classic Prometheus text format.
#[derive(Debug)]
pub(in crate::admin) struct Scrape {
    collector: Arc<Collector>,
    /// The backends shown, fixed when the scrape began (every family lists the same ones).
    backends: Arc<[Arc<Backend>]>,
    /// Their key-sync reports, `reports[i]` being `backends[i]`'s.
    reports: Arc<[Option<KeySync>]>,
    /// The piece to write next; `None` once the text has ended.
    next: Option<Piece>,
    openmetrics: bool,
}

impl Scrape {
    /// A scrape of `collector`'s metrics, in OpenMetrics when `openmetrics`.
    pub(in crate::admin) fn new(collector: Arc<Collector>, openmetrics: bool) -> Scrape {
        let backends: Arc<[Arc<Backend>]> = collector.backends().into();
        let reports = backends.iter().map(|b| b.key_sync()).collect();
        Scrape {
            collector,
            backends,
            reports,
            next: Some(Piece::Pools),
            openmetrics,
        }
    }

    /// The piece after `piece`. Each family has at least one piece, so that its `# HELP` and
    /// `# TYPE` lines are written even with no backends.
    fn after(&self, piece: Piece) -> Option<Piece> {
        match piece {
            Piece::Pools => Some(Piece::Backends { family: 0, from: 0 }),
            Piece::Backends { family, from } => {
                let from = from.saturating_add(SLICE);
                if from < self.backends.len() {
                    Some(Piece::Backends { family, from })
                } else if family + 1 < FAMILIES.len() {
                    Some(Piece::Backends {
                        family: family + 1,
                        from: 0,
                    })
                } else {
                    Some(Piece::Process)
                }
            }
            Piece::Process => Some(Piece::Eof),
            Piece::Eof => None,
        }
    }

    /// The next chunk of the text: whole pieces, at least [`CHUNK`] bytes unless the text
    /// ends; `None` after the last.
    fn next_chunk(&mut self) -> Result<Option<Bytes>, std::fmt::Error> {
        let mut text = String::with_capacity(2 * CHUNK);
        while let Some(piece) = self.next {
            self.next = self.after(piece);
            let start = text.len();
            match piece {
                Piece::Eof if self.openmetrics => encode_eof(&mut text)?,
                Piece::Eof => {}
                _ => {
                    let mut registry = Registry::default();
                    registry.register_collector(Box::new(PieceCollector {
                        collector: self.collector.clone(),
                        backends: self.backends.clone(),
                        reports: self.reports.clone(),
                        piece,
                    }));
                    encode_registry(&mut text, &registry)?;
                }
            }
            if matches!(piece, Piece::Backends { from, .. } if from > 0) {
                // The family's lines continue: its descriptor was written with its first piece.
                drop_descriptor(&mut text, start);
            }
            if text.len() >= CHUNK {
                break;
            }
        }
        if text.is_empty() {
            return Ok(None);
        }
        // A family's `# HELP` and `# TYPE` lines are always in the same chunk (its first
        // piece's), which is all the conversion needs to see.
        let text = if self.openmetrics {
            text
        } else {
            to_prometheus_text(&text)
        };
        Ok(Some(Bytes::from(text)))
    }
}

/// Removes the `# …` lines that begin `text` at `start`.
fn drop_descriptor(text: &mut String, start: usize) {
    let mut end = start;
    while text[end..].starts_with("# ") {
        end = match text[end..].find('\n') {
            Some(i) => end + i + 1,
            None => text.len(),
        };
    }
    text.replace_range(start..end, "");
}

impl Body for Scrape {
    type Data = Bytes;
    type Error = std::fmt::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::fmt::Error>>> {
        let chunk = self.get_mut().next_chunk().inspect_err(|e| {
            tracing::error!(error = %e, "cannot encode metrics");
        });
        Poll::Ready(chunk.transpose().map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::reload::Control;
    use crate::snapshot::Shared;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// The text rendered whole, in one registry, as it was before scrapes came in pieces.
    #[derive(Debug)]
    struct Whole(Scrape);

    impl prometheus_client::collector::Collector for Whole {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let s = &self.0;
            s.collector.encode_pools(&mut encoder)?;
            let slice = Slice {
                backends: &s.backends,
                reports: &s.reports,
            };
            for family in FAMILIES {
                family(&mut encoder, &slice)?;
            }
            s.collector.encode_process_wide(&mut encoder)
        }
    }

    /// `text` without the values of the process's own figures (they move between renders).
    fn steady(text: &str) -> Vec<&str> {
        text.lines()
            .map(|l| match l.starts_with("process_") {
                true => l.rsplit_once(' ').map_or(l, |(series, _)| series),
                false => l,
            })
            .collect()
    }

    #[tokio::test]
    async fn the_pieces_joined_are_the_text_rendered_whole() {
        // Pool sizes around a slice's: one, one slice exactly, one more, several slices.
        for n in [1, SLICE, SLICE + 1, 2 * SLICE + 8] {
            let mut text = String::from(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            );
            for i in 0..n {
                text.push_str(&format!(
                    "[[pools.push.backends]]\nname = \"w{i}\"\naddr = \"127.0.0.1:{}\"\n",
                    1000 + i
                ));
            }
            let config = Config::parse(&text, None).expect("valid");
            let control = Control::new(
                Shared::new(config),
                None,
                None,
                None,
                CancellationToken::new(),
                TaskTracker::new(),
            );
            let collector = Arc::new(Collector::new(control));
            for openmetrics in [true, false] {
                let mut scrape = Scrape::new(collector.clone(), openmetrics);
                let mut joined = String::new();
                let mut chunks = 0;
                while let Some(chunk) = scrape.next_chunk().expect("encodes") {
                    joined.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
                    chunks += 1;
                }
                assert!(scrape.is_end_stream());
                let mut registry = Registry::default();
                registry.register_collector(Box::new(Whole(Scrape::new(
                    collector.clone(),
                    openmetrics,
                ))));
                let mut whole = String::new();
                prometheus_client::encoding::text::encode(&mut whole, &registry).unwrap();
                if !openmetrics {
                    whole = to_prometheus_text(&whole);
                }
                let (joined, whole) = (steady(&joined), steady(&whole));
                let first_difference = joined.iter().zip(&whole).position(|(a, b)| a != b);
                assert_eq!(
                    (first_difference, joined.len()),
                    (None, whole.len()),
                    "{n} backends: line {first_difference:?} differs: {:?}",
                    first_difference.map(|i| (joined[i], whole[i]))
                );
                assert!(chunks > 1 || n < 2 * SLICE, "{n} backends in one chunk");
            }
        }
    }

    #[test]
    fn a_continued_familys_descriptor_lines_are_dropped_and_nothing_else() {
        let mut text = String::from("a 1\n");
        text.push_str(
            "# HELP b B.\n# TYPE b gauge\n# UNIT b seconds\nb{x=\"1\"} 2\nb{x=\"2\"} 3\n",
        );
        drop_descriptor(&mut text, 4);
        assert_eq!(text, "a 1\nb{x=\"1\"} 2\nb{x=\"2\"} 3\n");
        // A piece without series: only its descriptor, all of it dropped.
        let mut text = String::from("a 1\n# HELP b B.\n# TYPE b gauge\n");
        drop_descriptor(&mut text, 4);
        assert_eq!(text, "a 1\n");
    }
}
