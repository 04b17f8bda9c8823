//! The response guard's second opinion: before a guarded answer (401/403) reaches the client,
//! the request is replayed on another ready backend.
//!
//! Confirmed: the client gets the guarded answer. Contradicted: the client gets the peer's
//! answer and the first backend is charged. No other ready backend, or a body too large to
//! keep: the first answer passes, as DESIGN.md says. A peer exists but cannot be asked
//! (budget spent) or none gives an opinion (unreachable, 5xx): `503` with `Retry-After`,
//! because an unconfirmed 401 must never reach a client and agents retry a 503.
//!
//! The rule is pure ([`before_asking`], [`verdict`]) and unit-tested on its own, like
//! `readiness::judge`; [`second_opinion`] does the I/O through the same [`exchange`] loop as
//! the forward path, and returns the outcome for the caller to count.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};

use super::exchange::{exchange, Phase, Tried, Unanswered, Upstream};
use super::response::{retry_later, RespBody};
use super::Cx;
use crate::body::ReqBody;
use crate::metrics::GuardOutcome;
use crate::outlier;

/// Guarded answers larger than this are not kept for a possible pass-through.
const MAX_GUARDED_ANSWER: usize = 64 * 1024;

/// How a second opinion ends. `A` is an answer the client may get.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict<A> {
    /// This answer goes to the client.
    Answer(A, GuardOutcome),
    /// `503` with `Retry-After` and this message: the guarded answer stays unconfirmed.
    RetryLater(GuardOutcome, &'static str),
}

/// Whether to ask at all, when a guarded answer `first` arrived. `Ok`: ask, with the first
/// answer and the request kept for a replay (`replay`: none when the body streamed or the
/// pool has a single backend); `Err`: the first answer passes. `peers_configured`: the pool
/// has backends besides the first; `peer_ready`: one of them is ready now. Pure.
pub(super) fn before_asking<A, R>(
    first: A,
    replay: Option<R>,
    peers_configured: bool,
    peer_ready: bool,
) -> Result<(A, R), Verdict<A>> {
    match replay {
        None if peers_configured => Err(Verdict::Answer(first, GuardOutcome::TooLarge)),
        None => Err(Verdict::Answer(first, GuardOutcome::NoPeer)),
        Some(_) if !peer_ready => Err(Verdict::Answer(first, GuardOutcome::NoPeer)),
        Some(replay) => Ok((first, replay)),
    }
}

/// What the guard heard once it set out to ask. `A` is an answer the client may get.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heard<A> {
    /// The retry budget refused a replay.
    BudgetSpent,
    /// A peer gave an opinion: `confirms` when its answer is guarded too.
    Opinion {
        /// The peer's answer.
        peer: A,
        /// Whether it confirms the guarded answer.
        confirms: bool,
    },
    /// No ready peer was left to ask.
    NoPeerLeft {
        /// Backends that had given no opinion (including those that failed to connect
        /// before the first answered).
        silent: u32,
        /// The first answer, when it was read whole.
        first: Option<A>,
    },
    /// `retries` backends gave no opinion.
    AllSilent,
}

/// The guard's verdict on what it heard. Pure.
pub(super) fn verdict<A>(heard: Heard<A>) -> Verdict<A> {
    match heard {
        Heard::BudgetSpent => Verdict::RetryLater(
            GuardOutcome::BudgetSpent,
            "retry budget spent: answer not confirmed",
        ),
        Heard::Opinion {
            peer,
            confirms: true,
        } => Verdict::Answer(peer, GuardOutcome::Confirmed),
        Heard::Opinion {
            peer,
            confirms: false,
        } => Verdict::Answer(peer, GuardOutcome::Contradicted),
        // Nobody else could be asked and nobody failed to answer: as if there were no peer.
        // A silent peer leaves the answer unconfirmed, it does not make it confirmed.
        Heard::NoPeerLeft {
            silent: 0,
            first: Some(first),
        } => Verdict::Answer(first, GuardOutcome::NoPeer),
        Heard::NoPeerLeft { .. } | Heard::AllSilent => Verdict::RetryLater(
            GuardOutcome::Unconfirmed,
            "no backend could confirm the answer",
        ),
    }
}

/// Asks for a second opinion on `first`, a guarded answer, replaying `replay` (the request as
/// kept before it was sent) on peers not in `tried`. Returns the client's answer and the
/// outcome, which the caller counts ([`GuardOutcome::Replayed`] is counted here, when the
/// replay starts, so that one cut short by `request_timeout` still counts).
pub(super) async fn second_opinion(
    cx: &Cx<'_>,
    first: Upstream,
    replay: Option<Request<ReqBody>>,
    mut tried: Tried,
) -> (Response<RespBody>, GuardOutcome) {
    let pool = cx.pool;
    let first_backend = first.backend().clone();
    // "Another ready backend exists" counts peers that already failed to connect for this
    // request: their failure leaves the answer unconfirmed, it does not make it confirmed.
    // Without a replay the answer passes whatever the peers: no pick (a pick advances the
    // round-robin sequence).
    let peer_ready = replay.is_some() && pool.pick(cx.hash_key, &[first_backend.id]).is_some();
    let asking = before_asking(
        first.into_response(),
        replay,
        pool.backends.len() > 1,
        peer_ready,
    );
    let (first, replay) = match asking {
        Ok(asking) => asking,
        Err(verdict) => return conclude(cx, verdict),
    };
    if !pool.budget.try_spend() {
        return conclude(cx, verdict(Heard::BudgetSpent));
    }
    // Read the first answer now: its connection goes back to the pool, and it is still there
    // to pass on if the peers stop being ready before one is picked.
    let first = buffer(first).await;
    pool.stats.guard_outcome(GuardOutcome::Replayed);
    tried.leave_out(first_backend.id);
    let heard = match exchange(cx, Phase::SecondOpinion, replay, &mut tried).await {
        Ok((peer, _)) => Heard::Opinion {
            confirms: pool.is_guarded(peer.status()),
            peer: peer.into_response(),
        },
        Err(Unanswered::NoBackend) => Heard::NoPeerLeft {
            silent: tried.failed(),
            first,
        },
        Err(Unanswered::BudgetSpent) => Heard::BudgetSpent,
        // A second opinion never stops on a broken exchange (its peer is skipped), so
        // `Broken` does not come back from this phase; it would leave the answer unconfirmed.
        Err(Unanswered::Exhausted | Unanswered::Broken(_)) => Heard::AllSilent,
    };
    let (resp, outcome) = conclude(cx, verdict(heard));
    if outcome == GuardOutcome::Contradicted {
        outlier::record_contradiction(cx.shared, pool, &first_backend);
    }
    (resp, outcome)
}

/// The client's answer for a verdict.
fn conclude(
    cx: &Cx<'_>,
    verdict: Verdict<Response<RespBody>>,
) -> (Response<RespBody>, GuardOutcome) {
    match verdict {
        Verdict::Answer(resp, outcome) => (resp, outcome),
        Verdict::RetryLater(outcome, message) => {
            (retry_later(cx.pool, message, cx.request_id), outcome)
        }
    }
}

/// The answer with its body read into memory; `None` when the body is larger than
/// [`MAX_GUARDED_ANSWER`] or broke.
async fn buffer(resp: Response<RespBody>) -> Option<Response<RespBody>> {
    let (parts, body) = resp.into_parts();
    let bytes: Bytes = Limited::new(body, MAX_GUARDED_ANSWER)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(Response::from_parts(parts, RespBody::full(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "first";
    const PEER: &str = "peer";

    #[test]
    fn a_kept_request_with_a_ready_peer_is_asked() {
        assert_eq!(
            before_asking(FIRST, Some("req"), true, true),
            Ok((FIRST, "req"))
        );
    }

    #[test]
    fn without_a_peer_or_a_kept_body_the_first_answer_passes() {
        fn pass<R>(outcome: GuardOutcome) -> Result<(&'static str, R), Verdict<&'static str>> {
            Err(Verdict::Answer(FIRST, outcome))
        }
        // A single backend: nobody to ask (and no copy was kept).
        assert_eq!(
            before_asking::<_, ()>(FIRST, None, false, false),
            pass(GuardOutcome::NoPeer)
        );
        // Peers exist, but the body streamed: it cannot be replayed.
        assert_eq!(
            before_asking::<_, ()>(FIRST, None, true, true),
            pass(GuardOutcome::TooLarge)
        );
        // Peers are configured, none is ready.
        assert_eq!(
            before_asking(FIRST, Some("req"), true, false),
            pass(GuardOutcome::NoPeer)
        );
    }

    #[test]
    fn a_guarded_peer_answer_confirms_any_other_contradicts() {
        assert_eq!(
            verdict(Heard::Opinion {
                peer: PEER,
                confirms: true
            }),
            Verdict::Answer(PEER, GuardOutcome::Confirmed)
        );
        assert_eq!(
            verdict(Heard::Opinion {
                peer: PEER,
                confirms: false
            }),
            Verdict::Answer(PEER, GuardOutcome::Contradicted)
        );
    }

    #[test]
    fn an_unconfirmed_answer_never_passes() {
        let unconfirmed = |heard| match verdict(heard) {
            Verdict::RetryLater(outcome, _) => outcome,
            Verdict::Answer(a, outcome) => panic!("{a} passed as {outcome:?}"),
        };
        assert_eq!(unconfirmed(Heard::BudgetSpent), GuardOutcome::BudgetSpent);
        assert_eq!(unconfirmed(Heard::AllSilent), GuardOutcome::Unconfirmed);
        // A peer gave no opinion, then none was left: unconfirmed, not "no peer".
        assert_eq!(
            unconfirmed(Heard::NoPeerLeft {
                silent: 1,
                first: Some(FIRST)
            }),
            GuardOutcome::Unconfirmed
        );
        // The first answer was too large to keep: there is nothing to pass.
        assert_eq!(
            unconfirmed(Heard::NoPeerLeft {
                silent: 0,
                first: None
            }),
            GuardOutcome::Unconfirmed
        );
    }

    #[test]
    fn peers_gone_before_any_was_asked_pass_the_kept_first_answer() {
        assert_eq!(
            verdict(Heard::NoPeerLeft {
                silent: 0,
                first: Some(FIRST)
            }),
            Verdict::Answer(FIRST, GuardOutcome::NoPeer)
        );
    }
}
