//! [`Hold`]: how one stage pauses another's generation between two tokens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lets another stage pause a generation between two tokens. The voice loop holds its answer's
/// generation while Piper synthesizes the first spoken piece (`voice.first_audio_priority`):
/// on a board with two cores the LLM's threads would otherwise take half the CPU from the one
/// job the person is waiting for. A hold lasts at most [`Hold::LIMIT`] from when it was set,
/// released or not, and a cancelled generation does not wait.
#[derive(Debug, Default)]
pub struct Hold {
    /// When the hold was set; `None` when released.
    since: Mutex<Option<Instant>>,
    released: Condvar,
}

impl Hold {
    /// The longest a hold keeps a generation waiting.
    pub const LIMIT: Duration = Duration::from_secs(1);

    pub fn hold(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn release(&self) {
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.released.notify_all();
    }

    /// Sets the hold until the returned guard is dropped.
    pub fn guard(self: Arc<Self>) -> HoldGuard {
        self.hold();
        HoldGuard(self)
    }

    /// Waits while held (until [`Hold::LIMIT`] after the hold was set), and returns early once
    /// `cancel` is set. Returns how long it waited.
    pub fn wait(&self, cancel: &AtomicBool) -> Duration {
        let start = Instant::now();
        let mut since = self.since.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(t) = *since
            && !cancel.load(Ordering::Relaxed)
        {
            let left = Self::LIMIT.saturating_sub(t.elapsed());
            if left.is_zero() {
                break;
            }
            // Short slices, so a cancel (which does not notify) is seen soon.
            since = self
                .released
                .wait_timeout(since, left.min(Duration::from_millis(20)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        start.elapsed()
    }
}

/// Releases its [`Hold`] when dropped, whichever way its owner ends.
#[derive(Debug)]
pub struct HoldGuard(Arc<Hold>);

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_pauses_the_generation_until_released_or_cancelled() {
        let no = AtomicBool::new(false);
        // Not held: no wait.
        let hold = Arc::new(Hold::default());
        assert!(hold.wait(&no) < Duration::from_millis(50));
        // Held, released by another thread after 100 ms.
        hold.hold();
        let releaser = {
            let hold = hold.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                hold.release();
            })
        };
        let waited = hold.wait(&no);
        releaser.join().unwrap();
        assert!(
            waited >= Duration::from_millis(90) && waited < Hold::LIMIT,
            "{waited:?}"
        );
        // Held and cancelled: returns at once.
        hold.hold();
        assert!(hold.wait(&AtomicBool::new(true)) < Duration::from_millis(50));
        // Held and never released: bounded by the limit, counted from the hold, so the
        // next token does not wait again.
        let waited = hold.wait(&no);
        assert!(
            waited >= Hold::LIMIT - Duration::from_millis(100)
                && waited < Hold::LIMIT + Duration::from_millis(500),
            "{waited:?}"
        );
        assert!(hold.wait(&no) < Duration::from_millis(50));
    }
}
