//! Grammar-constrained decoding: a JSON schema or a Lark grammar, compiled by `llguidance`
//! over the model's own vocabulary, masks the logits at each sampling step.
//!
//! The token environment is built once per model, on the first grammar, from the GGUF
//! tokenizer: every token's bytes (as [`Tokenizer::token_bytes`] spells them), control
//! tokens marked as special (`0xFF` then their text, which no text can produce), the
//! end-of-generation tokens as the grammar's end. Tokenizing for the grammar (forced
//! prefixes, literal strings) uses the model's own BPE, so forced text is tokenized as the
//! model would.
//!
//! A generation without a grammar never touches any of this: its tokens are exactly those of
//! an unconstrained run.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::tokenizer::{TokenKind, Tokenizer};
use super::{LlmError, LlmErrorKind, Model, ModelInner};
use crate::error::Result;

/// What the output must conform to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON value valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
}

/// A compiled grammar, ready to constrain a generation ([`super::GenerateOptions::grammar`]).
/// Cloning gives an independent matcher at the start.
pub struct Grammar {
    matcher: Matcher,
}

impl Clone for Grammar {
    fn clone(&self) -> Self {
        Grammar {
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Grammar")
    }
}

impl Grammar {
    pub(crate) fn matcher(&self) -> Matcher {
        self.matcher.deep_clone()
    }
}

/// The model's tokenizer as llguidance sees it.
struct Env {
    trie: TokTrie,
    model: Weak<ModelInner>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match (std::str::from_utf8(s), self.model.upgrade()) {
            (Ok(text), Some(model)) => model.tokenizer.encode(text, false, false),
            _ => self.trie.greedy_tokenize(s),
        }
    }
}

/// Every token's bytes for the trie: control tokens behind the special marker.
fn token_words(tok: &Tokenizer) -> Vec<Vec<u8>> {
    (0..tok.vocab_size() as u32)
        .map(|id| {
            let mut out = Vec::new();
            match tok.token_kind(id) {
                Some(TokenKind::Control | TokenKind::Unknown | TokenKind::Unused) => {
                    out.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    tok.token_bytes(id, true, &mut out);
                }
                _ => tok.token_bytes(id, false, &mut out),
            }
            out
        })
        .collect()
}

/// The per-model grammar compiler (built on first use).
pub(crate) type Factory = OnceLock<std::result::Result<ParserFactory, String>>;

fn factory(model: &Model) -> Result<&ParserFactory> {
    let built = model.inner.grammar.get_or_init(|| {
        let tok = &model.inner.tokenizer;
        let eog = tok.eog_tokens();
        let eos = tok.eos().or_else(|| eog.first().copied()).ok_or_else(|| {
            "the model has no end-of-generation token to end a grammar with".to_string()
        })?;
        let words = token_words(tok);
        if !words
            .iter()
            .any(|w| w.first() == Some(&TokTrie::SPECIAL_TOKEN_MARKER))
        {
            return Err("the model has no control token".to_string());
        }
        let info = TokRxInfo::new(words.len() as u32, eos);
        let mut ends = eog.to_vec();
        if !ends.contains(&eos) {
            ends.insert(0, eos);
        }
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&ends);
        let env: TokEnv = Arc::new(Env {
            trie,
            model: Arc::downgrade(&model.inner),
        });
        let mut f = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        f.quiet();
        Ok(f)
    });
    built
        .as_ref()
        .map_err(|e| LlmError::error(None, None, LlmErrorKind::Grammar(e.clone())))
}

impl Model {
    /// Compiles `spec` over this model's vocabulary. A schema or grammar llguidance cannot
    /// compile is [`LlmErrorKind::Grammar`] with its message (the caller names the field).
    pub fn grammar(&self, spec: &GrammarSpec) -> Result<Grammar> {
        let f = factory(self)?;
        let top = match spec {
            GrammarSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(with_layout(s.clone())),
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_layout(
                serde_json::json!({"type": "object"}),
            )),
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = f.create_parser(top).map_err(|e| {
            LlmError::error(
                None,
                None,
                LlmErrorKind::Grammar(first_line(&e.to_string())),
            )
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(LlmError::error(
                None,
                None,
                LlmErrorKind::Grammar(first_line(&e)),
            ));
        }
        Ok(Grammar { matcher })
    }
}

/// One layout for the JSON the grammar lets through: Python's `json.dumps` separators and no
/// other whitespace (a small model given free whitespace may emit newlines until
/// `max_tokens`).
fn with_layout(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

impl Model {
    /// A Lark grammar that allows either a plain-text answer (any text that does not start
    /// with `open` or `{`) or exactly one tool call: `open`, a JSON object `{"name": <one of
    /// the tools>, "arguments": <that tool's parameters>}`, `close`; or that object alone
    /// (small models often leave the tags out). `tools` are (name,
    /// parameters schema). A tag that is one of this model's control tokens (Qwen2.5's
    /// `<tool_call>`) is that token, which is then in the reply's text.
    pub fn text_or_tool_call(
        &self,
        tools: &[(String, serde_json::Value)],
        open: &str,
        close: &str,
    ) -> String {
        let tok = &self.inner.tokenizer;
        let tag = |t: &str| match tok.token_id(t).and_then(|id| tok.token_kind(id)) {
            Some(TokenKind::Control) if t.starts_with('<') && t.ends_with('>') => t.to_string(),
            _ => serde_json::to_string(t).unwrap_or_default(),
        };
        text_or_tool_call(tools, &tag(open), &tag(close), open)
    }
}

fn text_or_tool_call(
    tools: &[(String, serde_json::Value)],
    open_rule: &str,
    close_rule: &str,
    open: &str,
) -> String {
    let calls: Vec<serde_json::Value> = tools
        .iter()
        .map(|(name, params)| {
            serde_json::json!({
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = with_layout(serde_json::json!({"anyOf": calls}));
    let first = open.chars().next().unwrap_or('<');
    let not_first = regex_class_escape(first);
    format!(
        "start: TEXT | call\ncall: {open_rule} \"\\n\"? body \"\\n\"? {close_rule} | body\nbody: %json {schema}\nTEXT: /[^{not_first}{{](.|\\n)*/\n",
    )
}

fn regex_class_escape(c: char) -> String {
    if "\\]^-[".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}
