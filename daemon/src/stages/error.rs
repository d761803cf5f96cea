//! [`StageError`]: what a stage tells its caller when it cannot do what was asked.

/// What a stage could not do with what it was given; `service` maps it to the protocol's
/// error (with the request's id), the voice loop to a failed turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    pub kind: StageErrorKind,
    /// The input at fault (`wav`, `voice`, `speaker`, `text`), when there is one.
    pub field: Option<std::borrow::Cow<'static, str>>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageErrorKind {
    /// The caller's input cannot be used (an unknown voice, an empty WAV).
    InvalidInput,
    /// The audio given cannot be decoded.
    InvalidAudio,
    /// The stage cannot run jobs any more (its model file changed under it).
    Unavailable,
    /// The prompt does not fit in the LLM's context.
    ContextFull,
    /// The engine failed on valid input.
    Internal,
}

impl StageError {
    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> StageError {
        StageError {
            kind: StageErrorKind::InvalidInput,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn audio(field: &'static str, message: impl Into<String>) -> StageError {
        StageError {
            kind: StageErrorKind::InvalidAudio,
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> StageError {
        StageError {
            kind: StageErrorKind::Internal,
            field: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
