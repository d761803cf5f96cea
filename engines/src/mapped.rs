//! The bytes of a model file: memory-mapped from disk, or owned in memory (tests, fuzzing).
//!
//! Every model reader (GGUF, CTranslate2, ONNX, and through them Whisper's GGUF and
//! safetensors files and Silero's ONNX) keeps its file in a [`Backing`], so that weights are
//! viewed in place and never copied, so that the one `unsafe` memory map lives here, and so
//! that every model file that cannot be mapped gets the same error: the path, the step and
//! the cause.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

pub(crate) enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    /// Opens and memory-maps `path` read-only; errors name the path and the step that failed.
    pub(crate) fn map(path: &Path) -> Result<Backing> {
        let io_err = |action, source| Error::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        // Linux opens a directory without complaint and then refuses to map it with ENODEV
        // ("No such device"), which says nothing useful.
        let meta = file.metadata().map_err(|e| io_err("inspect", e))?;
        if meta.is_dir() {
            return Err(io_err(
                "memory-map",
                std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory, not a model file",
                ),
            ));
        }
        // SAFETY: the mapping is read-only and only ever viewed as `&[u8]`. Undefined
        // behaviour would require another process to truncate or rewrite the file while it
        // is mapped, which the daemon's model directory does not do (models are replaced by
        // renaming a new file into place, which leaves existing mappings intact).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| io_err("memory-map", e))?;
        Ok(Backing::Mmap(mmap))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_path_and_the_cause() {
        let dir = std::env::temp_dir();
        let e = Backing::map(&dir).err().unwrap().to_string();
        assert!(
            e.contains(&format!("{dir:?}")) && e.contains("is a directory"),
            "{e}"
        );
        let missing = dir.join("sotad-no-such-model.gguf");
        let e = Backing::map(&missing).err().unwrap().to_string();
        assert!(
            e.starts_with("cannot open") && e.contains("sotad-no-such-model.gguf"),
            "{e}"
        );
    }
}
