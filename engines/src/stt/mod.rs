//! Speech to text (Whisper).
//!
//! - [`mel`] is Whisper's log-mel front end.
//! - [`ct2`] reads CTranslate2 model directories (as converted for faster-whisper) and maps
//!   their variables to a Whisper model's weights.
//! - [`weights`] resolves every tensor of a Whisper model from a CTranslate2 model.

pub mod ct2;
pub mod mel;
pub mod weights;
