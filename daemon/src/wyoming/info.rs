//! What `describe` answers: sotad's speech-to-text, voices and wake words as the `wyoming`
//! package's `info` event (`asr`, `tts`, `wake` programs with their models).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sotad_engines::wake::WakeSettings;

/// A microWakeWord model found in the models directory.
#[derive(Debug, Clone)]
pub struct WakeModel {
    /// The settings file's name without `.json` (e.g. `hey_jarvis`): the name clients use.
    pub name: String,
    /// The phrase (e.g. "Hey Jarvis").
    pub phrase: String,
    pub languages: Vec<String>,
    /// The JSON settings file.
    pub path: PathBuf,
}

/// The microWakeWord models in `dir` (`<models.dir>/microwakeword`): every `*.json` whose
/// settings parse; others are logged and left out.
pub fn wake_models(dir: &Path) -> Vec<WakeModel> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<WakeModel> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            let settings = match WakeSettings::parse(&bytes, Some(&path)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "wyoming: wake word left out: {e}");
                    return None;
                }
            };
            let languages = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("trained_languages")?.as_array().map(|a| {
                        a.iter()
                            .filter_map(|l| l.as_str().map(str::to_string))
                            .collect()
                    })
                })
                .unwrap_or_else(|| vec!["en".to_string()]);
            Some(WakeModel {
                name: path.file_stem()?.to_str()?.to_string(),
                phrase: settings.wake_word,
                languages,
                path,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// A Piper voice's languages, from its `.onnx.json` (`language.code`, e.g. `en_US`).
pub fn voice_languages(onnx: &Path) -> Vec<String> {
    let config = PathBuf::from(format!("{}.json", onnx.display()));
    std::fs::read(config)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("language")?.get("code")?.as_str().map(str::to_string))
        .map(|c| vec![c])
        .unwrap_or_default()
}

/// What `info` lists; built once at start (the STT languages once the model has loaded).
#[derive(Debug, Clone, Default)]
pub struct Programs {
    /// The Whisper model's name (its directory or file name) and languages, if STT is on.
    pub stt: Option<(String, Vec<String>)>,
    /// The voice's name and languages, if TTS is on.
    pub voice: Option<(String, Vec<String>)>,
    pub wake: Vec<WakeModel>,
}

fn attribution(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url})
}

/// The `info` event's data.
pub fn info(p: &Programs) -> Value {
    let version = env!("CARGO_PKG_VERSION");
    let sotad = attribution("sotad", env!("CARGO_PKG_REPOSITORY"));
    let mut asr = Vec::new();
    if let Some((model, languages)) = &p.stt {
        asr.push(json!({
            "name": "sotad-whisper",
            "description": "Whisper speech-to-text in sotad",
            "attribution": sotad,
            "installed": true,
            "version": version,
            "supports_transcript_streaming": true,
            "requires_external_vad": true,
            "models": [{
                "name": model,
                "description": format!("Whisper {model}"),
                "attribution": attribution("OpenAI", "https://github.com/openai/whisper"),
                "installed": true,
                "version": null,
                "languages": languages,
            }],
        }));
    }
    let mut tts = Vec::new();
    if let Some((voice, languages)) = &p.voice {
        tts.push(json!({
            "name": "sotad-piper",
            "description": "Piper text-to-speech in sotad",
            "attribution": sotad,
            "installed": true,
            "version": version,
            "supports_synthesize_streaming": true,
            "voices": [{
                "name": voice,
                "description": format!("Piper voice {voice}"),
                "attribution": attribution("Piper", "https://github.com/rhasspy/piper"),
                "installed": true,
                "version": null,
                "languages": languages,
                "speakers": null,
            }],
        }));
    }
    let mut wake = Vec::new();
    if !p.wake.is_empty() {
        let models: Vec<Value> = p
            .wake
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "description": m.phrase,
                    "phrase": m.phrase,
                    "attribution": attribution("microWakeWord", "https://github.com/kahrendt/microWakeWord"),
                    "installed": true,
                    "version": null,
                    "languages": m.languages,
                })
            })
            .collect();
        wake.push(json!({
            "name": "sotad-microwakeword",
            "description": "microWakeWord wake words in sotad",
            "attribution": sotad,
            "installed": true,
            "version": version,
            "models": models,
        }));
    }
    json!({
        "asr": asr,
        "tts": tts,
        "handle": [],
        "intent": [],
        "wake": wake,
        "mic": [],
        "snd": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lists_each_program_only_when_it_is_on() {
        let empty = info(&Programs::default());
        assert_eq!(empty["asr"], json!([]));
        assert_eq!(empty["tts"], json!([]));
        let full = info(&Programs {
            stt: Some(("whisper-tiny.en-ct2".into(), vec!["en".into()])),
            voice: Some(("en_US-joe-medium".into(), vec!["en_US".into()])),
            wake: vec![WakeModel {
                name: "hey_jarvis".into(),
                phrase: "Hey Jarvis".into(),
                languages: vec!["en".into()],
                path: PathBuf::from("/m/hey_jarvis.json"),
            }],
        });
        assert_eq!(full["asr"][0]["models"][0]["languages"], json!(["en"]));
        assert_eq!(full["tts"][0]["supports_synthesize_streaming"], true);
        assert_eq!(full["wake"][0]["models"][0]["phrase"], "Hey Jarvis");
    }
}
