//! The bytes of a model file: memory-mapped from disk, or owned in memory (tests, fuzzing).
//!
//! Every model reader (GGUF, CTranslate2, ONNX) keeps its file in a [`Backing`], so that weights
//! are viewed in place and never copied, and so that the one `unsafe` memory map lives here.

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
