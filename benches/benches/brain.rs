//! The default brain: answer quality and latency of the models in the set on the spoken
//! question set (`benches/data/questions.tsv`, typed here; `voice.rs` speaks it), for a few
//! system prompts and temperatures, each question alone and the set as one conversation.
//!
//! ```text
//! cargo bench -p sotad-benches --bench brain
//! SOTAD_BENCH_MODELS=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf cargo bench -p sotad-benches --bench brain
//! ```
//! Environment: `SOTAD_BENCH_MODELS` (comma-separated file names in the models directory;
//! default SmolLM2-135M-Instruct Q4_1 and Qwen2.5-Coder-0.5B-Instruct Q4_K_M),
//! `SOTAD_BENCH_THREADS` (default 2), `SOTAD_BENCH_RUNS` (see [`runs`]), `SOTAD_BENCH_VERBOSE=1` (every answer, not only the
//! wrong ones). Gemma-3-270m is not measured: it is a base model without a chat template.
//!
//! Per run: the fraction of questions answered correctly (a keyword, and not in another
//! language), the fraction not in another language (`sotad_engines::llm::language`: function
//! words and scripts), the mean answer length in words, the median time to first token (the
//! question's own tokens evaluated; the system prompt is cached, as in the daemon) and the
//! median decode rate. Sampling as `configs/default.toml` (top-k 40, top-p 0.95, min-p 0.05,
//! repeat penalty 1.1), answers capped at 64 tokens, seed = the question's index.
//! `conversation` asks the whole set in one conversation, its history bounded as the daemon's
//! (`llm.session_turns` = 8: beyond 8 turns, the oldest are forgotten down to 4); `guarded`
//! leaves an answer in another language (and its question) out of the history, as the daemon
//! does; `poisoned` starts the conversation with the French exchange the voice bench saw at
//! the old defaults in its history (what the guard now keeps out), to measure its effect.

use std::ops::ControlFlow;

use sotad_benches::{models_dir, self_status_kib};
use sotad_engines::llm::language;
use sotad_engines::llm::{GenerateOptions, LoadOptions, Message, Model, Role, Session};
use sotad_tests::questions::{self, Answered, Question};

/// The system prompts compared.
const PROMPTS: [(&str, &str); 3] = [
    (
        "friendly",
        "You are a friendly robot. Answer in one or two short sentences.",
    ),
    (
        "english",
        "You are a helpful robot. Always answer in English, in one short sentence.",
    ),
    ("none", ""),
];

/// How the questions are asked.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Each question in a conversation of its own.
    Alone,
    /// The whole set as one conversation.
    Conversation,
    /// One conversation, answers in another language left out of the history.
    Guarded,
    /// One conversation that starts with the French exchange the voice bench saw at the old
    /// defaults (`POISON`) left in its history, as it was before the guard.
    Poisoned,
}

/// The drifted exchange of the voice bench at the old defaults (SmolLM2, temperature 0.7),
/// after which every answer of the conversation was French.
const POISON: [&str; 2] = [
    "What time is it?",
    "La femme de France est une femme du Canada, et elle est très belle.",
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Alone => "alone",
            Mode::Conversation => "conversation",
            Mode::Guarded => "guarded",
            Mode::Poisoned => "poisoned",
        }
    }
}

const MAX_TOKENS: usize = 64;
const SESSION_TURNS: usize = 8;

fn run(
    session: &mut Session,
    set: &[Question],
    system: &str,
    temperature: f32,
    mode: Mode,
) -> Vec<Answered> {
    let verbose = std::env::var_os("SOTAD_BENCH_VERBOSE").is_some();
    let mut history: Vec<Message> = Vec::new();
    if mode == Mode::Poisoned {
        history.push(Message::user(POISON[0]));
        history.push(Message::assistant(POISON[1]));
    }
    let mut out = Vec::new();
    for (i, q) in set.iter().enumerate() {
        let mut messages = Vec::new();
        if !system.is_empty() {
            messages.push(Message::system(system));
        }
        if mode != Mode::Alone {
            messages.extend(history.iter().cloned());
        }
        messages.push(Message::user(&q.text));
        let options = GenerateOptions {
            max_tokens: MAX_TOKENS,
            temperature,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed: i as u64,
            ..Default::default()
        };
        let reply = session
            .chat(&messages, &options, |_| ControlFlow::Continue(()))
            .expect("generate");
        let answer = reply.text.trim().to_string();
        let tok_s = if reply.timings.generated_tokens >= 2 {
            reply.timings.decode_tok_s
        } else {
            f64::NAN
        };
        let a = Answered::new(q, &answer, reply.timings.ttft_ms, tok_s);
        if verbose || !a.correct {
            println!(
                "      {} {:?} -> {:?}",
                if a.correct { "ok " } else { "BAD" },
                q.text,
                answer.chars().take(100).collect::<String>()
            );
        }
        let keep = mode == Mode::Conversation
            || mode == Mode::Poisoned
            || (mode == Mode::Guarded
                && (language::guess(&answer).is_not_other()
                    || language::asks_for_other_language(&q.text)));
        if keep {
            history.push(Message::user(&q.text));
            history.push(Message::assistant(&answer));
            let turns = history.iter().filter(|m| m.role == Role::User).count();
            if turns > SESSION_TURNS {
                // Down to half, as daemon/src/stages/conversations.rs.
                let keep_turns = SESSION_TURNS.div_ceil(2);
                history.drain(..2 * (turns - keep_turns));
            }
        }
        out.push(a);
    }
    out
}

/// The runs: `SOTAD_BENCH_RUNS` (comma-separated `prompt:temperature:mode`, e.g.
/// `english:0.2:guarded`), else every prompt alone at 0.7 and 0.2, the `english` prompt alone
/// at 0, and the old defaults (`friendly`, 0.7) and the new ones (`english`, 0.2) as
/// conversations: plain, guarded, and poisoned.
fn runs() -> Vec<(&'static str, f32, Mode)> {
    if let Ok(list) = std::env::var("SOTAD_BENCH_RUNS") {
        return list
            .split(',')
            .map(|r| {
                let parts: Vec<&str> = r.trim().split(':').collect();
                let bad = || panic!("SOTAD_BENCH_RUNS: {r:?} is not prompt:temperature:mode");
                let [name, t, mode] = parts[..] else { bad() };
                let name = PROMPTS
                    .iter()
                    .map(|(n, _)| *n)
                    .find(|n| *n == name)
                    .unwrap_or_else(|| bad());
                let mode = [
                    Mode::Alone,
                    Mode::Conversation,
                    Mode::Guarded,
                    Mode::Poisoned,
                ]
                .into_iter()
                .find(|m| m.name() == mode)
                .unwrap_or_else(|| bad());
                (name, t.parse().unwrap_or_else(|_| bad()), mode)
            })
            .collect();
    }
    let mut runs = Vec::new();
    for (name, _) in PROMPTS {
        for t in [0.7, 0.2] {
            runs.push((name, t, Mode::Alone));
        }
    }
    runs.push(("english", 0.0, Mode::Alone));
    for mode in [Mode::Conversation, Mode::Guarded, Mode::Poisoned] {
        runs.push(("friendly", 0.7, mode));
        runs.push(("english", 0.2, mode));
    }
    runs
}

fn main() {
    let models: Vec<String> = std::env::var("SOTAD_BENCH_MODELS")
        .map(|m| m.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|_| {
            vec![
                "smollm2-135m-instruct-q4_1.gguf".into(),
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf".into(),
            ]
        });
    let threads = std::env::var("SOTAD_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let set = questions::load();
    println!(
        "brain: {} questions ({}), {threads} threads, answers capped at {MAX_TOKENS} tokens",
        set.len(),
        questions::FILE
    );
    for file in &models {
        let path = models_dir().join(file);
        let model = Model::load(
            &path,
            &LoadOptions {
                context_len: 2048,
                threads,
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut session = model.session();
        println!("{file}");
        let runs = runs();
        for (name, t, mode) in runs {
            let prompt = PROMPTS
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("", |(_, p)| *p);
            let answered = run(&mut session, &set, prompt, t, mode);
            println!(
                "  {:8} t={t:.1} {:12} {}",
                name,
                mode.name(),
                questions::summary(&answered)
            );
        }
        println!(
            "  RSS after the runs: {:.0} MiB ({:.0} MiB anonymous, {:.0} MiB file-backed)",
            self_status_kib("VmRSS:") as f64 / 1024.0,
            self_status_kib("RssAnon:") as f64 / 1024.0,
            self_status_kib("RssFile:") as f64 / 1024.0
        );
    }
}
