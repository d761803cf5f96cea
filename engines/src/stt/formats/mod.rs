//! Whisper's file formats, each read into the CTranslate2 container ([`ct2::Ct2Model`]) that
//! the network takes its weights from: CTranslate2 `model.bin` ([`ct2`]), Hugging Face
//! `model.safetensors` ([`safetensors`]), sotad's Whisper GGUF ([`gguf`], written by
//! [`quantize`]), and the names of Whisper's tensors in each ([`weights`]).
//!
//! They are re-exported as `stt::ct2`, `stt::safetensors`, ... where they have always been.

pub mod ct2;
pub mod gguf;
pub mod quantize;
pub mod safetensors;
pub mod weights;
