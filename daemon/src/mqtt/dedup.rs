//! Recognizes QoS-1 redeliveries by request id, so that no request runs twice.
//!
//! MQTT's QoS 1 is "at least once": after a reconnect, the broker redelivers every request
//! whose acknowledgement it did not receive, and a publisher may resend one it is unsure of.
//! sotad remembers the ids of the last `capacity` requests per command; a request whose id is
//! among them is acknowledged, counted and not run again. Integrators must therefore use a
//! fresh id for every request (docs/protocol.md).

use std::collections::{HashSet, VecDeque};

use super::topics::Command;

/// A bounded set of recently seen `(command, id)` pairs; the oldest is forgotten first.
#[derive(Debug)]
pub struct RecentIds {
    seen: HashSet<(Command, String)>,
    order: VecDeque<(Command, String)>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds {
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    /// Records the pair; returns false when it was already recorded (a redelivery).
    pub fn first_time(&mut self, command: Command, id: &str) -> bool {
        let key = (command, id.to_string());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_recognized_until_forgotten() {
        let mut ids = RecentIds::new(2);
        assert!(ids.first_time(Command::Ping, "a"));
        assert!(!ids.first_time(Command::Ping, "a"));
        assert!(ids.first_time(Command::Ping, "b"));
        assert!(ids.first_time(Command::Ping, "c")); // forgets "a"
        assert_eq!(ids.len(), 2);
        assert!(ids.first_time(Command::Ping, "a"));
        assert!(!ids.first_time(Command::Ping, "c"));
    }
}
