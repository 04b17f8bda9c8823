//! One request's attempts on the pool's backends: the one loop that picks a backend, sends,
//! records what the backend did, and moves on to another when the attempt gave nothing the
//! request can use, within the pool's `retries` and its retry budget.
//!
//! The forward path and the second opinion both run [`exchange`]; they differ only in what
//! they take from an attempt ([`Phase::next`], pure) and which copy of the request they keep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode};

use super::response::RespBody;
use super::Cx;
use crate::access_log::Entry;
use crate::backend::{Backend, InFlight};
use crate::body::BodyError;
use crate::outlier;
use crate::snapshot::Pool;
use crate::upstream::{self, Answer, Attempt, ConnectError, Outgoing, Pooled, UpstreamError};

/// Which attempts a request is making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The client's request: any answer is taken; a connect failure moves on to another
    /// backend; a request that broke once sent is not sent again.
    Forward,
    /// A replay asking peers for a second opinion on a guarded answer: only an opinion is
    /// taken; a peer that gives none (unreachable, 5xx, a broken answer) is skipped for the
    /// next.
    SecondOpinion,
}

/// What one attempt gave, as far as deciding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gave {
    /// An answer with a guarded status (401/403 by default).
    Guarded,
    /// A 5xx answer (not guarded).
    ServerError,
    /// Any other answer.
    Other,
    /// Nothing reached the backend (connect failure); the request is untouched.
    NotSent,
    /// The exchange broke after the request was (partly) sent.
    Broken,
}

impl Gave {
    /// The class of an answer with `status` from a backend of `pool`.
    fn answer(pool: &Pool, status: StatusCode) -> Gave {
        if pool.is_guarded(status) {
            Gave::Guarded
        } else if status.is_server_error() {
            Gave::ServerError
        } else {
            Gave::Other
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The attempt's answer is the exchange's result.
    Take,
    /// Try another backend (if `retries` and the budget allow).
    TryAnother,
    /// The exchange ends without an answer.
    Stop,
}

impl Phase {
    /// What an attempt that gave `gave` means in this phase. Pure.
    pub(super) fn next(self, gave: Gave) -> Next {
        match (self, gave) {
            (Phase::Forward, Gave::Guarded | Gave::ServerError | Gave::Other) => Next::Take,
            (Phase::Forward, Gave::NotSent) => Next::TryAnother,
            (Phase::Forward, Gave::Broken) => Next::Stop,
            (Phase::SecondOpinion, Gave::Guarded | Gave::Other) => Next::Take,
            (Phase::SecondOpinion, Gave::ServerError | Gave::NotSent | Gave::Broken) => {
                Next::TryAnother
            }
        }
    }

    /// Whether a copy of the request is kept before it goes: forward, for a second opinion
    /// should the answer be guarded (only when one could be asked); second opinion, for the
    /// next peer should this one give no opinion.
    fn keeps_copy(self, pool: &Pool) -> bool {
        match self {
            Phase::Forward => !pool.guard.statuses.is_empty() && pool.backends.len() > 1,
            Phase::SecondOpinion => true,
        }
    }
}

/// The backends a request has been to: left out of its next picks.
#[derive(Debug, Default)]
pub(super) struct Tried {
    exclude: Vec<u64>,
    failed: u32,
}

impl Tried {
    /// Leaves `id` out of the next picks without counting it as a failure (the backend whose
    /// guarded answer is being checked).
    pub(super) fn leave_out(&mut self, id: u64) {
        self.exclude.push(id);
    }

    /// Counts backend `id` as having given nothing usable; whether a request with `retries`
    /// may still go to another one. Pure.
    pub(super) fn fail(&mut self, id: u64, retries: u32) -> bool {
        self.exclude.push(id);
        self.failed = self.failed.saturating_add(1);
        self.failed <= retries
    }

    /// Backends that gave nothing usable so far.
    pub(super) fn failed(&self) -> u32 {
        self.failed
    }
}

/// A worker's answer with its connection and in-flight count.
pub(super) struct Upstream {
    resp: Response<Answer>,
    in_flight: InFlight,
    /// The longest wait between two reads of its body.
    body_timeout: Duration,
}

impl Upstream {
    /// The answer's status.
    pub(super) fn status(&self) -> StatusCode {
        self.resp.status()
    }

    /// The backend that answered.
    pub(super) fn backend(&self) -> &Arc<Backend> {
        self.in_flight.backend()
    }

    /// The answer for the client, its body streamed from the worker (hop-by-hop headers were
    /// left out when its head was read); the connection returns to the pool once the body is
    /// read to its end.
    pub(super) fn into_response(self) -> Response<RespBody> {
        self.resp.map(|answer| {
            RespBody::Upstream(Pooled::new(answer, self.in_flight, self.body_timeout))
        })
    }
}

/// Why an exchange ended without an answer it takes.
#[derive(Debug)]
pub(super) enum Unanswered {
    /// No ready backend was left to try.
    NoBackend,
    /// `retries` backends gave nothing usable, or no copy of the request was left to send.
    Exhausted,
    /// The retry budget refused the next attempt.
    BudgetSpent,
    /// The request broke once sent (forward only: it is not sent again).
    Broken(UpstreamError),
}

/// Sends `req` to a ready backend of the pool not in `tried`, and to another after each
/// attempt that [`Phase::next`] does not take, until one is taken or nothing more may be
/// tried. Every attempt but the request's first is paid from the retry budget. The answer
/// taken comes with the copy of the request kept before it was sent ([`Phase`] says when).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future holds each parameter twice: its upvar and its local"
)]
pub(super) fn exchange<'a>(
    cx: &'a Cx<'a>,
    phase: Phase,
    req: &'a mut Outgoing,
    tried: &'a mut Tried,
    log: &'a mut Entry,
) -> impl Future<Output = Result<(Upstream, Option<Outgoing>), Unanswered>> + 'a {
    async move {
        loop {
            let pool = cx.pool;
            let Some(backend) = pool.pick(cx.hash_key, &tried.exclude) else {
                return Err(Unanswered::NoBackend);
            };
            let copy = if phase.keeps_copy(pool) {
                req.replayable()
            } else {
                None
            };
            let in_flight = backend.start_request();
            // Known up front for a buffered body or one with a Content-Length; a chunked body too
            // large to buffer counts what was read before it was sent.
            let body_len = req.body_len();
            let sent_at = std::time::Instant::now();
            log.attempt();
            let attempt = upstream::send(backend, pool.tls.as_ref(), req, sent_at).await;
            let ended = std::time::Instant::now();
            let took = ended.saturating_duration_since(sent_at);
            cx.keep_reading(ended);
            match &attempt {
                Attempt::Answered(..) => {
                    backend.metrics.upstream_latency.observe(took);
                    backend.metrics.sent(body_len);
                }
                Attempt::Failed(_) => backend.metrics.sent(body_len),
                Attempt::NotSent(..) => {}
            }
            let gave = record(cx, phase, backend, &attempt);
            // Whether `req` can go again as it is: nothing of it was sent.
            let untouched = match (phase.next(gave), attempt) {
                (Next::Take, Attempt::Answered(resp)) => {
                    log.answered(in_flight.backend(), took);
                    let answer = Upstream {
                        resp,
                        in_flight,
                        body_timeout: cx.limits.timeout,
                    };
                    return Ok((answer, copy));
                }
                (Next::Stop, Attempt::Failed(err)) => return Err(Unanswered::Broken(err)),
                (_, Attempt::NotSent(_)) => true,
                // An answer not taken (a 5xx in a second opinion) is dropped, and its connection
                // with it: nobody reads its body.
                (_, Attempt::Answered(_) | Attempt::Failed(_)) => false,
            };
            if !tried.fail(backend.id, pool.retries) {
                return Err(Unanswered::Exhausted);
            }
            if !untouched {
                match copy {
                    Some(copy) => *req = copy,
                    None => return Err(Unanswered::Exhausted),
                }
            }
            if !pool.budget.try_spend() {
                return Err(Unanswered::BudgetSpent);
            }
            if phase == Phase::Forward {
                pool.stats
                    .retries
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Counts what an attempt says about `backend` (answers, connect failures, passive outlier
/// detection) and logs a failure; returns what it gave.
fn record(cx: &Cx<'_>, phase: Phase, backend: &Backend, attempt: &Attempt) -> Gave {
    match attempt {
        Attempt::Answered(resp) => {
            outlier::record_answer(cx.shared, cx.pool, backend, resp.status());
            Gave::answer(cx.pool, resp.status())
        }
        Attempt::NotSent(err) => {
            outlier::record_connect_failure(cx.shared, cx.pool, backend);
            log_connect_failure(backend, err, cx.request_id);
            Gave::NotSent
        }
        Attempt::Failed(err) => {
            backend.answers.record(None);
            let request_id = cx.request_id;
            match phase {
                // A body over the limit is the client's doing: answered 413, not logged.
                Phase::Forward if is_too_large(err) => {}
                Phase::Forward => {
                    tracing::warn!(pool = %cx.pool.name, backend = %backend.name, error = %err, request_id = request_id.to_str().unwrap_or(""), "upstream request failed")
                }
                Phase::SecondOpinion => {
                    tracing::warn!(pool = %cx.pool.name, backend = %backend.name, error = %err, request_id = request_id.to_str().unwrap_or(""), "second opinion failed")
                }
            }
            Gave::Broken
        }
    }
}

fn log_connect_failure(backend: &Backend, err: &ConnectError, request_id: &HeaderValue) {
    tracing::warn!(pool = %backend.pool, backend = %backend.name, error = %err, request_id = request_id.to_str().unwrap_or(""), "upstream connect failed");
}

/// Whether a request broke because its body grew past `max_request_body`.
pub(super) fn is_too_large(err: &UpstreamError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(BodyError::TooLarge(_)) = e.downcast_ref::<BodyError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_takes_any_answer_retries_only_what_was_not_sent() {
        for gave in [Gave::Guarded, Gave::ServerError, Gave::Other] {
            assert_eq!(Phase::Forward.next(gave), Next::Take, "{gave:?}");
        }
        assert_eq!(Phase::Forward.next(Gave::NotSent), Next::TryAnother);
        assert_eq!(Phase::Forward.next(Gave::Broken), Next::Stop);
    }

    #[test]
    fn a_second_opinion_takes_opinions_and_skips_peers_without_one() {
        assert_eq!(Phase::SecondOpinion.next(Gave::Guarded), Next::Take);
        assert_eq!(Phase::SecondOpinion.next(Gave::Other), Next::Take);
        for gave in [Gave::ServerError, Gave::NotSent, Gave::Broken] {
            assert_eq!(
                Phase::SecondOpinion.next(gave),
                Next::TryAnother,
                "{gave:?}"
            );
        }
    }

    #[test]
    fn a_request_fails_on_at_most_retries_backends_before_giving_up() {
        let mut tried = Tried::default();
        tried.leave_out(7);
        assert_eq!(tried.failed(), 0, "the backend being checked is no failure");
        assert!(tried.fail(1, 2));
        assert!(tried.fail(2, 2));
        assert!(!tried.fail(3, 2));
        assert_eq!(tried.exclude, vec![7, 1, 2, 3]);
        assert!(
            !Tried::default().fail(1, 0),
            "retries = 0: no second backend"
        );
    }
}
