//! Running espeak-ng as a separate program (it is GPL-3.0: sotad never links it), and
//! splitting long text into pieces for it.
//!
//! Each piece is phonemized by one `espeak-ng -q --ipa -v <voice> -- <text>` process; its
//! output goes through [`super::phonemize::clauses_from_cli`]. [`Espeak::spawn`] starts the
//! process without waiting, so the next piece can be phonemized while the current one is
//! being synthesized.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::error::{TtsError, TtsErrorKind, TtsFile};
use crate::error::Result;

fn espeak_err(reason: String) -> crate::Error {
    TtsError::new(TtsFile::Request, TtsErrorKind::Espeak { reason }).into()
}

/// The espeak-ng program and voice.
#[derive(Debug, Clone)]
pub struct Espeak {
    program: PathBuf,
    voice: String,
}

/// A running espeak-ng process; [`Pending::wait`] collects its IPA output.
#[derive(Debug)]
pub struct Pending {
    child: Option<Child>,
    program: PathBuf,
}

impl Drop for Pending {
    /// A process whose output is not wanted any more (the stream stopped, or failed) is
    /// killed and reaped, so no zombie is left behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Espeak {
    /// espeak-ng at `program` (a path, or a name looked up in `PATH`) with voice `voice`.
    pub fn new(program: impl Into<PathBuf>, voice: impl Into<String>) -> Self {
        Self {
            program: program.into(),
            voice: voice.into(),
        }
    }

    /// The program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts phonemizing `text` (one piece: see [`split_text`]).
    pub fn spawn(&self, text: &str) -> Result<Pending> {
        let child = Command::new(&self.program)
            .args(["-q", "--ipa", "-v", &self.voice, "--", text])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                espeak_err(format!(
                    "cannot run {:?} ({e}); install espeak-ng (apt-get install espeak-ng) or set its path",
                    self.program
                ))
            })?;
        Ok(Pending {
            child: Some(child),
            program: self.program.clone(),
        })
    }

    /// Phonemizes `text` and waits for the IPA output.
    pub fn ipa(&self, text: &str) -> Result<String> {
        self.spawn(text)?.wait()
    }
}

impl Pending {
    /// Waits for the process and returns its IPA output (one line per clause).
    pub fn wait(mut self) -> Result<String> {
        let program = self.program.clone();
        let Some(child) = self.child.take() else {
            return Err(espeak_err(format!("{program:?} was already collected")));
        };
        let out = child
            .wait_with_output()
            .map_err(|e| espeak_err(format!("{program:?} did not finish: {e}")))?;
        if !out.status.success() {
            return Err(espeak_err(format!(
                "{program:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        String::from_utf8(out.stdout)
            .map_err(|e| espeak_err(format!("{program:?} printed invalid UTF-8: {e}")))
    }
}

/// Longest piece [`split_text`] makes, in bytes (espeak-ng gets it as one argument).
pub const MAX_PIECE: usize = 600;

/// Splits `text` into pieces of whole sentences for espeak-ng: after `.`, `!` or `?`
/// followed by whitespace (unless the next word starts lower-case, which espeak reads as an
/// abbreviation), and at blank lines: one sentence per piece, so the first audio comes
/// early and a clause espeak splits differently stays local. A sentence longer than [`MAX_PIECE`] is cut at its last space (or anywhere, at a character
/// boundary) before the limit. Pieces are trimmed; empty ones are dropped.
pub fn split_text(text: &str) -> Vec<&str> {
    let mut ends = Vec::new(); // byte offsets where a sentence ends
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        match c {
            '.' | '!' | '?' => {
                let rest = &text[end..];
                // "..." is an ellipsis, and "?!" ends at its last mark.
                if rest.starts_with(['.', '!', '?']) || (c == '.' && text[..i].ends_with('.')) {
                    continue;
                }
                let trimmed = rest.trim_start();
                if rest.len() != trimmed.len() || rest.is_empty() {
                    let abbreviation =
                        c == '.' && trimmed.chars().next().is_some_and(char::is_lowercase);
                    if !abbreviation {
                        ends.push(end);
                    }
                }
            }
            '\n' if bytes.get(end) == Some(&b'\n') || text[end..].starts_with("\r\n") => {
                ends.push(end);
            }
            _ => {}
        }
    }
    ends.push(text.len());

    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    for &end in &ends {
        if end <= start {
            continue;
        }
        // Sentence text[start..end]; cut it if too long.
        let mut s = start;
        while end - s > MAX_PIECE {
            let mut cut = s + MAX_PIECE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(sp) = text[s..cut].rfind(char::is_whitespace) {
                if sp > 0 {
                    cut = s + sp;
                }
            }
            pieces.push(&text[s..cut]);
            s = cut;
        }
        pieces.push(&text[s..end]);
        start = end;
    }
    pieces
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Replaces control characters (other than newlines and tabs) with spaces, and returns how
/// many were replaced. espeak-ng gets the text as a command-line argument, which cannot hold
/// NUL.
pub fn sanitize(text: &str) -> (String, usize) {
    let mut n = 0;
    let s = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                n += 1;
                ' '
            } else {
                c
            }
        })
        .collect();
    (s, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_everything_and_bounds_pieces() {
        let text = "Hello there. This is a test! Is it? Dr. Smith said e.g. this.\n\nNew paragraph. Wait... what?! Ok";
        let p = split_text(text);
        assert_eq!(p[0], "Hello there.");
        let joined: String = p.concat();
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&joined), squash(text));
        assert!(p.iter().any(|s| s.contains("e.g. this.")));
        assert!(p.contains(&"Wait... what?!"), "{p:?}");
        assert_eq!(p.last(), Some(&"Ok"));

        let long = "word ".repeat(1000);
        let p = split_text(&long);
        assert!(p.len() >= 8);
        assert!(p.iter().all(|s| s.len() <= MAX_PIECE));
        assert_eq!(squash(&p.concat()), squash(&long));

        let no_spaces = "é".repeat(2000);
        let p = split_text(&no_spaces);
        assert!(p.iter().all(|s| s.len() <= MAX_PIECE));
        assert_eq!(p.concat(), no_spaces);
        assert!(split_text("  \n\n ").is_empty());
    }

    #[test]
    fn sanitize_replaces_controls() {
        assert_eq!(sanitize("a\u{0}b\nc\u{7}"), ("a b\nc ".to_owned(), 2));
    }
}
