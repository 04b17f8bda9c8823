//! The bounded log of backend state transitions that the admin API serves.
//!
//! Written only when a backend changes state (rare), read by the admin API; a `Mutex` around a
//! ring buffer is enough. Every event has a sequence number so that a client can follow the
//! log with `?since=N` without missing or repeating events.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::clock::rfc3339;

/// One state transition.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Sequence number, starting at 1, increasing by one per event.
    pub seq: u64,
    /// Wall-clock time, RFC 3339 with milliseconds, UTC.
    pub at: String,
    /// Pool of the backend.
    pub pool: String,
    /// Backend name.
    pub backend: String,
    /// State left.
    pub from: &'static str,
    /// State entered.
    pub to: &'static str,
    /// Why, as DESIGN.md words reasons (`connect refused`, `3 probes passed`).
    pub reason: String,
}

/// A bounded, sequence-numbered event log.
#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    inner: Mutex<(u64, VecDeque<Event>)>,
    /// Woken after each event (see [`EventLog::recorded`]).
    recorded: Notify,
}

impl EventLog {
    /// A log keeping the newest `capacity` events.
    pub fn new(capacity: usize) -> EventLog {
        EventLog {
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::with_capacity(capacity.min(4096)))),
            recorded: Notify::new(),
        }
    }

    /// Appends a transition between two states (named as the admin API spells them), dropping
    /// the oldest event when full.
    pub fn record(
        &self,
        pool: &str,
        backend: &str,
        from: &'static str,
        to: &'static str,
        reason: &str,
    ) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (seq, events) = &mut *guard;
        *seq += 1;
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(Event {
            seq: *seq,
            at: rfc3339(SystemTime::now()),
            pool: pool.to_string(),
            backend: backend.to_string(),
            from,
            to,
            reason: reason.to_string(),
        });
        drop(guard);
        self.recorded.notify_waiters();
    }

    /// Completes after the next event is recorded. A waiter that must not miss an event
    /// recorded between its last look and its wait enables the future (`Notified::enable`)
    /// before it looks.
    pub fn recorded(&self) -> Notified<'_> {
        self.recorded.notified()
    }

    /// Events with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.iter().filter(|e| e.seq > since).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_sequenced() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.record("p", &format!("b{i}"), "pending", "ready", "ok");
        }
        let all = log.since(0);
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(all[0].backend, "b2");
        assert_eq!(log.since(4).len(), 1);
        assert!(log.since(5).is_empty());
    }
}
