//! [`ModelFiles`]: a stage's model files, checked before each job.
//!
//! A model file truncated or rewritten in place under a running sotad would crash it with
//! SIGBUS at the next read of its mapping, or feed the model other weights. Before each job a
//! stage compares its files with what it mapped (`sotad_engines::mapped::check_under`, one
//! `stat` per file): a file changed in place turns the stage off for good, with an error that
//! names the configuration key and the file (`unavailable`), logged once; the other stages
//! keep serving, and a restart loads the new file. A file replaced by renaming a new one into
//! place (what the README, `scripts/install-models.sh` and the package do) is safe: the
//! mapping keeps the old file; that is logged once, and the new file is loaded at the next
//! start. A change that lands while a job runs is caught by the SIGBUS handler
//! (`crate::fatal`), which names the file before sotad exits.

use std::path::PathBuf;

use sotad_engines::mapped;

use super::error::{StageError, StageErrorKind};

/// The files a stage has mapped, and whether one of them changed in place.
#[derive(Debug)]
pub struct ModelFiles {
    /// The stage's name (`llm`), for messages.
    stage: &'static str,
    /// The configuration key that names the model (`llm.model`).
    key: &'static str,
    /// Model files or directories, as loaded.
    paths: Vec<PathBuf>,
    /// Set once a file changed in place: the error every later job gets.
    off: Option<String>,
    /// Whether a replacement by rename was already logged.
    replaced_logged: bool,
}

impl ModelFiles {
    pub fn new(stage: &'static str, key: &'static str, path: PathBuf) -> ModelFiles {
        ModelFiles {
            stage,
            key,
            paths: vec![path],
            off: None,
            replaced_logged: false,
        }
    }

    /// Another file the stage mapped (a TTS voice loaded on demand). A file the stage no
    /// longer maps (an evicted voice) is no longer registered, so it is not checked.
    pub fn add(&mut self, path: PathBuf) {
        if !self.paths.contains(&path) {
            self.paths.push(path);
        }
    }

    /// Whether the stage's files are still what it mapped; an `unavailable` error naming the
    /// key and the file when one changed in place (from then on, for every job).
    pub fn check(&mut self) -> Result<(), StageError> {
        if let Some(message) = &self.off {
            return Err(unavailable(message.clone()));
        }
        for path in &self.paths {
            for change in mapped::check_under(path) {
                if change.kind.is_unsafe() {
                    let message = format!(
                        "the {} stage is off: {change} (configuration key `{}`); restart sotad to load the file again, and replace model files by renaming a new file into place",
                        self.stage, self.key
                    );
                    tracing::error!(
                        stage = self.stage,
                        key = self.key,
                        file = %change.path.display(),
                        "{message}"
                    );
                    self.off = Some(message.clone());
                    return Err(unavailable(message));
                } else if !self.replaced_logged {
                    self.replaced_logged = true;
                    tracing::warn!(
                        stage = self.stage,
                        key = self.key,
                        file = %change.path.display(),
                        "{change}"
                    );
                }
            }
        }
        Ok(())
    }
}

fn unavailable(message: String) -> StageError {
    StageError {
        kind: StageErrorKind::Unavailable,
        field: None,
        message,
    }
}

/// Opens every model file the configuration names, as far as checking it takes without
/// loading it (headers, tensor tables against the file's size, the voice's JSON), with the
/// engines' own readers: what `sotad config check` reports. Each problem names the
/// configuration key, its value and the file. The VAD model counts only with a microphone.
pub fn check_configured(config: &crate::config::Config) -> Vec<String> {
    use sotad_engines::{gguf::GgufFile, llm, stt, tts};
    type Open = fn(&std::path::Path) -> sotad_engines::Result<()>;
    let mut checks: Vec<(&'static str, &str, Open)> = vec![
        ("stt.model", &config.stt.model, |p| {
            stt::weights::WhisperWeights::open_any(p).map(drop)
        }),
        ("llm.model", &config.llm.model, |p| {
            let file = GgufFile::open(p)?;
            llm::Config::from_gguf(&file, 0).map(drop)
        }),
        ("tts.voice", &config.tts.voice, |p| {
            tts::PiperVoice::open(p).map(drop)
        }),
    ];
    if !config.audio.capture_device.is_empty() {
        checks.push(("vad.model", &config.vad.model, |p| {
            tts::onnx::OnnxModel::open(p).map(drop)
        }));
    }
    let mut problems = Vec::new();
    for (key, value, open) in checks {
        let Some(path) = config.model_path(value) else {
            continue;
        };
        if let Err(e) = open(&path) {
            problems.push(format!(
                "configuration key `{key}` = {value:?} ({}): {e}",
                path.display()
            ));
        }
    }
    problems
}
