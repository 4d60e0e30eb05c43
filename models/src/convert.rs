//! PyTorch checkpoint (`.pt` zip pickling a whole Ultralytics model) to safetensors, in Rust.
//!
//! The walk mirrors `nn.Module.state_dict()`: starting at `ckpt["model"]` (or `ckpt["ema"]`), each
//! module's `_parameters` and `_buffers` are emitted under the dotted path of `_modules` keys, and
//! `num_batches_tracked` buffers are dropped. A checkpoint that is a plain `{name: tensor}` dict is
//! accepted as well.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::pickle::{self, TensorRef, Value};

/// Error converting a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The checkpoint could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a readable zip, or entries missing: typically a truncated download.
    #[error("{path} is not a valid PyTorch checkpoint (corrupt or truncated file?): {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The pickle did not contain a model we understand.
    #[error("{path}: unsupported checkpoint layout: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// Element type of a converted tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
    /// 64-bit integer.
    I64,
    /// 32-bit integer.
    I32,
}

impl DType {
    fn from_storage(kind: &str) -> Option<Self> {
        Some(match kind {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            _ => return None,
        })
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }
    fn st(self) -> safetensors::Dtype {
        match self {
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::I64 => safetensors::Dtype::I64,
            DType::I32 => safetensors::Dtype::I32,
        }
    }
}

/// One tensor read out of a checkpoint: contiguous little-endian data.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Dotted state-dict name, e.g. `model.0.conv.weight`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Contiguous data (row-major, little-endian).
    pub data: Vec<u8>,
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.st()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Reads every parameter and buffer of the model in a PyTorch zip checkpoint, in state-dict order.
pub fn read_checkpoint(path: &Path) -> Result<Vec<RawTensor>, ConvertError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ConvertError::Io {
        path: p.clone(),
        source,
    })?;
    read_checkpoint_bytes(&bytes, &p)
}

/// Like [`read_checkpoint`], from bytes in memory (`label` names the source in errors).
pub fn read_checkpoint_bytes(bytes: &[u8], label: &str) -> Result<Vec<RawTensor>, ConvertError> {
    let corrupt = |reason: String| ConvertError::Corrupt {
        path: label.to_string(),
        reason,
    };
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(format!("zip: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.to_string())
        .ok_or_else(|| corrupt("no data.pkl inside".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .map_err(|e| corrupt(format!("{pkl_name}: {e}")))?
        .read_to_end(&mut pkl)
        .map_err(|e| corrupt(format!("{pkl_name}: {e}")))?;
    let root = pickle::load(&pkl).map_err(|e| corrupt(e.to_string()))?;

    let mut found: Vec<(String, std::rc::Rc<TensorRef>)> = Vec::new();
    let unsupported = |reason: &str| ConvertError::Unsupported {
        path: label.to_string(),
        reason: reason.to_string(),
    };
    let model = match (root.dict_get("model"), root.dict_get("ema")) {
        (Some(m @ Value::Object(_)), _) => m,
        (_, Some(m @ Value::Object(_))) => m,
        _ => root.clone(),
    };
    match &model {
        Value::Object(_) => walk_module(&model, "", &mut found),
        Value::Dict(d) => {
            // A plain state dict.
            for (k, v) in d.borrow().iter() {
                if let (Some(k), Value::Tensor(t)) = (k.as_str(), v) {
                    found.push((k.to_string(), t.clone()));
                }
            }
        }
        _ => return Err(unsupported("neither a model object nor a state dict")),
    }
    found.retain(|(n, _)| !n.ends_with("num_batches_tracked"));
    if found.is_empty() {
        return Err(unsupported("no tensors found in the pickled model"));
    }

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (name, t) in found {
        let dtype = DType::from_storage(&t.storage.kind)
            .ok_or_else(|| unsupported(&format!("{name}: storage type {}", t.storage.kind)))?;
        if !storages.contains_key(&t.storage.key) {
            let entry = format!("{prefix}data/{}", t.storage.key);
            let mut buf = Vec::new();
            zip.by_name(&entry)
                .map_err(|e| corrupt(format!("{entry}: {e}")))?
                .read_to_end(&mut buf)
                .map_err(|e| corrupt(format!("{entry}: {e}")))?;
            if buf.len() < t.storage.numel * dtype.size() {
                return Err(corrupt(format!(
                    "{entry}: {} bytes, expected {}",
                    buf.len(),
                    t.storage.numel * dtype.size()
                )));
            }
            storages.insert(t.storage.key.clone(), buf);
        }
        let storage = &storages[&t.storage.key];
        let data = gather(storage, &t, dtype.size())
            .ok_or_else(|| corrupt(format!("{name}: view out of storage bounds")))?;
        out.push(RawTensor {
            name,
            dtype,
            shape: t.size.clone(),
            data,
        });
    }
    Ok(out)
}

/// Copies a strided view into contiguous bytes; `None` when it reaches outside the storage.
fn gather(storage: &[u8], t: &TensorRef, es: usize) -> Option<Vec<u8>> {
    let numel: usize = t.size.iter().product();
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
            if s != 1 && st != expect {
                ok = false;
                break;
            }
            expect *= s;
        }
        ok
    };
    if contiguous {
        let start = t.offset.checked_mul(es)?;
        let end = start.checked_add(numel.checked_mul(es)?)?;
        return storage.get(start..end).map(<[u8]>::to_vec);
    }
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let off: usize = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(storage.get(off * es..(off + 1) * es)?);
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

fn walk_module(module: &Value, prefix: &str, out: &mut Vec<(String, std::rc::Rc<TensorRef>)>) {
    let state = match module {
        Value::Object(o) => o.borrow().state.clone(),
        _ => None,
    };
    let Some(state) = state else { return };
    for key in ["_parameters", "_buffers"] {
        if let Some(Value::Dict(d)) = state.dict_get(key) {
            for (k, v) in d.borrow().iter() {
                if let (Some(k), Value::Tensor(t)) = (k.as_str(), v) {
                    out.push((format!("{prefix}{k}"), t.clone()));
                }
            }
        }
    }
    if let Some(Value::Dict(d)) = state.dict_get("_modules") {
        for (k, v) in d.borrow().iter() {
            if let Some(k) = k.as_str() {
                walk_module(v, &format!("{prefix}{k}."), out);
            }
        }
    }
}

/// Converts IEEE half bits to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // subnormal: normalise
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
    } else if exp == 0x1f {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 127 - 15) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

/// Converts floating tensors to f32 in place (integers are left alone).
pub fn upcast_f32(tensors: &mut [RawTensor]) {
    for t in tensors {
        let data: Option<Vec<u8>> = match t.dtype {
            DType::F16 => Some(
                t.data
                    .chunks_exact(2)
                    .flat_map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
                    .collect(),
            ),
            DType::BF16 => Some(
                t.data
                    .chunks_exact(2)
                    .flat_map(|c| {
                        f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)
                            .to_le_bytes()
                    })
                    .collect(),
            ),
            DType::F64 => Some(
                t.data
                    .chunks_exact(8)
                    .flat_map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        (f64::from_le_bytes(a) as f32).to_le_bytes()
                    })
                    .collect(),
            ),
            _ => None,
        };
        if let Some(d) = data {
            t.data = d;
            t.dtype = DType::F32;
        }
    }
}

/// Serialises tensors to safetensors bytes (with optional string metadata).
pub fn to_safetensors(
    tensors: &[RawTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    safetensors::serialize(tensors.iter().map(|t| (t.name.as_str(), t)), metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn gather_handles_transposed_views() {
        // storage 0..6 as u8 elements, view 3x2 transposed of a 2x3
        let storage: Vec<u8> = (0u8..6).collect();
        let t = TensorRef {
            storage: pickle::StorageRef {
                kind: "ByteStorage".into(),
                key: "0".into(),
                numel: 6,
            },
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(gather(&storage, &t, 1).unwrap(), vec![0, 3, 1, 4, 2, 5]);
        let bad = TensorRef { offset: 4, ..t };
        assert!(gather(&storage, &bad, 1).is_none());
    }
}
