//! What syncgate tells systemd (`Type=notify-reload`), in one place. Every notification is a
//! no-op unless `NOTIFY_SOCKET` is set; a failure is logged at debug level and otherwise
//! ignored: the service runs the same whether or not systemd hears it.

/// A state syncgate reports to systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdState {
    /// Listening, or done reloading: `READY=1`.
    Ready,
    /// A reload began: `RELOADING=1`, with the monotonic timestamp systemd requires.
    Reloading,
    /// Shutting down: `STOPPING=1`.
    Stopping,
}

/// Tells systemd `state`.
pub fn notify_systemd(state: SystemdState) {
    use sd_notify::NotifyState;
    let result = match state {
        SystemdState::Ready => sd_notify::notify(false, &[NotifyState::Ready]),
        SystemdState::Reloading => NotifyState::monotonic_usec_now()
            .and_then(|now| sd_notify::notify(false, &[NotifyState::Reloading, now])),
        SystemdState::Stopping => sd_notify::notify(false, &[NotifyState::Stopping]),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "systemd notify failed");
    }
}
