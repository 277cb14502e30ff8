//! systemd's readiness protocol (sd_notify(3)). Under `Type=notify`
//! (packaging/ftpgate.service) the unit counts as started only once the
//! daemon says READY=1, so `systemctl start` returns, and units ordered
//! after ftpgate start, when a redirected client would really be served;
//! STOPPING=1 shows the drain after SIGTERM as "deactivating".
//!
//! Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.

use sd_notify::NotifyState;
use slog::{warn, Logger};

/// The control listeners are bound and the privileges dropped.
pub(crate) fn notify_ready(log: &Logger) {
    send(log, &[NotifyState::Ready, NotifyState::Status("serving")], "READY=1");
}

/// A signal started the drain: the control listeners are closed, running
/// sessions get --drain-timeout to finish.
pub(crate) fn notify_stopping(log: &Logger) {
    send(log, &[NotifyState::Stopping, NotifyState::Status("draining")], "STOPPING=1");
}

fn send(log: &Logger, states: &[NotifyState<'_>], what: &'static str) {
    if let Err(e) = sd_notify::notify(states) {
        // Not fatal for the gateway itself, but under Type=notify systemd
        // ends a unit that never said READY=1 after TimeoutStartSec.
        warn!(
            log, "cannot notify the service manager";
            "state" => what, "error" => %e,
            "hint" => "the unit needs NotifyAccess=main and AF_UNIX in RestrictAddressFamilies="
        );
    }
}
