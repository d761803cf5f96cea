//! Writes CTranslate2 `model.bin` files, for tests: small synthetic models with the real
//! layout, and deliberately damaged ones.

use std::path::Path;

use half::{bf16, f16};

use super::DType;
use crate::error::{Error, Result};

/// One variable to write. `data` is written as given, so it may disagree with the shape
/// (to make damaged files).
#[derive(Debug, Clone, PartialEq)]
pub struct WriterVariable {
    /// The name.
    pub name: String,
    /// The dtype id to write (not checked, so unknown ids can be written).
    pub dtype_id: u8,
    /// The dimensions.
    pub shape: Vec<u32>,
    /// The raw data.
    pub data: Vec<u8>,
}

/// Builds a `model.bin` in memory.
///
/// ```
/// use sotad_engines::stt::ct2::{Ct2Model, Ct2Writer};
///
/// let mut w = Ct2Writer::new("WhisperSpec", 3);
/// w.add_f32("encoder/layer_norm/gamma", &[4], &[1.0; 4]);
/// w.add_i16_scalar("encoder/num_heads", 2);
/// let model = Ct2Model::from_vec(w.to_bytes()).unwrap();
/// assert_eq!(model.variable("encoder/num_heads").unwrap().scalar_i64(), Some(2));
/// ```
#[derive(Debug, Clone)]
pub struct Ct2Writer {
    /// The binary version written first (6 by default).
    pub binary_version: u32,
    /// The spec name.
    pub spec: String,
    /// The spec revision.
    pub revision: u32,
    /// The variables, in the order they will be written.
    pub variables: Vec<WriterVariable>,
    /// `(alias, target)` pairs.
    pub aliases: Vec<(String, String)>,
}

impl Ct2Writer {
    /// An empty model of the given spec and revision, binary version 6.
    pub fn new(spec: &str, revision: u32) -> Self {
        Self {
            binary_version: 6,
            spec: spec.to_owned(),
            revision,
            variables: Vec::new(),
            aliases: Vec::new(),
        }
    }

    /// Adds a variable with raw data (which must already be little-endian).
    pub fn add_raw(&mut self, name: &str, dtype: DType, shape: &[u32], data: Vec<u8>) -> &mut Self {
        self.variables.push(WriterVariable {
            name: name.to_owned(),
            dtype_id: dtype.id(),
            shape: shape.to_vec(),
            data,
        });
        self
    }

    /// Adds a float32 variable.
    pub fn add_f32(&mut self, name: &str, shape: &[u32], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_raw(name, DType::F32, shape, data)
    }

    /// Adds a float16 variable, rounding `values`.
    pub fn add_f16(&mut self, name: &str, shape: &[u32], values: &[f32]) -> &mut Self {
        let data = values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        self.add_raw(name, DType::F16, shape, data)
    }

    /// Adds a bfloat16 variable, rounding `values`.
    pub fn add_bf16(&mut self, name: &str, shape: &[u32], values: &[f32]) -> &mut Self {
        let data = values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        self.add_raw(name, DType::BF16, shape, data)
    }

    /// Adds an int8 variable.
    pub fn add_i8(&mut self, name: &str, shape: &[u32], values: &[i8]) -> &mut Self {
        let data = values.iter().map(|&v| v as u8).collect();
        self.add_raw(name, DType::I8, shape, data)
    }

    /// Adds an int8 scalar (CTranslate2 stores booleans and small enums this way).
    pub fn add_i8_scalar(&mut self, name: &str, value: i8) -> &mut Self {
        self.add_raw(name, DType::I8, &[], vec![value as u8])
    }

    /// Adds an int16 scalar (e.g. `encoder/num_heads`).
    pub fn add_i16_scalar(&mut self, name: &str, value: i16) -> &mut Self {
        self.add_raw(name, DType::I16, &[], value.to_le_bytes().to_vec())
    }

    /// Adds an alias.
    pub fn alias(&mut self, alias: &str, target: &str) -> &mut Self {
        self.aliases.push((alias.to_owned(), target.to_owned()));
        self
    }

    /// Removes the variable or alias `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.variables.len() + self.aliases.len();
        self.variables.retain(|v| v.name != name);
        self.aliases.retain(|(a, _)| a != name);
        before != self.variables.len() + self.aliases.len()
    }

    /// Sorts variables and aliases by name, as CTranslate2's converters write them.
    pub fn sort(&mut self) -> &mut Self {
        self.variables.sort_by(|a, b| a.name.cmp(&b.name));
        self.aliases.sort();
        self
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            let len = u16::try_from(s.len() + 1).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&self.binary_version.to_le_bytes());
        string(&mut out, &self.spec);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.variables.len() as u32).to_le_bytes());
        for v in &self.variables {
            string(&mut out, &v.name);
            out.push(v.shape.len() as u8);
            for d in &v.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.push(v.dtype_id);
            out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&v.data);
        }
        out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
        for (alias, target) in &self.aliases {
            string(&mut out, alias);
            string(&mut out, target);
        }
        out
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| Error::Io {
            action: "write",
            path: path.to_owned(),
            source,
        })
    }
}
