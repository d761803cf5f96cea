//! [`Conversations`]: the remembered turns of each session, bounded in turns and sessions,
//! forgotten after an idle time, and kept in the conversation's language.
//!
//! The clock is the caller's (`now` arguments), so that forgetting is tested without waiting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sotad_engines::llm as engine;
use sotad_engines::llm::language::{self, Language};

/// Remembered conversations, least recently used first.
pub struct Conversations {
    max_sessions: usize,
    max_turns: usize,
    /// A session not used for longer is forgotten (`None`: never).
    idle: Option<Duration>,
    sessions: VecDeque<Session>,
}

struct Session {
    id: String,
    turns: Vec<engine::Message>,
    /// When it was last asked or answered.
    used: Instant,
}

/// Whether an exchange joins the history: not when the reply is in another language
/// ([`language::guess`]) than an English (or too short to tell) question that does not ask
/// for one. A small model that drifted into French once would otherwise see French in every
/// later prompt of the conversation and answer in French from then on (docs/benchmarks.md,
/// "The default brain"). A question in another language, or one that names a language
/// ("how do you say thank you in Spanish?"), keeps its reply whatever its language.
pub fn keeps_reply(question: &str, reply: &str) -> bool {
    language::guess(reply) != Language::Other
        || language::guess(question) == Language::Other
        || language::asks_for_other_language(question)
}

impl Conversations {
    /// At most `max_sessions` sessions of `max_turns` turns each; `idle_s` seconds without
    /// use forget a session (0: never).
    pub fn new(max_sessions: usize, max_turns: usize, idle_s: u64) -> Conversations {
        Conversations {
            max_sessions,
            max_turns: max_turns.max(1),
            idle: (idle_s > 0).then(|| Duration::from_secs(idle_s)),
            sessions: VecDeque::new(),
        }
    }

    /// Forgets the sessions idle for longer than the idle time at `now`.
    fn forget_idle(&mut self, now: Instant) {
        if let Some(idle) = self.idle {
            self.sessions
                .retain(|s| now.saturating_duration_since(s.used) <= idle);
        }
    }

    /// The remembered turns of `session` (empty if unknown or forgotten for being idle at
    /// `now`); marks it most recently used at `now`.
    pub fn history(&mut self, session: &str, now: Instant) -> &[engine::Message] {
        self.forget_idle(now);
        match self.sessions.iter().position(|s| s.id == session) {
            Some(i) => {
                let mut entry = self.sessions.remove(i).expect("index from position");
                entry.used = now;
                self.sessions.push_back(entry);
                &self.sessions.back().expect("just pushed").turns
            }
            None => &[],
        }
    }

    /// Appends a turn (the new messages and the answer) at `now`, dropping the oldest turns
    /// beyond the bound and the least recently used session beyond the session bound.
    /// Returns false, remembering nothing, when the answer is in another language than the
    /// question ([`keeps_reply`]).
    pub fn remember(
        &mut self,
        session: &str,
        asked: &[engine::Message],
        answer: engine::Message,
        now: Instant,
    ) -> bool {
        self.forget_idle(now);
        if self.max_sessions == 0 {
            return true;
        }
        let question = asked
            .iter()
            .rev()
            .find(|m| m.role == engine::Role::User)
            .map_or("", |m| m.content.as_str());
        if !keeps_reply(question, &answer.content) {
            return false;
        }
        let i = match self.sessions.iter().position(|s| s.id == session) {
            Some(i) => i,
            None => {
                if self.sessions.len() >= self.max_sessions {
                    self.sessions.pop_front();
                }
                self.sessions.push_back(Session {
                    id: session.to_string(),
                    turns: Vec::new(),
                    used: now,
                });
                self.sessions.len() - 1
            }
        };
        let entry = &mut self.sessions[i];
        entry.used = now;
        let turns = &mut entry.turns;
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
        true
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

    fn ask(c: &mut Conversations, session: &str, q: &str, a: &str, now: Instant) -> bool {
        c.remember(
            session,
            &[engine::Message::user(q)],
            engine::Message::assistant(a),
            now,
        )
    }

    fn contents(c: &mut Conversations, session: &str, now: Instant) -> Vec<String> {
        c.history(session, now)
            .iter()
            .map(|m| m.content.clone())
            .collect()
    }

    #[test]
    fn conversations_keep_bounded_turns_and_sessions() {
        let now = Instant::now();
        let mut c = Conversations::new(2, 4, 0);
        for i in 0..4 {
            ask(&mut c, "a", &format!("q{i}"), &format!("a{i}"), now);
        }
        assert_eq!(contents(&mut c, "a", now).len(), 8, "four turns kept");
        // The fifth forgets down to half of the bound at once.
        ask(&mut c, "a", "q4", "a4", now);
        assert_eq!(contents(&mut c, "a", now), ["q3", "a3", "q4", "a4"]);
        ask(&mut c, "b", "x", "y", now);
        ask(&mut c, "c", "x", "y", now);
        assert_eq!(c.len(), 2);
        assert!(
            c.history("a", now).is_empty(),
            "least recently used session forgotten"
        );
    }

    #[test]
    fn a_conversation_is_forgotten_after_the_idle_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut c = Conversations::new(4, 8, 300);
        ask(
            &mut c,
            "a",
            "My name is Anna.",
            "Nice to meet you, Anna.",
            t0,
        );
        ask(&mut c, "b", "Hello.", "Hello! How can I help?", t0);
        // Asked again within the idle time: remembered, and the clock starts again.
        assert_eq!(contents(&mut c, "a", t0 + s(299)).len(), 2);
        assert_eq!(contents(&mut c, "a", t0 + s(598)).len(), 2);
        // `b` was last used at t0: forgotten at t0 + 301, whoever asks.
        assert_eq!(c.len(), 1, "b forgotten after 300 s idle");
        assert!(c.history("b", t0 + s(598)).is_empty());
        // `a` idle for 301 s since its last use.
        assert!(c.history("a", t0 + s(899)).is_empty());
        assert!(c.is_empty());
        // A new turn after forgetting starts a new conversation.
        ask(
            &mut c,
            "a",
            "What is my name?",
            "I do not know.",
            t0 + s(900),
        );
        assert_eq!(
            contents(&mut c, "a", t0 + s(900)),
            ["What is my name?", "I do not know."]
        );
    }

    #[test]
    fn an_idle_time_of_zero_never_forgets() {
        let t0 = Instant::now();
        let mut c = Conversations::new(4, 8, 0);
        ask(&mut c, "a", "Hello.", "Hi.", t0);
        assert_eq!(
            contents(&mut c, "a", t0 + Duration::from_secs(86_400 * 365)).len(),
            2
        );
    }

    #[test]
    fn a_reply_in_another_language_is_not_remembered() {
        let now = Instant::now();
        let mut c = Conversations::new(4, 8, 300);
        ask(&mut c, "a", "What is the capital of France?", "Paris.", now);
        assert!(!ask(
            &mut c,
            "a",
            "What is two plus two?",
            "La femme de France est une femme du Canada.",
            now
        ));
        assert_eq!(
            contents(&mut c, "a", now),
            ["What is the capital of France?", "Paris."],
            "the drifted turn left no trace"
        );
        // Asked for, or asked in, another language: kept.
        assert!(ask(
            &mut c,
            "a",
            "Say good morning in French, in a whole sentence.",
            "Bonjour, je suis un robot et je vous souhaite une bonne journée.",
            now
        ));
        assert!(ask(
            &mut c,
            "a",
            "Quelle est la capitale de la France ?",
            "La capitale de la France est Paris.",
            now
        ));
        assert_eq!(contents(&mut c, "a", now).len(), 6);
    }

    #[test]
    fn keeps_reply_decides_on_the_question_and_the_reply() {
        assert!(keeps_reply("What is your name?", "I am a robot."));
        assert!(keeps_reply("What is your name?", "Robo."));
        assert!(!keeps_reply(
            "How are you?",
            "Je suis très content, et vous ?"
        ));
        assert!(keeps_reply(
            "Translate I am happy.",
            "Je suis très content, et vous ?"
        ));
    }
}
