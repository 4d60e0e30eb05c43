//! The converted weights, one home for both networks ([`crate::net`], the reference, and
//! [`crate::fast`]): reading the safetensors file (after the fetch sidecar's hash check),
//! looking tensors up by name with errors that name the file, and BatchNorm folding.
//!
//! The folding arithmetic ([`fold_bn`]) is written once, over plain `f32` slices; the
//! reference network turns the folded values back into Candle tensors. It is the same f32
//! arithmetic, operation for operation, as the Candle tensor ops the reference used before
//! (`gamma / sqrt(var + eps)`, `w * scale`, `beta - mean * scale`), so the reference's
//! numbers did not move (see the test at the bottom).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// BatchNorm epsilon used by Ultralytics.
pub(crate) const BN_EPS: f32 = 1e-3;

/// Reads the converted safetensors file at `path` into named tensors, floats as f32 (other
/// dtypes as they are). A missing file is [`ModelError::WeightsMissing`]; a hash that
/// disagrees with the fetch sidecar, or a file that is not readable safetensors, is
/// [`ModelError::WeightsInvalid`]. Without a sidecar the hash cannot be checked, and a
/// warning says so (for the reference and the fast path alike).
pub(crate) fn read(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    if !path.exists() {
        return Err(ModelError::WeightsMissing(path.to_path_buf()));
    }
    if crate::fetch::sidecar_path(path).exists() {
        crate::fetch::verify_converted(path).map_err(|e| ModelError::WeightsInvalid {
            path: path.to_path_buf(),
            reason: match e {
                crate::fetch::FetchError::Invalid { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
    } else {
        tracing::warn!(path = %path.display(), "no fetch sidecar next to the weights: hash not verified");
    }
    let raw = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        ModelError::WeightsInvalid {
            path: path.to_path_buf(),
            reason: format!("not a readable safetensors file (truncated?): {e}"),
        }
    })?;
    let mut map = HashMap::with_capacity(raw.len());
    for (k, v) in raw {
        let v = if v.dtype().is_float() {
            v.to_dtype(DType::F32)?
        } else {
            v
        };
        map.insert(k, v);
    }
    Ok(map)
}

/// A tensor whose dims and f32 values can be read: a Candle [`Tensor`] (reference path) or a
/// [`HostTensor`] (fast path).
pub(crate) trait F32Tensor {
    /// The shape.
    fn dims(&self) -> &[usize];
    /// All values, row-major.
    fn values(&self) -> Result<Cow<'_, [f32]>, ModelError>;
}

impl F32Tensor for Tensor {
    fn dims(&self) -> &[usize] {
        Tensor::dims(self)
    }

    fn values(&self) -> Result<Cow<'_, [f32]>, ModelError> {
        Ok(Cow::Owned(self.flatten_all()?.to_vec1::<f32>()?))
    }
}

/// A tensor copied out of Candle into plain memory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostTensor {
    /// The shape.
    pub dims: Vec<usize>,
    /// The values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Copies an f32 (or other float) tensor.
    pub fn from_tensor(t: &Tensor) -> Result<Self, ModelError> {
        Ok(Self {
            dims: t.dims().to_vec(),
            data: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

impl F32Tensor for HostTensor {
    fn dims(&self) -> &[usize] {
        &self.dims
    }

    fn values(&self) -> Result<Cow<'_, [f32]>, ModelError> {
        Ok(Cow::Borrowed(&self.data))
    }
}

/// A convolution with BatchNorm folded in: weights in the layout they were stored in (OIHW),
/// their dims, one bias per output channel.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Folded {
    /// Weights, `dims[0]` rows of `len / dims[0]`.
    pub w: Vec<f32>,
    /// Dims of `w`.
    pub dims: Vec<usize>,
    /// Bias, `dims[0]` values.
    pub bias: Vec<f32>,
}

/// Named tensors of one weights file; `path` only labels errors.
pub(crate) struct Weights<'a, T> {
    map: &'a HashMap<String, T>,
    path: &'a Path,
}

impl<'a, T> Weights<'a, T> {
    /// The tensors `map`, read from `path`.
    pub fn new(map: &'a HashMap<String, T>, path: &'a Path) -> Self {
        Self { map, path }
    }

    /// The tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&'a T, ModelError> {
        self.map
            .get(name)
            .ok_or_else(|| self.invalid(format!("tensor {name} is missing")))
    }

    /// Whether the tensor `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// How many of `{prefix}0{suffix}`, `{prefix}1{suffix}`, ... exist in a row.
    pub fn count(&self, prefix: &str, suffix: &str) -> usize {
        (0..)
            .take_while(|j| self.has(&format!("{prefix}{j}{suffix}")))
            .count()
    }

    /// [`ModelError::WeightsInvalid`] for this file.
    pub fn invalid(&self, reason: String) -> ModelError {
        ModelError::WeightsInvalid {
            path: self.path.to_path_buf(),
            reason,
        }
    }
}

impl<T: F32Tensor> Weights<'_, T> {
    /// The values of the vector `name`, which must have shape `[len]`.
    pub fn vector(&self, name: &str, len: usize) -> Result<Cow<'_, [f32]>, ModelError> {
        let t = self.get(name)?;
        if t.dims() != [len] {
            return Err(self.invalid(format!("{name}: shape {:?}, expected [{len}]", t.dims())));
        }
        t.values()
    }

    /// `{p}.conv.weight` with `{p}.bn.{weight,bias,running_mean,running_var}` folded in
    /// (see [`fold_bn`]).
    pub fn folded(&self, p: &str) -> Result<Folded, ModelError> {
        let name = format!("{p}.conv.weight");
        let w = self.get(&name)?;
        let dims = w.dims().to_vec();
        let co = *dims
            .first()
            .ok_or_else(|| self.invalid(format!("{name} is a scalar")))?;
        let bn = |n: &str| self.vector(&format!("{p}.bn.{n}"), co);
        let (gamma, beta) = (bn("weight")?, bn("bias")?);
        let (mean, var) = (bn("running_mean")?, bn("running_var")?);
        let (w, bias) = fold_bn(&w.values()?, &gamma, &beta, &mean, &var, BN_EPS);
        Ok(Folded { w, dims, bias })
    }
}

/// Folds an inference BatchNorm into the convolution before it: with
/// `scale[o] = gamma[o] / sqrt(var[o] + eps)`, row `o` of `conv_w` (`conv_w.len() / co`
/// values, `co = gamma.len()`) is multiplied by `scale[o]` and the bias is
/// `beta[o] - mean[o] * scale[o]`. Returns (weights, bias).
///
/// # Panics
/// If `beta`, `mean` or `var` is shorter than `gamma` (callers check the shapes).
pub(crate) fn fold_bn(
    conv_w: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let co = gamma.len();
    let per = conv_w.len() / co.max(1);
    let mut w = conv_w.to_vec();
    let mut bias = vec![0f32; co];
    for o in 0..co {
        let s = gamma[o] / (var[o] + eps).sqrt();
        for v in &mut w[o * per..(o + 1) * per] {
            *v *= s;
        }
        bias[o] = beta[o] - mean[o] * s;
    }
    (w, bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` values in [lo, hi).
    fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let unit = crate::fast::testing::rand_vec(n, seed);
        unit.iter()
            .map(|v| lo + (hi - lo) * (v + 1.0) / 2.0)
            .collect()
    }

    #[test]
    fn fold_bn_is_the_candle_fold_bit_for_bit() {
        // The ops the reference network folded with before (Candle tensors, f64 epsilon).
        assert_eq!(1e-3f64 as f32, BN_EPS);
        let (co, ci, k) = (24, 7, 3);
        let w = rand_vec(co * ci * k * k, 1, -1.0, 1.0);
        let gamma = rand_vec(co, 2, 0.2, 3.0);
        let beta = rand_vec(co, 3, -2.0, 2.0);
        let mean = rand_vec(co, 4, -1.0, 1.0);
        let var = rand_vec(co, 5, 1e-4, 5.0);
        let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu).unwrap();
        let wt = t(&w, &[co, ci, k, k]);
        let (g, b, m, v) = (
            t(&gamma, &[co]),
            t(&beta, &[co]),
            t(&mean, &[co]),
            t(&var, &[co]),
        );
        let scale = (g / (v + 1e-3f64).unwrap().sqrt().unwrap()).unwrap();
        let want_w = wt
            .broadcast_mul(&scale.reshape((co, 1, 1, 1)).unwrap())
            .unwrap();
        let want_b = (b - (m * &scale).unwrap()).unwrap();
        let (got_w, got_b) = fold_bn(&w, &gamma, &beta, &mean, &var, BN_EPS);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got_w),
            bits(&want_w.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        );
        assert_eq!(bits(&got_b), bits(&want_b.to_vec1::<f32>().unwrap()));
    }

    #[test]
    fn folded_reads_the_bn_tensors_and_checks_their_shapes() {
        let host = |dims: &[usize], data: Vec<f32>| HostTensor {
            dims: dims.to_vec(),
            data,
        };
        let mut map = HashMap::new();
        map.insert(
            "c.conv.weight".to_string(),
            host(&[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
        );
        map.insert("c.bn.weight".to_string(), host(&[2], vec![2.0, 0.5]));
        map.insert("c.bn.bias".to_string(), host(&[2], vec![1.0, -1.0]));
        map.insert("c.bn.running_mean".to_string(), host(&[2], vec![0.5, 4.0]));
        map.insert(
            "c.bn.running_var".to_string(),
            host(&[2], vec![1.0 - BN_EPS, 4.0 - BN_EPS]),
        );
        let path = Path::new("w.safetensors");
        let ws = Weights::new(&map, path);
        let f = ws.folded("c").expect("folded");
        let (s0, s1) = (
            2.0 / (1.0 - BN_EPS + BN_EPS).sqrt(),
            0.5 / (4.0 - BN_EPS + BN_EPS).sqrt(),
        );
        assert_eq!(f.dims, [2, 1, 1, 2]);
        assert_eq!(f.w, [s0, 2.0 * s0, 3.0 * s1, 4.0 * s1]);
        assert_eq!(f.bias, [1.0 - 0.5 * s0, -1.0 - 4.0 * s1]);
        assert!(ws.has("c.bn.bias") && !ws.has("d.conv.weight"));
        assert_eq!(ws.count("c.", ".nothing"), 0);
        // a missing tensor and a wrong BatchNorm shape name the tensor
        let msg = |e: ModelError| e.to_string();
        assert!(msg(ws.folded("d").unwrap_err()).contains("tensor d.conv.weight is missing"));
        map.insert("c.bn.bias".to_string(), host(&[3], vec![0.0; 3]));
        let ws = Weights::new(&map, path);
        let e = msg(ws.folded("c").unwrap_err());
        assert!(e.contains("c.bn.bias: shape [3], expected [2]") && e.contains("w.safetensors"));
    }

    #[test]
    fn missing_file_is_weights_missing() {
        let p = std::env::temp_dir().join("referee-no-such-weights.safetensors");
        assert!(matches!(read(&p), Err(ModelError::WeightsMissing(_))));
    }
}
