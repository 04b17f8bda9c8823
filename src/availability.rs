//! Whether each pool can serve: one log line (and one event) when a pool that served loses
//! its last ready backend and its clients start getting `503`, and one when it has a ready
//! backend again.
//!
//! A control-plane task, woken by every event the [`EventLog`](crate::events::EventLog)
//! records (every backend state change is one), that counts each pool's ready backends.
//! [`next`] is the pure edge detector. A pool that has not had a ready backend yet (the cold
//! start, or a pool a reload just added) is starting, not down: its `503`s are logged by
//! nobody, as nothing was lost.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::snapshot::Shared;

/// What the watcher knows of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// No backend of it has been ready yet.
    Starting,
    /// It has a ready backend.
    Serving,
    /// It had ready backends and has none now: clients get `503`.
    Unavailable,
}

/// A change worth a log line and an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The last ready backend left.
    Lost,
    /// A backend is ready again after [`Change::Lost`].
    Recovered,
}

/// The pool's availability with `ready` ready backends, given what it was. Pure.
pub fn next(was: Availability, ready: usize) -> (Availability, Option<Change>) {
    use Availability::*;
    match (was, ready > 0) {
        (Starting, false) => (Starting, None),
        (Starting | Serving, true) => (Serving, None),
        (Serving, false) => (Unavailable, Some(Change::Lost)),
        (Unavailable, false) => (Unavailable, None),
        (Unavailable, true) => (Serving, Some(Change::Recovered)),
    }
}

/// Watches every pool of the running config until `token` is cancelled.
pub async fn watch(shared: Arc<Shared>, token: CancellationToken) {
    let mut pools: HashMap<Arc<str>, Availability> = HashMap::new();
    loop {
        // Registered before the states are read: an event recorded meanwhile wakes the next
        // round instead of being missed.
        let recorded = shared.events.recorded();
        tokio::pin!(recorded);
        recorded.as_mut().enable();
        review(&shared, &mut pools);
        tokio::select! {
            _ = token.cancelled() => return,
            _ = recorded => {}
        }
    }
}

/// One round: each pool's ready count against what it was.
fn review(shared: &Shared, pools: &mut HashMap<Arc<str>, Availability>) {
    let snapshot = shared.snapshot();
    for pool in &snapshot.pools {
        let ready = pool.backends.iter().filter(|b| b.is_routable()).count();
        let configured = pool.backends.len();
        let was = pools
            .get(&pool.name)
            .copied()
            .unwrap_or(Availability::Starting);
        let (now, change) = next(was, ready);
        pools.insert(pool.name.clone(), now);
        match change {
            Some(Change::Lost) => {
                let reason = format!("no ready backend of {configured}: clients get 503");
                tracing::warn!(pool = %pool.name, backends = configured, "pool has no ready backend; answering 503");
                shared
                    .events
                    .record(&pool.name, "", "serving", "unavailable", &reason);
            }
            Some(Change::Recovered) => {
                let reason = format!("{ready} of {configured} backends ready");
                tracing::info!(pool = %pool.name, ready, backends = configured, "pool has a ready backend again");
                shared
                    .events
                    .record(&pool.name, "", "unavailable", "serving", &reason);
            }
            None => {}
        }
    }
    pools.retain(|name, _| snapshot.pool(name).is_some());
}

#[cfg(test)]
mod tests {
    use super::*;
    use Availability::*;

    #[test]
    fn a_cold_start_is_no_outage() {
        assert_eq!(next(Starting, 0), (Starting, None));
        assert_eq!(next(Starting, 2), (Serving, None));
    }

    #[test]
    fn losing_the_last_ready_backend_and_getting_one_back_are_told_once_each() {
        assert_eq!(next(Serving, 3), (Serving, None));
        assert_eq!(next(Serving, 0), (Unavailable, Some(Change::Lost)));
        assert_eq!(next(Unavailable, 0), (Unavailable, None));
        assert_eq!(next(Unavailable, 1), (Serving, Some(Change::Recovered)));
        assert_eq!(next(Serving, 1), (Serving, None));
    }
}
