//! Chat prompts: the file's `tokenizer.chat_template` (Jinja, rendered with minijinja and
//! Python-compatible string methods), or a per-architecture fallback when it has none.

use std::borrow::Cow;

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};

use super::config::{Arch, Config};
use super::tokenizer::{ESCAPE, Tokenizer};
use super::{LlmError, LlmErrorKind};
use crate::error::Result;
use crate::gguf::GgufFile;

/// Who speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// `system`, `user`, `assistant`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

const CHATML: &str = "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor -%}\
{%- if add_generation_prompt %}<|im_start|>assistant\n{% if not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}";

const CHATML_NO_THINK: &str = "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor -%}\
{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma has no system role: the system text opens the first user turn.
const GEMMA: &str = "{%- set ns = namespace(sys='') %}{%- for m in messages %}\
{%- if m.role == 'system' %}{% set ns.sys = ns.sys + m.content + '\n\n' %}\
{%- else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n{{ ns.sys }}{{ m.content | trim }}<end_of_turn>\n{% set ns.sys = '' %}{% endif %}\
{%- endfor %}{%- if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

const LLAMA3: &str = "{%- for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>{% endfor -%}\
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    from_file: bool,
    bos: String,
    eos: String,
    /// Control tokens' texts, escaped in messages ([`escape_controls`]).
    controls: Vec<String>,
}

/// `text` with every control token's text broken up by [`ESCAPE`] after its first character,
/// so that encoding spells it as text (see the tokenizer's module docs).
pub(crate) fn escape_controls<'a>(text: &'a str, controls: &[String]) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for c in controls {
        if !out.contains(c.as_str()) {
            continue;
        }
        let first = c.chars().next().map_or(0, char::len_utf8);
        let escaped = format!("{}{ESCAPE}{}", &c[..first], &c[first..]);
        out = Cow::Owned(out.replace(c.as_str(), &escaped));
    }
    out
}

impl ChatTemplate {
    /// The file's template, or the fallback for the architecture.
    pub fn from_gguf(file: &GgufFile, config: &Config, tok: &Tokenizer) -> Result<ChatTemplate> {
        let (source, from_file) = if file.contains_key("tokenizer.chat_template") {
            (file.get_str("tokenizer.chat_template")?.to_owned(), true)
        } else {
            let fallback = match config.arch {
                Arch::Gemma3 => GEMMA,
                Arch::Qwen3 => CHATML,
                Arch::Llama if tok.token_id("<|start_header_id|>").is_some() => LLAMA3,
                _ => CHATML_NO_THINK,
            };
            (fallback.to_owned(), false)
        };
        let name = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_owned();
        let mut template =
            Self::new(source, from_file, name(tok.bos()), name(tok.eos())).map_err(|e| {
                LlmError::error(
                    file.path(),
                    Some("key \"tokenizer.chat_template\"".into()),
                    e,
                )
            })?;
        template.controls = tok.control_texts();
        Ok(template)
    }

    fn new(
        source: String,
        from_file: bool,
        bos: String,
        eos: String,
    ) -> Result<ChatTemplate, LlmErrorKind> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |_fmt: String| -> String { String::new() });
        // Python's `json.dumps` spacing (", ", ": "), as the templates were written for.
        env.add_filter(
            "tojson",
            |v: minijinja::Value| -> Result<String, JinjaError> {
                let json = serde_json::to_value(&v)
                    .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
                Ok(python_json(&json))
            },
        );
        env.set_trim_blocks(false);
        env.add_template_owned("chat", source.clone())
            .map_err(|e| LlmErrorKind::Template(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            source,
            from_file,
            bos,
            eos,
            controls: Vec::new(),
        })
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template came from the file (not a fallback).
    pub fn is_from_file(&self) -> bool {
        self.from_file
    }

    /// Renders `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`. `thinking` is passed as `enable_thinking` (Qwen3).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        thinking: bool,
    ) -> Result<String> {
        self.render_with_tools(messages, add_generation_prompt, thinking, None)
    }

    /// Whether the template describes tools itself (it reads a `tools` variable).
    pub fn takes_tools(&self) -> bool {
        self.from_file && self.source.contains("tools")
    }

    /// As [`ChatTemplate::render`], with `tools` (a JSON array) in the template's context.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        thinking: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|m| {
                let content = escape_controls(&m.content, &self.controls);
                context! { role => m.role.as_str(), content => content.as_ref() }
            })
            .collect();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| LlmError::error(None, None, LlmErrorKind::Template(e.to_string())))?;
        tmpl.render(context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            enable_thinking => thinking,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            tools => tools.map_or(minijinja::Value::UNDEFINED, minijinja::Value::from_serialize),
        })
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            LlmError::error(None, None, LlmErrorKind::Template(msg))
        })
    }
}

/// `json.dumps(value)` as Python writes it: ", " and ": " separators, non-ASCII escaped.
fn python_json(v: &serde_json::Value) -> String {
    fn string(s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7f => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn go(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => string(s, out),
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    go(x, out);
                }
                out.push(']');
            }
            serde_json::Value::Object(o) => {
                out.push('{');
                for (i, (k, x)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    string(k, out);
                    out.push_str(": ");
                    go(x, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    go(v, &mut out);
    out
}
