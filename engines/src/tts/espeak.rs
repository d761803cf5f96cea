//! Phonemizing with espeak-ng, which is GPL-3.0: sotad never links it, it loads the shared
//! library at run time or runs the program; and splitting long text into pieces for it.
//!
//! Both ways give the same shape of output, IPA with one line per clause, which goes through
//! [`super::phonemize::clauses_from_cli`]:
//!
//! - The library, `libespeak-ng.so.1`, opened with `dlopen` the first time a voice needs it
//!   ([`Espeak::auto`]): `espeak_TextToPhonemes` clause by clause, the call Piper makes, in
//!   well under a millisecond per sentence. espeak-ng keeps global state, so the calls are
//!   serialized by one lock for the whole process.
//! - The program, `espeak-ng -q --ipa -v <voice> -- <text>`, one process per piece (about 10 to
//!   15 ms each, most of it starting the process): the fallback when the library is missing
//!   (or is for another architecture, as under qemu), and what an explicit program path asks
//!   for. [`Espeak::spawn`] starts the process without waiting, so the next piece is
//!   phonemized while the current one is being synthesized.
//!
//! The program's synthesis mode stresses a few words differently from the library call (a
//! primary stress where the library, and Piper, have a secondary one or none).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::error::{TtsError, TtsErrorKind, TtsFile};
use crate::error::Result;

fn espeak_err(reason: String) -> crate::Error {
    TtsError::new(TtsFile::Request, TtsErrorKind::Espeak { reason }).into()
}

/// The shared library's file name, looked up by the dynamic loader.
pub const LIBRARY: &str = "libespeak-ng.so.1";

/// espeak-ng and the voice it speaks with.
#[derive(Debug, Clone)]
pub struct Espeak {
    backend: Backend,
    voice: String,
}

#[derive(Debug, Clone)]
enum Backend {
    Library(&'static Library),
    Program(PathBuf),
}

/// Phonemes on their way: a running espeak-ng process, or the library's finished output.
/// [`Pending::wait`] collects the IPA.
#[derive(Debug)]
pub struct Pending(PendingKind);

#[derive(Debug)]
enum PendingKind {
    Process {
        child: Option<Child>,
        program: PathBuf,
    },
    Ready(Option<Result<String>>),
}

impl Drop for Pending {
    /// A process whose output is not wanted any more (the stream stopped, or failed) is
    /// killed and reaped, so no zombie is left behind.
    fn drop(&mut self) {
        if let PendingKind::Process { child, .. } = &mut self.0
            && let Some(mut child) = child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Espeak {
    /// The espeak-ng program at `program` (a path, or a name looked up in `PATH`), voice
    /// `voice`.
    pub fn new(program: impl Into<PathBuf>, voice: impl Into<String>) -> Self {
        Self {
            backend: Backend::Program(program.into()),
            voice: voice.into(),
        }
    }

    /// The shared library ([`LIBRARY`]), voice `voice`; the error says why it cannot be used.
    pub fn library(voice: impl Into<String>) -> std::result::Result<Self, String> {
        let library = Library::get()?;
        Ok(Self {
            backend: Backend::Library(library),
            voice: voice.into(),
        })
    }

    /// The shared library when it loads, otherwise the program `espeak-ng` from `PATH`.
    pub fn auto(voice: impl Into<String>) -> Self {
        let voice = voice.into();
        match Self::library(voice.clone()) {
            Ok(e) => e,
            Err(why) => {
                tracing::debug!("espeak-ng library not used ({why}); running the program");
                Self::new("espeak-ng", voice)
            }
        }
    }

    /// The program, when phonemes come from a process.
    pub fn program(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Program(p) => Some(p),
            Backend::Library(_) => None,
        }
    }

    /// Which espeak-ng this is, for logs: the library and its version, or the program.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Library(l) => format!("{LIBRARY} {} (loaded at run time)", l.version),
            Backend::Program(p) => format!("program {}", p.display()),
        }
    }

    /// Starts phonemizing `text` (one piece: see [`split_text`]).
    pub fn spawn(&self, text: &str) -> Result<Pending> {
        let program = match &self.backend {
            Backend::Library(l) => {
                return Ok(Pending(PendingKind::Ready(Some(
                    l.phonemize(&self.voice, text),
                ))));
            }
            Backend::Program(p) => p,
        };
        let child = Command::new(program)
            .args(["-q", "--ipa", "-v", &self.voice, "--", text])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                espeak_err(format!(
                    "cannot run {program:?} ({e}); install espeak-ng (apt-get install espeak-ng) or set its path"
                ))
            })?;
        Ok(Pending(PendingKind::Process {
            child: Some(child),
            program: program.clone(),
        }))
    }

    /// Phonemizes `text` and waits for the IPA output.
    pub fn ipa(&self, text: &str) -> Result<String> {
        self.spawn(text)?.wait()
    }
}

impl Pending {
    /// Waits for the phonemes: the IPA output, one line per clause.
    pub fn wait(mut self) -> Result<String> {
        let (child, program) = match &mut self.0 {
            PendingKind::Ready(out) => {
                return out
                    .take()
                    .unwrap_or_else(|| Err(espeak_err("phonemes already collected".into())));
            }
            PendingKind::Process { child, program } => (child.take(), program.clone()),
        };
        let Some(child) = child else {
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

// espeak-ng's C API (speak_lib.h), the four functions used.
type InitializeFn = unsafe extern "C" fn(c_int, c_int, *const c_char, c_int) -> c_int;
type InfoFn = unsafe extern "C" fn(*mut *const c_char) -> *const c_char;
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> c_int;
type TextToPhonemesFn = unsafe extern "C" fn(*mut *const c_void, c_int, c_int) -> *const c_char;
/// `AUDIO_OUTPUT_SYNCHRONOUS`: no audio thread.
const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
/// `espeakINITIALIZE_DONT_EXIT`: report a missing data directory instead of exiting.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_UTF8`.
const CHARS_UTF8: c_int = 1;
/// `espeakPHONEMES_IPA`.
const PHONEMES_IPA: c_int = 0x02;

/// The loaded library. Loaded once per process and never unloaded.
struct Library {
    text_to_phonemes: TextToPhonemesFn,
    set_voice: SetVoiceByNameFn,
    version: String,
    /// Serializes every call (espeak-ng's state is global) and remembers the voice set last.
    voice: Mutex<Option<String>>,
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The function `name` of the library.
///
/// # Safety
/// `T` must be the function's type as the library declares it.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> std::result::Result<T, String> {
    // SAFETY: the caller gives the declared type.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|f| *f)
        .map_err(|_| format!("{LIBRARY} has no {name}"))
}

impl Library {
    fn get() -> std::result::Result<&'static Library, String> {
        static LOADED: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
        LOADED
            .get_or_init(Self::load)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load() -> std::result::Result<Library, String> {
        // SAFETY: libespeak-ng's initializers only set up its own static data; the symbols
        // are looked up with the signatures of speak_lib.h, which has kept them since 1.49.
        unsafe {
            let lib = libloading::Library::new(LIBRARY).map_err(|e| e.to_string())?;
            let initialize: InitializeFn = symbol(&lib, "espeak_Initialize")?;
            let info: InfoFn = symbol(&lib, "espeak_Info")?;
            let set_voice: SetVoiceByNameFn = symbol(&lib, "espeak_SetVoiceByName")?;
            let text_to_phonemes: TextToPhonemesFn = symbol(&lib, "espeak_TextToPhonemes")?;
            if initialize(
                AUDIO_OUTPUT_SYNCHRONOUS,
                0,
                std::ptr::null(),
                INITIALIZE_DONT_EXIT,
            ) < 0
            {
                return Err(format!(
                    "{LIBRARY} did not initialize (is espeak-ng-data installed?)"
                ));
            }
            let version = info(std::ptr::null_mut());
            let version = if version.is_null() {
                "(unknown version)".to_owned()
            } else {
                CStr::from_ptr(version).to_string_lossy().into_owned()
            };
            Ok(Library {
                text_to_phonemes,
                set_voice,
                version,
                voice: Mutex::new(None),
                _lib: lib,
            })
        }
    }

    /// IPA for `text` in `voice`, one line per clause (the program's output format).
    fn phonemize(&self, voice: &str, text: &str) -> Result<String> {
        let c_text =
            CString::new(text).map_err(|_| espeak_err("the text holds a NUL character".into()))?;
        let mut current = self.voice.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() != Some(voice) {
            let c_voice = CString::new(voice)
                .map_err(|_| espeak_err(format!("voice name {voice:?} holds a NUL character")))?;
            // SAFETY: a NUL-terminated string that outlives the call; the lock is held.
            let code = unsafe { (self.set_voice)(c_voice.as_ptr()) };
            if code != 0 {
                *current = None;
                return Err(espeak_err(format!(
                    "{LIBRARY} has no voice {voice:?} (error {code}); `espeak-ng --voices` lists them"
                )));
            }
            *current = Some(voice.to_owned());
        }
        let mut out = String::new();
        let mut at: *const c_void = c_text.as_ptr().cast();
        // Each call consumes at least one clause, so this bounds a misbehaving library.
        for _ in 0..=text.len() {
            if at.is_null() {
                return Ok(out);
            }
            // SAFETY: `at` points into `c_text` (NUL-terminated, alive) or was set by the
            // library past the clause it read; the returned string is the library's static
            // buffer, copied before the next call; the lock is held.
            let clause = unsafe { (self.text_to_phonemes)(&mut at, CHARS_UTF8, PHONEMES_IPA) };
            if !clause.is_null() {
                // SAFETY: as above.
                out.push_str(&unsafe { CStr::from_ptr(clause) }.to_string_lossy());
                out.push('\n');
            }
        }
        Err(espeak_err(format!(
            "{LIBRARY} did not reach the end of a {}-byte text",
            text.len()
        )))
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
