//! The LLM engine: small GGUF decoder-only models, run from the memory-mapped file.
//!
//! # Architectures
//!
//! | `general.architecture` | models | specifics |
//! |---|---|---|
//! | `llama` | SmolLM2, Llama 3.x | rope on adjacent pairs; Llama 3 rope scaling through the `rope_freqs.weight` factors |
//! | `qwen2` | Qwen2.5 | q/k/v biases, NeoX rope |
//! | `qwen3` | Qwen3 | q/k RMS norm per head, thinking (`<think>…</think>`) |
//! | `gemma3` | Gemma 3 | embedding × √d, norms before and after attention and FFN, q/k norm, GeGLU (tanh), sliding-window layers (own rope base) with a global layer every 6th |
//!
//! Gemma's `(1 + w)` RMS norm: llama.cpp's converter stores `1 + w` in the GGUF, so every
//! norm here is a plain `x / rms(x) · w`.
//!
//! # Hot path
//!
//! The forward pass works on plain `f32` slices in [`Session`]-owned scratch buffers that
//! grow to the largest batch once and are then reused: decoding a token allocates nothing.
//! Every matrix product is a [`crate::quant::QMatrix`] over the mapped bytes; a prompt goes
//! through `QMatrix::matmul` in batches of up to [`PREFILL_BATCH`] tokens. The embedding
//! table stays quantized; the rows a prompt uses are dequantized on lookup.
//!
//! The KV cache holds values rounded to f16, as llama.cpp's default f16 cache, but stored as
//! `f32` so attention reads them without conversion (twice the memory of f16: 2 × layers ×
//! kv heads × head size × context × 4 bytes, e.g. 94 MB for SmolLM2-135M at 2048 tokens).
//! Queries and softmax weights are rounded to f16 before the products with it, as ggml does
//! when it multiplies an f16 cache, so greedy decoding follows llama.cpp token for token.
//!
//! Work is split over a persistent pool of `threads` workers (the caller included): rows of
//! a matrix for one token, tokens for a prompt batch, query heads for attention.
//!
//! # Prefix reuse and a full context
//!
//! A [`Session`] remembers the tokens its KV cache holds. A new prompt that starts with the
//! same tokens (system prompt, earlier turns) only evaluates what differs: the cache is
//! truncated to the common prefix. When prompt plus generation would exceed the context,
//! the session keeps the first [`SINK_TOKENS`] tokens (attention sinks: the start of the
//! system prompt) and the most recent half of the context, drops the middle, and
//! re-evaluates the kept tokens once (positions stay contiguous; no rope shifting).
//! With [`GenerateOptions::slide_context`] off, generation stops with
//! [`StopReason::ContextFull`] instead.
//!
//! # Example
//!
//! ```no_run
//! use sotad_engines::llm::{GenerateOptions, LoadOptions, Message, Model};
//! # fn main() -> sotad_engines::Result<()> {
//! let model = Model::load("smollm2-135m-instruct-q4_1.gguf", &LoadOptions::default())?;
//! let mut session = model.session();
//! let opts = GenerateOptions { max_tokens: 64, ..Default::default() };
//! let reply = session.chat(&[Message::user("Say hi.")], &opts, |piece| {
//!     print!("{piece}");
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! println!("\n{:?} {:.1} tok/s", reply.stop_reason, reply.timings.decode_tok_s);
//! # Ok(())
//! # }
//! ```

mod attention;
mod chat;
mod config;
mod forward;
mod generate;
mod ggml_math;
mod grammar;
mod kv_cache;
pub mod language;
mod pool;
mod sample;
mod tokenizer;
mod weights;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use self::chat::{ChatTemplate, Message, Role};
pub use self::config::{Arch, Config};
pub use self::generate::{GenerateOptions, Prompt, Reply, StopReason, Timings};
pub use self::grammar::{Grammar, GrammarSpec};
pub use self::sample::Sampler;
pub use self::tokenizer::{TokenKind, Tokenizer};

#[doc(hidden)]
pub use self::forward::Probe;
use self::forward::Scratch;
use self::kv_cache::KvCache;
use self::weights::Weights;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Tokens evaluated together in one prefill step.
pub const PREFILL_BATCH: usize = 256;

/// Tokens at the start of the context kept when the context is full (see the module docs).
pub const SINK_TOKENS: usize = 4;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Context length in tokens (KV cache and rope tables); 0 = the model's training context,
    /// capped at 4096.
    pub context_len: usize,
    /// Threads for the matrix products; 0 = the available cores.
    pub threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context_len: 2048,
            threads: 0,
        }
    }
}

/// A loaded model: configuration, weights (borrowed from the mapped file), tokenizer and
/// chat template. Cheap to clone (reference-counted) and shareable between threads; each
/// conversation uses its own [`Session`].
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
}

struct ModelInner {
    file: GgufFile,
    config: Config,
    weights: Weights,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    threads: usize,
    /// Workers of the forward pass; a session holds the lock for one forward call.
    pool: Mutex<pool::Pool>,
    /// The grammar compiler over this vocabulary, built on the first grammar.
    grammar: grammar::Factory,
}

impl Model {
    /// Opens and validates a GGUF model: architecture, hyper-parameters, every tensor's type
    /// and shape, tokenizer and chat template. The weights stay in the memory map.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_gguf(file, opts)
    }

    /// As [`Model::load`], from an opened file.
    pub fn from_gguf(file: GgufFile, opts: &LoadOptions) -> Result<Model> {
        let config = Config::from_gguf(&file, opts.context_len)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let weights = Weights::load(&file, &config, tokenizer.vocab_size())?;
        let template = ChatTemplate::from_gguf(&file, &config, &tokenizer)?;
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            opts.threads
        };
        tracing::debug!(arch = %config.arch, layers = config.n_layer, ctx = config.context_len, threads, "loaded LLM");
        Ok(Model {
            inner: Arc::new(ModelInner {
                file,
                config,
                weights,
                tokenizer,
                template,
                threads,
                pool: Mutex::new(pool::Pool::new(threads)),
                grammar: Default::default(),
            }),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The tokenizer read from the file.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    /// The chat template (the file's, or the architecture's fallback).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// Threads used for matrix products.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// The file the weights are mapped from.
    pub fn file(&self) -> &GgufFile {
        &self.inner.file
    }

    /// A new conversation with an empty KV cache.
    pub fn session(&self) -> Session {
        Session {
            model: self.clone(),
            kv: KvCache::new(&self.inner.config),
            scratch: Scratch::default(),
            tokens: Vec::new(),
        }
    }
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.file.path())
            .field("arch", &self.inner.config.arch)
            .field("context_len", &self.inner.config.context_len)
            .finish()
    }
}

/// One conversation: the KV cache, the tokens it holds, and scratch buffers.
///
/// Not shared between threads at once (`&mut self`), but `Send`.
pub struct Session {
    model: Model,
    kv: KvCache,
    scratch: Scratch,
    /// The tokens whose keys and values are in `kv`, in order.
    tokens: Vec<u32>,
}

impl Session {
    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokens whose keys and values the cache holds.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets everything (keeps the buffers).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Drops every cached token from position `len` on; the next evaluation continues there.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    /// Appends `tokens` to the cache and returns the logits after the last one.
    ///
    /// Fails if a token id is outside the vocabulary or the context would overflow.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let inner = &*self.model.inner;
        let vocab = inner.tokenizer.vocab_size();
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(LlmError::request(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        if tokens.is_empty() {
            return Err(LlmError::request("no tokens to evaluate".into()));
        }
        let ctx = inner.config.context_len;
        if self.tokens.len() + tokens.len() > ctx {
            return Err(LlmError::request(format!(
                "{} cached + {} new tokens exceed the context of {ctx}",
                self.tokens.len(),
                tokens.len()
            )));
        }
        let mut pos = self.tokens.len();
        for chunk in tokens.chunks(PREFILL_BATCH) {
            forward::forward(inner, &mut self.kv, &mut self.scratch, chunk, pos)?;
            pos += chunk.len();
        }
        self.tokens.extend_from_slice(tokens);
        Ok(&self.scratch.logits)
    }

    /// Debugging: calls `probe(name, layer, values)` with the named intermediates of every
    /// following evaluation (ggml's tensor names where there is one; values `[token][dim]`),
    /// to compare them with llama.cpp's. `None` removes it.
    #[doc(hidden)]
    pub fn set_probe(&mut self, probe: Option<Probe>) {
        self.scratch.probe = probe;
    }

    /// Frees the scratch buffers sized by the largest batch evaluated so far (a long prompt
    /// leaves tens of MiB); the KV cache, the tokens and the logits stay. The next
    /// evaluation allocates what its own batch needs. Call it when the session goes idle,
    /// so that resting memory does not keep the largest prompt's high-water mark.
    pub fn release_scratch(&mut self) {
        self.scratch.release();
    }

    /// Bytes of the scratch buffers [`Session::release_scratch`] frees.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch.batch_bytes()
    }

    /// The logits after the last evaluated token (empty before any evaluation).
    pub fn logits(&self) -> &[f32] {
        &self.scratch.logits
    }
}

// ----- errors ------------------------------------------------------------------------------

/// An LLM problem, with the file and the tensor or key involved when known.
///
/// Displays as, for example:
///
/// ```text
/// LLM model "/m/x.gguf": tensor "blk.0.attn_q.weight": shape [576, 500] (ggml order), expected [576, 576]
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LlmError {
    /// The model file, if the problem comes from one.
    pub path: Option<PathBuf>,
    /// The tensor (`tensor "…"`) or metadata key (`key "…"`) involved.
    pub subject: Option<String>,
    /// What is wrong.
    pub kind: LlmErrorKind,
}

/// What is wrong; see [`LlmError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmErrorKind {
    /// `general.architecture` names an architecture this engine does not run.
    #[error("unknown architecture {0:?} (supported: llama, qwen2, qwen3, gemma3)")]
    UnknownArchitecture(String),
    /// A tensor has an unexpected shape.
    #[error("shape {found:?} (ggml order), expected {expected:?}")]
    WrongShape {
        /// Expected dimensions, innermost first.
        expected: Vec<u64>,
        /// Dimensions in the file.
        found: Vec<u64>,
    },
    /// A tensor has a type the engine cannot use in that role.
    #[error("type {0} is not supported here")]
    UnsupportedType(String),
    /// Hyper-parameters that make no sense.
    #[error("invalid hyper-parameters: {0}")]
    BadConfig(String),
    /// The tokenizer data is unusable.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template does not parse or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request the engine cannot serve (bad token id, ...).
    #[error("{0}")]
    Request(String),
    /// A JSON schema or grammar that cannot be compiled, or a constrained generation that
    /// cannot go on (the grammar allows no token).
    #[error("grammar: {0}")]
    Grammar(String),
    /// A chat prompt longer than the context, and truncation was not asked for (or could
    /// not make it fit).
    #[error(
        "the prompt has {prompt_tokens} tokens and the context holds {context} (one token must be left to answer){hint}"
    )]
    ContextFull {
        /// Tokens of the rendered prompt.
        prompt_tokens: usize,
        /// The context length.
        context: usize,
        /// What the caller can do.
        hint: &'static str,
    },
}

impl LlmError {
    pub(crate) fn error(path: Option<&Path>, subject: Option<String>, kind: LlmErrorKind) -> Error {
        Error::Llm(Box::new(LlmError {
            path: path.map(Path::to_path_buf),
            subject,
            kind,
        }))
    }

    pub(crate) fn request(msg: String) -> Error {
        Self::error(None, None, LlmErrorKind::Request(msg))
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(p) => write!(f, "LLM model {p:?}")?,
            None => f.write_str("LLM")?,
        }
        if let Some(s) = &self.subject {
            write!(f, ": {s}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for LlmError {}
