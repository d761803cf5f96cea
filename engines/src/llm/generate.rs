//! Generation: prefix reuse, prefill, the decode loop, streaming with stop strings and
//! thinking separation, cancellation, timings.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::chat::Message;
use super::sample::Sampler;
use super::{LlmError, LlmErrorKind, SINK_TOKENS, Session};
use crate::error::Result;

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random draws.
    pub seed: u64,
    /// Stop when the visible text contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Let a thinking model think (Qwen3 `enable_thinking`); the thinking text is returned
    /// in [`Reply::thinking`] and never streamed.
    pub thinking: bool,
    /// Checked between tokens; set it to cancel.
    pub cancel: Option<Arc<AtomicBool>>,
    /// When the context is full, drop the middle and go on (see the module docs); when
    /// false, stop with [`StopReason::ContextFull`].
    pub slide_context: bool,
    /// A chat prompt ([`Session::chat`]) longer than the context: when true, the oldest
    /// messages after the system prompt are dropped (then the start of the last message is
    /// cut) until it fits, and the reply says so in [`Timings::dropped_messages`] and
    /// [`Timings::cut_tokens`]; when false, the chat is refused with
    /// [`super::LlmErrorKind::ContextFull`]. The system prompt is never dropped.
    pub truncate_prompt: bool,
    /// Constrain the output to this grammar ([`super::Model::grammar`]): at each step the
    /// tokens it does not allow are masked out before sampling (which is otherwise the
    /// same), and generation ends when the grammar is complete. `None` leaves decoding
    /// exactly as it is without one.
    pub grammar: Option<super::Grammar>,
    /// Tools passed to the chat template as `tools` (a JSON array, the OpenAI shape), for
    /// templates that describe them in the prompt (Qwen2.5's does). Only [`Session::chat`].
    pub tools: Option<Arc<serde_json::Value>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            stop: Vec::new(),
            thinking: false,
            cancel: None,
            slide_context: true,
            truncate_prompt: false,
            grammar: None,
            tools: None,
        }
    }
}

/// The prompt of a raw generation.
#[derive(Debug, Clone)]
pub enum Prompt<'a> {
    /// Text, tokenized with BOS (if the model wants one) and special tokens parsed.
    Text(&'a str),
    /// Token ids, used as they are.
    Tokens(&'a [u32]),
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn (EOS / end-of-turn token).
    Eos,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The callback returned `Break` or the cancel flag was set.
    Cancelled,
    /// The context is full and sliding is off.
    ContextFull,
}

/// Per-request measurements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, reused from the cache.
    pub cached_tokens: usize,
    /// Time to evaluate the uncached prompt tokens, ms.
    pub prefill_ms: f64,
    /// Uncached prompt tokens per second.
    pub prefill_tok_s: f64,
    /// From the call to the first generated token, ms.
    pub ttft_ms: f64,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent after the first token, ms.
    pub decode_ms: f64,
    /// Generated tokens after the first, per second.
    pub decode_tok_s: f64,
    /// Whole call, ms.
    pub total_ms: f64,
    /// Times the context was full and its middle dropped.
    pub context_slides: usize,
    /// Messages of a chat left out so that its prompt fits ([`GenerateOptions::truncate_prompt`]).
    pub dropped_messages: usize,
    /// Tokens cut from the start of a chat's last message so that its prompt fits.
    pub cut_tokens: usize,
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The visible text (thinking and stop string removed).
    pub text: String,
    /// The thinking text, if the model thought (`<think>…</think>`).
    pub thinking: Option<String>,
    /// The generated token ids (including a final end-of-turn token).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Measurements.
    pub timings: Timings,
    /// Under a grammar, the geometric mean of the chosen tokens' probabilities in the
    /// model's own (unmasked, temperature 1) distribution: how much the model itself meant
    /// what the grammar let through. `None` without a grammar.
    pub probability: Option<f32>,
}

/// Splits the raw output into thinking and visible text and finds stop strings.
struct TextStream {
    raw: Vec<u8>,
    emitted: usize,
}

struct View {
    thinking: Option<String>,
    visible: String,
    /// Visible bytes that may be streamed now.
    safe: usize,
    stopped: bool,
}

impl TextStream {
    /// Where the unstreamed text starts in `visible` (a character boundary; an incomplete
    /// UTF-8 sequence that turned out invalid may have shifted it).
    fn start_in(&self, visible: &str) -> usize {
        let mut start = self.emitted.min(visible.len());
        while !visible.is_char_boundary(start) {
            start += 1;
        }
        start
    }

    fn view(&self, stops: &[String], finished: bool) -> View {
        // Hold back an incomplete UTF-8 sequence at the end.
        let valid = match std::str::from_utf8(&self.raw) {
            Ok(_) => self.raw.len(),
            Err(e) if e.error_len().is_none() && !finished => e.valid_up_to(),
            Err(_) => self.raw.len(),
        };
        let text = String::from_utf8_lossy(&self.raw[..valid]);
        let trimmed = text.trim_start();
        let (thinking, mut visible, mut hold) = if let Some(rest) = trimmed.strip_prefix("<think>")
        {
            match rest.find("</think>") {
                Some(i) => (
                    Some(rest[..i].trim().to_owned()),
                    rest[i + "</think>".len()..].trim_start().to_owned(),
                    false,
                ),
                None => (Some(rest.trim().to_owned()), String::new(), true),
            }
        } else if !trimmed.is_empty() && "<think>".starts_with(trimmed) && !finished {
            (None, String::new(), true)
        } else {
            (None, text.into_owned(), false)
        };
        let mut stopped = false;
        if let Some(i) = stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| visible.find(s.as_str()))
            .min()
        {
            visible.truncate(i);
            stopped = true;
            hold = false;
        }
        let mut safe = if hold { 0 } else { visible.len() };
        if !stopped && !finished {
            // Keep back a suffix that could start a stop string.
            for s in stops.iter().filter(|s| !s.is_empty()) {
                for k in (1..s.len()).rev() {
                    if visible.ends_with(&s[..k.min(s.len())]) && s.is_char_boundary(k) {
                        safe = safe.min(visible.len() - k);
                        break;
                    }
                }
            }
        }
        while !visible.is_char_boundary(safe) {
            safe -= 1;
        }
        View {
            thinking,
            visible,
            safe,
            stopped,
        }
    }
}

impl Session {
    /// Evaluates a conversation into the cache without generating, so that a later
    /// [`Session::chat`] on it (or on it plus a new message, with `open_reply` false) only
    /// computes what is new. `open_reply` renders the assistant's turn opened, as `chat`
    /// does. Reuses the cached prefix; a conversation that does not fit in the context is
    /// left alone. Returns the number of tokens evaluated.
    ///
    /// For idle time: between turns (when a conversation's oldest turns are forgotten, its
    /// rendered prompt changes near the start and the whole history has to be recomputed),
    /// or while it is not yet sure that a question is finished.
    pub fn prefill_chat(
        &mut self,
        messages: &[Message],
        open_reply: bool,
        thinking: bool,
    ) -> Result<usize> {
        let text = self
            .model
            .inner
            .template
            .render(messages, open_reply, thinking)?;
        self.prefill_text(&text)
    }

    /// Like [`Session::prefill_chat`] without the reply opened, and also the start of the
    /// user's next message: the template's text up to where that message's words go (for
    /// ChatML, `<|im_start|>user\n`), so that the next question computes only its own words
    /// and what follows them. The history is rendered as it will be with a user message
    /// after it, which some templates render differently from a conversation that ends
    /// there. A template that does not show a message's content verbatim gets the
    /// conversation alone.
    pub fn prefill_before_user(&mut self, messages: &[Message], thinking: bool) -> Result<usize> {
        // A private-use character stands for the next question's words.
        const WORDS: &str = "\u{F8FF}";
        let mut next = messages.to_vec();
        next.push(Message::user(WORDS));
        let template = &self.model.inner.template;
        let text = template.render(&next, false, thinking)?;
        let text = match text.find(WORDS) {
            Some(at) if text[at + WORDS.len()..].find(WORDS).is_none() => text[..at].to_owned(),
            _ => template.render(messages, false, thinking)?,
        };
        self.prefill_text(&text)
    }

    /// Evaluates the prompt `text` into the cache from where it differs from the cached
    /// tokens; see [`Session::prefill_chat`].
    fn prefill_text(&mut self, text: &str) -> Result<usize> {
        let ids = self.model.inner.tokenizer.encode(text, true, true);
        if ids.is_empty() || ids.len() + 1 > self.model.inner.config.context_len {
            return Ok(0);
        }
        let common = self
            .tokens
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        if common == ids.len() {
            return Ok(0);
        }
        self.truncate(common);
        self.eval(&ids[common..])?;
        Ok(ids.len() - common)
    }

    /// Renders `messages` with the model's chat template and generates the assistant's reply.
    /// The streamed pieces are the visible text only (no thinking, no stop strings).
    pub fn chat(
        &mut self,
        messages: &[Message],
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Reply> {
        let (ids, dropped_messages, cut_tokens) = self.chat_prompt(messages, opts)?;
        let mut reply = self.generate(Prompt::Tokens(&ids), opts, on_text)?;
        reply.timings.dropped_messages = dropped_messages;
        reply.timings.cut_tokens = cut_tokens;
        Ok(reply)
    }

    /// The token ids of a chat's prompt, fitted into the context as
    /// [`GenerateOptions::truncate_prompt`] says: (ids, messages dropped, tokens cut).
    fn chat_prompt(
        &self,
        messages: &[Message],
        opts: &GenerateOptions,
    ) -> Result<(Vec<u32>, usize, usize)> {
        let model = &self.model.inner;
        let ctx = model.config.context_len;
        let full = |prompt_tokens: usize, hint: &'static str| {
            LlmError::error(
                None,
                None,
                LlmErrorKind::ContextFull {
                    prompt_tokens,
                    context: ctx,
                    hint,
                },
            )
        };
        let mut messages = messages.to_vec();
        let (mut dropped, mut cut) = (0usize, 0usize);
        // Each round drops a message or cuts the last one, so the loop ends; the bound
        // is for the cut, whose re-rendered length can miss by a token or two.
        for _ in 0..messages.len() + 16 {
            let text = model.template.render_with_tools(
                &messages,
                true,
                opts.thinking,
                opts.tools.as_deref(),
            )?;
            let ids = model.tokenizer.encode(&text, true, true);
            if ids.len() < ctx {
                return Ok((ids, dropped, cut));
            }
            if !opts.truncate_prompt {
                return Err(full(
                    ids.len(),
                    "; shorten it, or ask for truncation (the oldest messages after the system prompt are left out)",
                ));
            }
            let first = messages
                .iter()
                .position(|m| m.role != super::Role::System)
                .unwrap_or(messages.len());
            if first + 1 < messages.len() {
                // The oldest exchange: a user message and the assistant's answer to it.
                messages.remove(first);
                dropped += 1;
                if first + 1 < messages.len() && messages[first].role == super::Role::Assistant {
                    messages.remove(first);
                    dropped += 1;
                }
                continue;
            }
            // The system prompt and the last message: keep the end of the last message.
            let n = messages.len();
            let Some(last) = messages.last_mut().filter(|_| first < n) else {
                return Err(full(ids.len(), "; the system prompt alone does not fit"));
            };
            let own = model.tokenizer.encode(&last.content, false, false);
            let excess = ids.len() + 1 - ctx;
            let keep = own.len().saturating_sub(excess + 1);
            if keep == 0 {
                return Err(full(
                    ids.len(),
                    "; the system prompt leaves no room for the last message",
                ));
            }
            cut += own.len() - keep;
            let tail = model.tokenizer.decode(&own[own.len() - keep..], false);
            last.content = tail.trim_start_matches('\u{FFFD}').to_string();
        }
        Err(full(ctx, "; it could not be truncated to fit"))
    }

    /// Generates from a raw prompt, reusing the cached prefix it shares with earlier calls.
    pub fn generate(
        &mut self,
        prompt: Prompt<'_>,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Reply> {
        let t0 = Instant::now();
        let model = self.model.clone();
        let tok = &model.inner.tokenizer;
        let ctx = model.inner.config.context_len;
        let mut ids = match prompt {
            Prompt::Text(t) => tok.encode(t, true, true),
            Prompt::Tokens(t) => t.to_vec(),
        };
        if ids.is_empty() {
            return Err(LlmError::request("the prompt is empty".into()));
        }
        let mut timings = Timings {
            prompt_tokens: ids.len(),
            ..Default::default()
        };
        // A prompt that does not fit: keep the sinks and the most recent tokens.
        if ids.len() + 1 > ctx {
            if !opts.slide_context {
                return Err(LlmError::request(format!(
                    "the prompt has {} tokens, the context holds {ctx}",
                    ids.len()
                )));
            }
            let keep_tail = ctx / 2;
            let sinks = SINK_TOKENS.min(ids.len());
            let tail = ids.split_off(ids.len() - keep_tail);
            ids.truncate(sinks);
            ids.extend(tail);
            timings.context_slides += 1;
        }
        // Reuse the common prefix (at least one token must be evaluated for logits).
        let common = self
            .tokens
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        self.truncate(common);
        timings.cached_tokens = common;
        let tp = Instant::now();
        self.eval(&ids[common..])?;
        timings.prefill_ms = tp.elapsed().as_secs_f64() * 1e3;
        let fresh = ids.len() - common;
        timings.prefill_tok_s = fresh as f64 / tp.elapsed().as_secs_f64().max(1e-9);

        let mut sampler = Sampler::new(
            opts.temperature,
            opts.top_k,
            opts.top_p,
            opts.min_p,
            opts.repeat_penalty,
            opts.repeat_last_n,
            opts.seed,
        );
        let mut matcher = opts.grammar.as_ref().map(|g| g.matcher());
        let grammar_error =
            |e: String| super::LlmError::error(None, None, LlmErrorKind::Grammar(e));
        let mut masked: Vec<f32> = Vec::new();
        let mut logprob_sum = 0f64;
        let mut history = ids.clone();
        let mut generated = Vec::new();
        let mut stream = TextStream {
            raw: Vec::new(),
            emitted: 0,
        };
        let mut first_at: Option<Instant> = None;
        let stop_reason;
        loop {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                stop_reason = StopReason::Cancelled;
                break;
            }
            if generated.len() >= opts.max_tokens {
                stop_reason = StopReason::MaxTokens;
                break;
            }
            let next = match matcher.as_mut() {
                None => sampler.sample(self.logits(), &history),
                Some(m) => {
                    let mask = m.compute_mask().map_err(|e| grammar_error(e.to_string()))?;
                    if mask.is_zero() {
                        return Err(grammar_error("the grammar allows no next token".into()));
                    }
                    let logits = self.logits();
                    let n = mask.len();
                    masked.clear();
                    masked.extend(logits.iter().enumerate().map(|(i, &v)| {
                        if i < n && mask.is_allowed(i as u32) {
                            v
                        } else {
                            f32::NEG_INFINITY
                        }
                    }));
                    let t = sampler.sample(&masked, &history);
                    logprob_sum += log_softmax_at(logits, t as usize);
                    t
                }
            };
            if first_at.is_none() {
                first_at = Some(Instant::now());
                timings.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
            generated.push(next);
            history.push(next);
            if tok.is_eog(next) {
                stop_reason = StopReason::Eos;
                break;
            }
            let mut complete = false;
            if let Some(m) = matcher.as_mut() {
                m.consume_token(next)
                    .map_err(|e| grammar_error(e.to_string()))?;
                complete = m.is_stopped();
            }
            // Under a grammar, a control token is one the grammar named (a tool call's tag).
            tok.token_bytes(next, matcher.is_some(), &mut stream.raw);
            let view = stream.view(&opts.stop, false);
            let start = stream.start_in(&view.visible);
            if view.safe > start {
                let piece = &view.visible[start..view.safe];
                stream.emitted = view.safe;
                if on_text(piece).is_break() {
                    stop_reason = StopReason::Cancelled;
                    break;
                }
            }
            if view.stopped {
                stop_reason = StopReason::StopString;
                break;
            }
            if complete {
                stop_reason = StopReason::Eos;
                break;
            }
            if generated.len() >= opts.max_tokens {
                stop_reason = StopReason::MaxTokens;
                break;
            }
            if self.tokens.len() + 1 > ctx {
                if !opts.slide_context {
                    stop_reason = StopReason::ContextFull;
                    break;
                }
                self.slide()?;
                timings.context_slides += 1;
            }
            self.eval(&[next])?;
        }
        let view = stream.view(&opts.stop, true);
        let start = stream.start_in(&view.visible);
        if stop_reason != StopReason::Cancelled && view.visible.len() > start {
            let _ = on_text(&view.visible[start..]);
        }
        if let Some(f) = first_at {
            timings.decode_ms = f.elapsed().as_secs_f64() * 1e3;
            let after_first = generated.len().saturating_sub(1);
            timings.decode_tok_s = after_first as f64 / f.elapsed().as_secs_f64().max(1e-9);
        }
        timings.generated_tokens = generated.len();
        timings.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(Reply {
            text: view.visible,
            thinking: view.thinking,
            tokens: generated,
            stop_reason,
            probability: matcher
                .is_some()
                .then(|| (logprob_sum / timings.generated_tokens.max(1) as f64).exp() as f32),
            timings,
        })
    }

    /// Makes room in a full context: keeps the first [`SINK_TOKENS`] tokens and the most
    /// recent half of the context, and re-evaluates them.
    pub fn slide(&mut self) -> Result<()> {
        let ctx = self.model.inner.config.context_len;
        let toks = std::mem::take(&mut self.tokens);
        let sinks = SINK_TOKENS.min(toks.len());
        let tail_len = (ctx / 2).min(toks.len() - sinks);
        let mut kept = toks[..sinks].to_vec();
        kept.extend_from_slice(&toks[toks.len() - tail_len..]);
        self.tokens.clear();
        self.eval(&kept)?;
        Ok(())
    }
}

/// ln softmax(logits)[i] at temperature 1.
fn log_softmax_at(logits: &[f32], i: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (logits.get(i).copied().unwrap_or(f32::NEG_INFINITY) - max) as f64 - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::TextStream;

    fn view(raw: &str, stops: &[&str], finished: bool) -> (Option<String>, String, usize, bool) {
        let s = TextStream {
            raw: raw.as_bytes().to_vec(),
            emitted: 0,
        };
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let v = s.view(&stops, finished);
        (v.thinking, v.visible, v.safe, v.stopped)
    }

    #[test]
    fn thinking_is_split_off_and_never_visible() {
        // Partial opening tag: nothing may be streamed yet.
        assert_eq!(view("<thi", &[], false), (None, String::new(), 0, false));
        // Thinking in progress: nothing visible.
        let (t, v, safe, _) = view("<think>\nLet me see", &[], false);
        assert_eq!(
            (t.as_deref(), v.as_str(), safe),
            (Some("Let me see"), "", 0)
        );
        // Closed: thinking returned separately, the answer visible.
        let (t, v, safe, _) = view("<think>\nhmm\n</think>\n\nHello!", &[], false);
        assert_eq!((t.as_deref(), v.as_str(), safe), (Some("hmm"), "Hello!", 6));
        // An empty think block (thinking off) leaves only the answer.
        let (t, v, _, _) = view("<think>\n\n</think>\n\nHi", &[], true);
        assert_eq!((t.as_deref(), v.as_str()), (Some(""), "Hi"));
        // No thinking at all.
        assert_eq!(view("Plain", &[], false).1, "Plain");
    }

    #[test]
    fn stop_strings_cut_and_hold_back_possible_starts() {
        let (_, v, safe, stopped) = view("Hello User: more", &["User:"], false);
        assert_eq!((v.as_str(), safe, stopped), ("Hello ", 6, true));
        // "Us" may begin "User:", so it is held back until it is decided.
        let (_, v, safe, stopped) = view("Hello Us", &["User:"], false);
        assert_eq!((v.as_str(), safe, stopped), ("Hello Us", 6, false));
        // At the end everything goes out.
        let (_, _, safe, _) = view("Hello Us", &["User:"], true);
        assert_eq!(safe, 8);
        // A stop string inside the thinking does not stop the answer.
        let (_, v, _, stopped) = view("<think>User: x</think>ok", &["User:"], true);
        assert_eq!((v.as_str(), stopped), ("ok", false));
        // An incomplete UTF-8 sequence is held back.
        let s = TextStream {
            raw: vec![b'a', 0xe6, 0x97],
            emitted: 0,
        };
        assert_eq!(s.view(&[], false).visible, "a");
    }
}
