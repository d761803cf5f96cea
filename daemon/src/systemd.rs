//! systemd integration: `READY=1` once everything is loaded, watchdog pings from the main
//! loop, `STOPPING=1` and status lines. Outside systemd (no `NOTIFY_SOCKET`) these do nothing.

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A status line for `systemctl status` while running.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Half the watchdog period systemd asked for (`WatchdogSec=`), if it asked.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
