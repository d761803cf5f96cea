//! The layering: the built-in defaults, then the file, then `SOTAD__SECTION__KEY` variables;
//! unknown keys are rejected and every error names the layer its value came from.

use std::collections::BTreeSet;
use std::path::Path;

use config::{Config as Layers, Environment, File, FileFormat, Map, Source, Value, ValueKind};

use super::check::{self, check_readable};
use super::{Config, ConfigError, DEFAULT_TOML, ENV_PREFIX, FileLayer, SYSTEM_CONFIG_PATH};

const DEFAULTS_ORIGIN: &str = "the built-in defaults";

impl Config {
    /// Loads the layers from the process environment.
    pub fn load(file: FileLayer) -> Result<Config, ConfigError> {
        let env: Map<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        Self::load_with_env(file, env)
    }

    /// Loads the layers with an explicit set of environment variables (for tests).
    pub fn load_with_env(file: FileLayer, env: Map<String, String>) -> Result<Config, ConfigError> {
        let mut builder =
            Layers::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        match &file {
            FileLayer::Explicit(path) => {
                check_readable(path)?;
                builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            }
            FileLayer::System => {
                let path = Path::new(SYSTEM_CONFIG_PATH);
                if path.exists() {
                    check_readable(path)?;
                    builder = builder.add_source(File::from(path).format(FileFormat::Toml));
                }
            }
            FileLayer::None => {}
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("telemetry.thermal_zones")
                .with_list_parse_key("voice.wake_words")
                .with_list_parse_key("voice.stop_words")
                .try_parsing(true)
                .source(Some(env)),
        );
        let layers = builder.build().map_err(|e| from_config_error(&file, e))?;

        let merged = layers.collect().map_err(|e| from_config_error(&file, e))?;
        reject_unknown_keys(&merged, &file)?;

        let mut config: Config = layers.try_deserialize().map_err(|e| {
            let mut error = from_config_error(&file, e);
            // Conversion errors (e.g. 99999 for a u16) come without an origin; look it up.
            if !error.key.is_empty() && error.origin == DEFAULTS_ORIGIN {
                error.origin = origin_of(&merged, &error.key, &file);
            }
            error
        })?;
        config.validate(&|key| origin_of(&merged, key, &file))?;
        // A relative intents file is found beside the configuration file that names it.
        let origin = origin_of(&merged, "intents.file", &file);
        let dir = match &file {
            FileLayer::Explicit(path) if origin == path.display().to_string() => {
                Some(path.parent().unwrap_or(Path::new(".")).to_path_buf())
            }
            FileLayer::System if origin == SYSTEM_CONFIG_PATH => Path::new(SYSTEM_CONFIG_PATH)
                .parent()
                .map(Path::to_path_buf),
            _ => None,
        };
        check::load_intents(&mut config, dir.as_deref(), origin)?;
        let origin = origin_of(&merged, "turn.model", &file);
        check::load_turn(&mut config, origin == DEFAULTS_ORIGIN, origin)?;
        Ok(config)
    }
}

/// Names a value's source for the user: the config crate records files by a path relative to
/// the working directory, so the file layer is shown as it was given instead.
fn display_origin(origin: Option<&str>, file: &FileLayer) -> String {
    match (origin, file) {
        (None, _) => DEFAULTS_ORIGIN.to_string(),
        (Some("the environment"), _) => "the environment".to_string(),
        (Some(_), FileLayer::Explicit(path)) => path.display().to_string(),
        (Some(_), FileLayer::System) => SYSTEM_CONFIG_PATH.to_string(),
        (Some(other), FileLayer::None) => other.to_string(),
    }
}

fn from_config_error(file: &FileLayer, error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => ConfigError {
            key: key.unwrap_or_default(),
            origin: display_origin(origin.as_deref(), file),
            message: format!("has the wrong type: found {unexpected}, expected {expected}"),
        },
        config::ConfigError::FileParse { uri, cause } => ConfigError {
            key: String::new(),
            origin: display_origin(uri.as_deref(), file),
            message: format!("is not valid TOML: {cause}"),
        },
        config::ConfigError::NotFound(key) => ConfigError {
            key,
            origin: DEFAULTS_ORIGIN.to_string(),
            message: "is missing".to_string(),
        },
        other => ConfigError {
            key: String::new(),
            origin: match file {
                FileLayer::Explicit(p) => p.display().to_string(),
                FileLayer::System => SYSTEM_CONFIG_PATH.to_string(),
                FileLayer::None => "the environment".to_string(),
            },
            message: other.to_string(),
        },
    }
}

/// Every dotted key of a value tree, tables included.
fn keys_of(map: &Map<String, Value>, prefix: &str, out: &mut Vec<(String, Value)>) {
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        out.push((key.clone(), v.clone()));
        if let ValueKind::Table(t) = &v.kind {
            keys_of(t, &key, out);
        }
    }
}

fn default_keys() -> BTreeSet<String> {
    let defaults = File::from_str(DEFAULT_TOML, FileFormat::Toml)
        .collect()
        .expect("the embedded default config is valid TOML (checked by a unit test)");
    let mut all = Vec::new();
    keys_of(&defaults, "", &mut all);
    all.into_iter().map(|(k, _)| k).collect()
}

fn reject_unknown_keys(merged: &Map<String, Value>, file: &FileLayer) -> Result<(), ConfigError> {
    let known = default_keys();
    let mut all = Vec::new();
    keys_of(merged, "", &mut all);
    for (key, value) in all {
        if known.contains(&key) {
            continue;
        }
        let (section, _) = key.rsplit_once('.').unwrap_or(("", key.as_str()));
        let siblings: Vec<&str> = known
            .iter()
            .filter_map(|k| {
                let (s, leaf) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
                (s == section).then_some(leaf)
            })
            .collect();
        let where_ = if section.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in [{section}]")
        };
        return Err(ConfigError {
            key: key.clone(),
            origin: display_origin(value.origin(), file),
            message: format!(
                "is not a known key; known keys {where_}: {}",
                siblings.join(", ")
            ),
        });
    }
    Ok(())
}

fn origin_of(merged: &Map<String, Value>, key: &str, file: &FileLayer) -> String {
    let mut parts = key.split('.');
    let mut value = parts.next().and_then(|first| merged.get(first));
    for part in parts {
        value = match value.map(|v| &v.kind) {
            Some(ValueKind::Table(t)) => t.get(part),
            _ => None,
        };
    }
    display_origin(value.and_then(Value::origin), file)
}
