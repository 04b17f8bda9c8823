//! The response guard's second opinion: before a guarded answer (401/403) reaches the client,
//! the request is replayed on another ready backend.
//!
//! Confirmed: the client gets the guarded answer. Contradicted: the client gets the peer's
//! answer and the first backend is charged. No other ready backend, or a body too large to
//! keep: the first answer passes, as DESIGN.md says. A peer exists but cannot be asked
//! (budget spent) or none gives an opinion (unreachable, 5xx): `503` with `Retry-After`,
//! because an unconfirmed 401 must never reach a client and agents retry a 503.
//!
//! The pool's memories of the request's credential ([`Recall`]) change two things. A guarded
//! answer confirmed before at the current key-set generation passes at once (`remembered`):
//! a cancelled account gets its 401 at the cost of one forward. And a guarded answer about to
//! pass (confirmed, no peer, too large) for a credential answered 2xx at the current
//! generation is refused with `503` (`accepted_at_generation`): a key cannot become invalid
//! while the key set keeps its generation, so the answer says the fleet lost keys.
//!
//! The rule is pure ([`before_asking`], [`verdict`], [`settle`]) and unit-tested on its own,
//! like `readiness::judge`; [`second_opinion`] does the I/O through the same [`exchange`]
//! loop as the forward path, and returns the outcome for the caller to count.

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Limited};

use super::credential;
use super::exchange::{exchange, Phase, Tried, Unanswered, Upstream};
use super::response::{retry_later, RespBody};
use super::Cx;
use crate::access_log::Entry;
use crate::backend::Backend;
use crate::metrics::GuardOutcome;
use crate::outlier::{self, Charge};
use crate::upstream::Outgoing;

/// Guarded answers larger than this are not kept for a possible pass-through.
const MAX_GUARDED_ANSWER: usize = 64 * 1024;

/// How a second opinion ends. `A` is an answer the client may get.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict<A> {
    /// This answer goes to the client.
    Answer(A, GuardOutcome),
    /// `503` with `Retry-After` and this message: the guarded answer stays unconfirmed.
    RetryLater(GuardOutcome, &'static str),
    /// `503` with `Retry-After`: the guarded answer was about to pass for a credential
    /// answered 2xx at the current key-set generation. The first backend is charged, and the
    /// peer too when `peer_agreed` (it confirmed the answer).
    Refused {
        /// A peer gave the guarded answer too.
        peer_agreed: bool,
    },
}

/// What the pool's memories say of the request's credential when a guarded answer came.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Recall {
    /// A peer confirmed this guarded answer for the credential at the current generation.
    pub(super) remembered: bool,
    /// The credential was answered 2xx at the current generation.
    pub(super) accepted: bool,
}

/// Whether to ask at all, when a guarded answer `first` arrived. `Ok`: ask, with the first
/// answer and the request kept for a replay (`replay`: none when the body streamed or the
/// pool has a single backend); `Err`: the verdict without asking. `peers_configured`: the
/// pool has backends besides the first; `peer_ready`: whether one of them is ready now (asked
/// only when it matters: a pick advances the round-robin sequence). Pure.
pub(super) fn before_asking<A, R>(
    first: A,
    replay: Option<R>,
    peers_configured: bool,
    peer_ready: impl FnOnce() -> bool,
    recall: Recall,
) -> Result<(A, R), Verdict<A>> {
    // A remembered answer passes, unless the credential was also accepted since: then the
    // memory is no longer the fleet's last word, and a peer is asked as usual.
    if recall.remembered && !recall.accepted {
        return Err(Verdict::Answer(first, GuardOutcome::Remembered));
    }
    let passes = match replay {
        None if peers_configured => Verdict::Answer(first, GuardOutcome::TooLarge),
        None => Verdict::Answer(first, GuardOutcome::NoPeer),
        Some(_) if !peer_ready() => Verdict::Answer(first, GuardOutcome::NoPeer),
        Some(replay) => return Ok((first, replay)),
    };
    Err(settle(passes, recall.accepted))
}

/// A verdict about to pass a guarded answer (confirmed, no peer, too large), for a credential
/// `accepted` at the current generation, becomes a refusal; any other stays. Pure.
pub(super) fn settle<A>(verdict: Verdict<A>, accepted: bool) -> Verdict<A> {
    match verdict {
        Verdict::Answer(_, GuardOutcome::Confirmed) if accepted => {
            Verdict::Refused { peer_agreed: true }
        }
        Verdict::Answer(_, GuardOutcome::NoPeer | GuardOutcome::TooLarge) if accepted => {
            Verdict::Refused { peer_agreed: false }
        }
        verdict => verdict,
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

/// The guard's verdict on what it heard, for a credential `accepted` at the current
/// generation or not. Pure.
pub(super) fn verdict<A>(heard: Heard<A>, accepted: bool) -> Verdict<A> {
    settle(heard_verdict(heard), accepted)
}

/// The verdict on what was heard, before the memories have their say.
fn heard_verdict<A>(heard: Heard<A>) -> Verdict<A> {
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
    replay: Option<Outgoing>,
    mut tried: Tried,
    log: &mut Entry,
) -> (Response<RespBody>, GuardOutcome) {
    let pool = cx.pool;
    let first_backend = first.backend().clone();
    let status = first.status().as_u16();
    let recall = credential::recall(pool, cx.credential, status);
    // "Another ready backend exists" counts peers that already failed to connect for this
    // request: their failure leaves the answer unconfirmed, it does not make it confirmed.
    let has_replay = replay.is_some();
    let peer_ready = || has_replay && pool.pick(cx.hash_key, &[first_backend.id]).is_some();
    let asking = before_asking(
        first.into_response(),
        replay,
        pool.backends.len() > 1,
        peer_ready,
        recall,
    );
    let (first, mut replay) = match asking {
        Ok(asking) => asking,
        Err(verdict) => return conclude(cx, verdict, &first_backend, None, status, log),
    };
    if !pool.budget.try_spend() {
        return conclude(
            cx,
            verdict(Heard::BudgetSpent, recall.accepted),
            &first_backend,
            None,
            status,
            log,
        );
    }
    // Read the first answer now: its connection goes back to the pool, and it is still there
    // to pass on if the peers stop being ready before one is picked.
    cx.last_reading.clear();
    let first = buffer(first).await;
    pool.stats.guard_outcome(GuardOutcome::Replayed);
    tried.leave_out(first_backend.id);
    let mut peer_backend = None;
    let heard = match exchange(cx, Phase::SecondOpinion, &mut replay, &mut tried, log).await {
        Ok((peer, _)) => {
            peer_backend = Some(peer.backend().clone());
            let peer_status = peer.status();
            if peer_status.is_success() {
                if let Some(fp) = cx.credential {
                    credential::accepted(pool, fp);
                }
            }
            Heard::Opinion {
                confirms: pool.is_guarded(peer_status),
                peer: peer.into_response(),
            }
        }
        Err(Unanswered::NoBackend) => Heard::NoPeerLeft {
            silent: tried.failed(),
            first,
        },
        Err(Unanswered::BudgetSpent) => Heard::BudgetSpent,
        // A second opinion never stops on a broken exchange (its peer is skipped), so
        // `Broken` does not come back from this phase; it would leave the answer unconfirmed.
        Err(Unanswered::Exhausted | Unanswered::Broken(_)) => Heard::AllSilent,
    };
    conclude(
        cx,
        verdict(heard, recall.accepted),
        &first_backend,
        peer_backend.as_deref(),
        status,
        log,
    )
}

/// The client's answer for a verdict on `first`'s guarded answer `status` (with the peer that
/// was asked, if any), and what the verdict leaves behind: charges and memories. A `503` in
/// place of the answer is syncgate's own (`log` then names no backend).
fn conclude(
    cx: &Cx<'_>,
    verdict: Verdict<Response<RespBody>>,
    first: &Backend,
    peer: Option<&Backend>,
    status: u16,
    log: &mut Entry,
) -> (Response<RespBody>, GuardOutcome) {
    let pool = cx.pool;
    match verdict {
        Verdict::Answer(resp, outcome) => {
            match outcome {
                GuardOutcome::Contradicted => {
                    outlier::charge(cx.shared, pool, first, Charge::Contradicted);
                }
                GuardOutcome::Confirmed => {
                    if let Some(fp) = cx.credential {
                        credential::confirmed(pool, fp, status);
                    }
                }
                _ => {}
            }
            (resp, outcome)
        }
        Verdict::RetryLater(outcome, message) => {
            log.local_answer();
            (retry_later(pool, message, cx.request_id), outcome)
        }
        Verdict::Refused { peer_agreed } => {
            log.local_answer();
            pool.fleet.note_refusal();
            outlier::charge(cx.shared, pool, first, Charge::AcceptedCredential);
            if let Some(peer) = peer.filter(|_| peer_agreed) {
                outlier::charge(cx.shared, pool, peer, Charge::AcceptedCredential);
            }
            let message =
                "answer refused: the credential was accepted at the current key-set generation";
            (
                retry_later(pool, message, cx.request_id),
                GuardOutcome::AcceptedAtGeneration,
            )
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
    const NOTHING: Recall = Recall {
        remembered: false,
        accepted: false,
    };
    const REMEMBERED: Recall = Recall {
        remembered: true,
        accepted: false,
    };
    const ACCEPTED: Recall = Recall {
        remembered: false,
        accepted: true,
    };

    #[test]
    fn a_kept_request_with_a_ready_peer_is_asked() {
        assert_eq!(
            before_asking(FIRST, Some("req"), true, || true, NOTHING),
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
            before_asking::<_, ()>(FIRST, None, false, || false, NOTHING),
            pass(GuardOutcome::NoPeer)
        );
        // Peers exist, but the body streamed: it cannot be replayed.
        assert_eq!(
            before_asking::<_, ()>(FIRST, None, true, || true, NOTHING),
            pass(GuardOutcome::TooLarge)
        );
        // Peers are configured, none is ready.
        assert_eq!(
            before_asking(FIRST, Some("req"), true, || false, NOTHING),
            pass(GuardOutcome::NoPeer)
        );
    }

    #[test]
    fn a_guarded_peer_answer_confirms_any_other_contradicts() {
        assert_eq!(
            verdict(
                Heard::Opinion {
                    peer: PEER,
                    confirms: true
                },
                false
            ),
            Verdict::Answer(PEER, GuardOutcome::Confirmed)
        );
        assert_eq!(
            verdict(
                Heard::Opinion {
                    peer: PEER,
                    confirms: false
                },
                false
            ),
            Verdict::Answer(PEER, GuardOutcome::Contradicted)
        );
    }

    #[test]
    fn an_unconfirmed_answer_never_passes() {
        let unconfirmed = |heard| match verdict(heard, false) {
            Verdict::RetryLater(outcome, _) => outcome,
            other => panic!("{other:?}"),
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
            verdict(
                Heard::NoPeerLeft {
                    silent: 0,
                    first: Some(FIRST)
                },
                false
            ),
            Verdict::Answer(FIRST, GuardOutcome::NoPeer)
        );
    }

    #[test]
    fn a_remembered_answer_passes_without_asking_anyone() {
        let asked = std::cell::Cell::new(false);
        let peer_ready = || {
            asked.set(true);
            true
        };
        assert_eq!(
            before_asking(FIRST, Some("req"), true, peer_ready, REMEMBERED),
            Err(Verdict::Answer(FIRST, GuardOutcome::Remembered))
        );
        assert!(!asked.get(), "no pick for a remembered answer");
        // Accepted since it was remembered: a peer is asked as usual.
        let both = Recall {
            remembered: true,
            accepted: true,
        };
        assert_eq!(
            before_asking(FIRST, Some("req"), true, || true, both),
            Ok((FIRST, "req"))
        );
    }

    #[test]
    fn a_guarded_answer_for_an_accepted_credential_never_passes() {
        // Confirmed by a peer: refused, and the peer is charged too.
        assert_eq!(
            verdict(
                Heard::Opinion {
                    peer: PEER,
                    confirms: true
                },
                true
            ),
            Verdict::Refused { peer_agreed: true }
        );
        // No peer to ask, or a body too large to replay: refused, only the first charged.
        assert_eq!(
            before_asking(FIRST, Some("req"), true, || false, ACCEPTED),
            Err(Verdict::Refused { peer_agreed: false })
        );
        assert_eq!(
            before_asking::<_, ()>(FIRST, None, true, || true, ACCEPTED),
            Err(Verdict::Refused { peer_agreed: false })
        );
        assert_eq!(
            verdict(
                Heard::NoPeerLeft {
                    silent: 0,
                    first: Some(FIRST)
                },
                true
            ),
            Verdict::Refused { peer_agreed: false }
        );
        // A contradicting peer still wins; an unconfirmed answer stays a plain 503.
        assert_eq!(
            verdict(
                Heard::Opinion {
                    peer: PEER,
                    confirms: false
                },
                true
            ),
            Verdict::Answer(PEER, GuardOutcome::Contradicted)
        );
        assert_eq!(
            verdict(Heard::<&str>::BudgetSpent, true),
            Verdict::RetryLater(
                GuardOutcome::BudgetSpent,
                "retry budget spent: answer not confirmed"
            )
        );
        // With a peer to ask, an accepted credential is asked about like any other.
        assert_eq!(
            before_asking(FIRST, Some("req"), true, || true, ACCEPTED),
            Ok((FIRST, "req"))
        );
    }
}
