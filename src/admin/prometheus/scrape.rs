//! One `GET /metrics` answer as a body written while it is sent: a piece at a time (the pools'
//! families, then each per-backend family a slice of backends at a time, then the process's),
//! a chunk of about [`CHUNK`] bytes per poll. hyper asks for the next chunk only when it has
//! room to buffer it, so a scrape holds about one chunk of text, whatever the fleet's size.
//! Rendered whole, the text of 3,000 backends was 16 MB, and again as much for its conversion
//! to the Prometheus format; glibc kept both once freed (about 9 KiB per backend after
//! scrapes, `benches/probing.sh`).
//!
//! Counters are read as their piece is written: the families of one scrape are read over the
//! time it takes to send, as every exporter's are while it walks its metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use super::backends::FAMILIES;
use super::{to_prometheus_text, Collector};
use crate::backend::Backend;

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
    piece: Piece,
}

impl prometheus_client::collector::Collector for PieceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        match self.piece {
            Piece::Pools => self.collector.encode_pools(e),
            Piece::Backends { family, from } => {
                let to = from.saturating_add(SLICE).min(self.backends.len());
                FAMILIES[family](e, &self.backends[from.min(to)..to])
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
    /// The piece to write next; `None` once the text has ended.
    next: Option<Piece>,
    openmetrics: bool,
}

impl Scrape {
    /// A scrape of `collector`'s metrics, in OpenMetrics when `openmetrics`.
    pub(in crate::admin) fn new(collector: Arc<Collector>, openmetrics: bool) -> Scrape {
        let backends = collector.backends().into();
        Scrape {
            collector,
            backends,
            next: Some(Piece::Pools),
            openmetrics,
        }
    }

    /// The piece after `piece`. Each family has at least one piece, so that its `# HELP` and
    /// `# TYPE` lines are written while no backend is shown.
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
