//! [`Conversations`]: the remembered turns of each session, bounded in turns and sessions.

use std::collections::VecDeque;

use sotad_engines::llm as engine;

/// Remembered conversations, least recently used first.
pub struct Conversations {
    max_sessions: usize,
    max_turns: usize,
    sessions: VecDeque<(String, Vec<engine::Message>)>,
}

impl Conversations {
    pub fn new(max_sessions: usize, max_turns: usize) -> Conversations {
        Conversations {
            max_sessions,
            max_turns: max_turns.max(1),
            sessions: VecDeque::new(),
        }
    }

    /// The remembered turns of `session` (empty if unknown); marks it most recently used.
    pub fn history(&mut self, session: &str) -> &[engine::Message] {
        match self.sessions.iter().position(|(s, _)| s == session) {
            Some(i) => {
                let entry = self.sessions.remove(i).expect("index from position");
                self.sessions.push_back(entry);
                &self.sessions.back().expect("just pushed").1
            }
            None => &[],
        }
    }

    /// Appends a turn (the new messages and the answer), dropping the oldest turns beyond
    /// the bound and the least recently used session beyond the session bound.
    pub fn remember(&mut self, session: &str, asked: &[engine::Message], answer: engine::Message) {
        if self.max_sessions == 0 {
            return;
        }
        let i = match self.sessions.iter().position(|(s, _)| s == session) {
            Some(i) => i,
            None => {
                if self.sessions.len() >= self.max_sessions {
                    self.sessions.pop_front();
                }
                self.sessions.push_back((session.to_string(), Vec::new()));
                self.sessions.len() - 1
            }
        };
        let turns = &mut self.sessions[i].1;
        turns.extend(
            asked
                .iter()
                .filter(|m| m.role != engine::Role::System)
                .cloned(),
        );
        turns.push(answer);
        // A turn starts at a user message. Beyond `max_turns`, the oldest are forgotten down
        // to half of it at once: every forgetting changes the prompt right after the system
        // prompt, so the whole history must be evaluated again; this way that happens once
        // every `max_turns / 2` turns instead of on every turn of a long conversation.
        let starts: Vec<usize> = turns
            .iter()
            .enumerate()
            .filter(|(_, m)| m.role == engine::Role::User)
            .map(|(i, _)| i)
            .collect();
        if starts.len() > self.max_turns {
            let keep = self.max_turns.div_ceil(2);
            let cut = starts[starts.len() - keep];
            turns.drain(..cut);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_keep_bounded_turns_and_sessions() {
        let mut c = Conversations::new(2, 4);
        let turns = |c: &mut Conversations| -> Vec<String> {
            c.history("a").iter().map(|m| m.content.clone()).collect()
        };
        for i in 0..4 {
            c.remember(
                "a",
                &[engine::Message::user(&format!("q{i}"))],
                engine::Message::assistant(&format!("a{i}")),
            );
        }
        assert_eq!(turns(&mut c).len(), 8, "four turns kept");
        // The fifth forgets down to half of the bound at once.
        c.remember(
            "a",
            &[engine::Message::user("q4")],
            engine::Message::assistant("a4"),
        );
        assert_eq!(turns(&mut c), ["q3", "a3", "q4", "a4"]);
        c.remember(
            "b",
            &[engine::Message::user("x")],
            engine::Message::assistant("y"),
        );
        c.remember(
            "c",
            &[engine::Message::user("x")],
            engine::Message::assistant("y"),
        );
        assert_eq!(c.len(), 2);
        assert!(
            c.history("a").is_empty(),
            "least recently used session forgotten"
        );
    }
}
