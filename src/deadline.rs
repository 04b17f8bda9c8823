//! Request deadlines and connection checks without a tokio timer each.
//!
//! `tokio::time::timeout` adds a timer-wheel entry, under the time driver's lock, for every
//! request that waits for its worker, and removes it when the request ends: 2.0% of the CPU
//! of a proxied request (docs/benchmarks.md). Here a request's deadline is a slot in its
//! proxy thread's list instead (no lock, no allocation once the list has grown), and one task
//! per proxy thread ([`sweep`] every [`TICK`], started by the server) wakes the requests whose
//! deadline has passed. A deadline is thus met up to one tick late.
//!
//! The sweep's clock reading also serves as the thread's coarse clock until the next one
//! ([`crate::clock::coarse`]).
//!
//! On a thread whose deadlines nobody sweeps (one that never called [`bind_thread`]), or for
//! a future polled on another thread than the one it was listed on, [`within`] falls back to
//! tokio's timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How often a proxy thread's deadlines are swept: how late a deadline can be met.
pub const TICK: Duration = Duration::from_millis(50);

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

thread_local! {
    static LIST: RefCell<List> = const {
        RefCell::new(List {
            id: 0,
            slots: Vec::new(),
            free: Vec::new(),
        })
    };
}

/// A thread's deadlines.
struct List {
    /// This thread's list, once [`bind_thread`] made it one that is swept (0: not swept).
    id: u64,
    slots: Vec<Option<Slot>>,
    /// Indexes of empty slots.
    free: Vec<usize>,
}

struct Slot {
    at: Instant,
    /// The waker of the last poll.
    waker: Waker,
    expired: bool,
}

/// Makes the calling thread's deadlines ones that [`sweep`] checks: call it on a thread that
/// then calls [`sweep`] every [`TICK`].
pub fn bind_thread() {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    LIST.with(|l| {
        let mut l = l.borrow_mut();
        if l.id == 0 {
            l.id = NEXT.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Wakes the calling thread's futures whose deadline has passed, and sets the thread's
/// coarse clock ([`crate::clock::coarse`]) to the reading it took for them.
pub fn sweep() {
    let now = Instant::now();
    crate::clock::set_coarse(Some(now.into_std()));
    let _ = LIST.try_with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else {
            return;
        };
        for slot in l.slots.iter_mut().flatten() {
            if !slot.expired && slot.at <= now {
                slot.expired = true;
                // Schedules the task; it is polled later, not from here.
                slot.waker.wake_by_ref();
            }
        }
    });
}

/// `fut`'s output, or [`Elapsed`] once `at` has passed (up to one [`TICK`] later) while it
/// was not complete. Like `tokio::time::timeout_at`, the future is polled first: an output
/// ready at the deadline is taken. Takes the future pinned where the caller keeps it: a
/// request's future is kilobytes, and is not moved again.
pub fn within<F: Future>(at: Instant, fut: Pin<&mut F>) -> Within<'_, F> {
    Within {
        fut,
        deadline: Alarm::at(at),
    }
}

/// The future of [`within`].
pub struct Within<'a, F> {
    fut: Pin<&'a mut F>,
    deadline: Alarm,
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match Pin::new(&mut this.deadline).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A deadline in the thread's list, waited for on its own: a connection's periodic check
/// (and [`within`]'s deadline). Polling it reads a flag in the list, where a tokio timer
/// would take atomics and the runtime's budget on each of the connection task's wake-ups.
/// Every open connection thus holds a slot (about 40 bytes) that each sweep reads: 10,000
/// connections on one thread are 400 KB read every [`TICK`].
pub struct Alarm {
    at: Instant,
    deadline: Registration,
}

impl Alarm {
    /// An alarm that goes off once `at` has passed (up to one [`TICK`] later).
    pub fn at(at: Instant) -> Alarm {
        Alarm {
            at,
            deadline: Registration::None,
        }
    }

    /// Sets the alarm to `at` instead; it gives its slot back, and its next poll takes one.
    pub fn reset(&mut self, at: Instant) {
        self.at = at;
        self.deadline = Registration::None;
    }
}

impl Future for Alarm {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.deadline.poll_expired(this.at, cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// How a waiting future's deadline is kept.
enum Registration {
    /// Not waited yet.
    None,
    /// Slot `key` of list `list`.
    Listed { list: u64, key: usize },
    /// tokio's timer (see the module's doc).
    Timer(Pin<Box<Sleep>>),
}

impl Registration {
    /// Whether the deadline has passed; else the task is woken when it does.
    fn poll_expired(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        if let Registration::Listed { list, key } = *self {
            let listed = LIST.try_with(|l| {
                let mut l = l.try_borrow_mut().ok()?;
                if l.id != list {
                    return None;
                }
                let slot = l.slots.get_mut(key)?.as_mut()?;
                if !slot.waker.will_wake(cx.waker()) {
                    slot.waker = cx.waker().clone();
                }
                Some(slot.expired)
            });
            if let Ok(Some(expired)) = listed {
                return expired;
            }
            // Polled on another thread (not on the proxy's current-thread runtimes), or the
            // list busy: the timer takes over, and the slot stays in its list until that
            // thread ends (a sweep only marks it expired).
            *self = Registration::None;
            return self.timer(at, cx);
        }
        if let Registration::Timer(sleep) = self {
            return sleep.as_mut().poll(cx).is_ready();
        }
        let listed = LIST.try_with(|l| {
            let mut l = l.try_borrow_mut().ok()?;
            if l.id == 0 {
                return None;
            }
            let slot = Slot {
                at,
                waker: cx.waker().clone(),
                expired: false,
            };
            let key = match l.free.pop() {
                Some(key) => {
                    l.slots[key] = Some(slot);
                    key
                }
                None => {
                    l.slots.push(Some(slot));
                    l.slots.len() - 1
                }
            };
            Some((l.id, key))
        });
        match listed {
            Ok(Some((list, key))) => {
                *self = Registration::Listed { list, key };
                false
            }
            _ => self.timer(at, cx),
        }
    }

    fn timer(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        let mut sleep = Box::pin(tokio::time::sleep_until(at));
        let expired = sleep.as_mut().poll(cx).is_ready();
        *self = Registration::Timer(sleep);
        expired
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Registration::Listed { list, key } = *self {
            let _ = LIST.try_with(|l| {
                if let Ok(mut l) = l.try_borrow_mut() {
                    if l.id == list {
                        // Freed once: a key on the free list twice would be shared by two.
                        if l.slots.get_mut(key).and_then(Option::take).is_some() {
                            l.free.push(key);
                        }
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::*;

    fn listed() -> usize {
        LIST.with(|l| l.borrow().slots.iter().flatten().count())
    }

    #[tokio::test]
    async fn a_swept_deadline_ends_a_waiting_future_and_frees_its_slot() {
        bind_thread();
        let at = Instant::now() + Duration::from_millis(20);
        let sweeper = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                sweep();
            }
        });
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            within(at, pin!(std::future::pending::<()>())),
        )
        .await
        .expect("the sweep ended it");
        assert_eq!(out, Err(Elapsed));
        assert!(Instant::now() >= at, "not before its deadline");
        assert_eq!(listed(), 0, "the slot is freed");

        // A future that completes first gives its output, and its slot back.
        let far = Instant::now() + Duration::from_secs(3600);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(async move { within(far, pin!(rx)).await });
        tokio::task::yield_now().await;
        assert_eq!(listed(), 1);
        tx.send(7).expect("send");
        assert_eq!(waiting.await.expect("task"), Ok(Ok(7)));
        assert_eq!(listed(), 0);
        sweeper.abort();
    }

    #[tokio::test]
    async fn an_alarm_goes_off_at_a_sweep_after_its_time_and_a_reset_gives_its_slot_back() {
        bind_thread();
        let sweeper = tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                sweep();
            }
        });
        let mut alarm = Alarm::at(Instant::now() + Duration::from_secs(3600));
        assert!(poll_once(&mut alarm).is_pending());
        assert_eq!(listed(), 1);
        let at = Instant::now() + Duration::from_millis(20);
        alarm.reset(at);
        assert_eq!(listed(), 0, "the old slot is given back");
        tokio::time::timeout(Duration::from_secs(5), &mut alarm)
            .await
            .expect("the sweep set it off");
        assert!(Instant::now() >= at, "not before its time");
        drop(alarm);
        assert_eq!(listed(), 0);
        sweeper.abort();
    }

    /// Polls `fut` once with a waker that does nothing.
    fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
        Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_sweep_sets_its_threads_coarse_clock() {
        let before = std::time::Instant::now();
        sweep();
        let swept = crate::clock::coarse();
        assert!(swept >= before);
        while std::time::Instant::now() == swept {}
        assert_eq!(
            crate::clock::coarse(),
            swept,
            "the sweep's reading until the next"
        );
        crate::clock::set_coarse(None);
    }

    #[test]
    fn a_thread_nobody_sweeps_uses_the_timer() {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let at = Instant::now() + Duration::from_millis(20);
                let pending = pin!(std::future::pending::<()>());
                let out = tokio::time::timeout(Duration::from_secs(5), within(at, pending))
                    .await
                    .expect("the timer ended it");
                assert_eq!(out, Err(Elapsed));
                assert!(Instant::now() >= at);
                assert_eq!(listed(), 0, "nothing listed without a sweeper");
            });
        })
        .join()
        .expect("thread");
    }
}
