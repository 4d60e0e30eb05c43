//! Fast CPU path for YOLO11-pose: the same network and outputs as [`crate::YoloPose`], about
//! an order of magnitude faster on a few cores.
//!
//! What makes it fast (each measured with `referee bench pose --profile`):
//! - BatchNorm folded and weights packed once at load into 16-column panels;
//! - NHWC activations in one arena reused across frames (no per-frame allocation once a size
//!   has been seen); concats and splits are channel slices of shared buffers, never copies;
//! - every dense conv is one GEMM (1x1 in place, k x k through an implicit, cache-blocked
//!   im2col, stride-1 3x3 through Winograd F(2x2, 3x3)) on an AVX2/FMA 6x16 micro-kernel with
//!   bias + SiLU (a short-chain vectorised exp) + residual fused into the epilogue; a 12x32
//!   AVX-512 micro-kernel where the CPU has AVX-512 F, a scalar one where AVX2 is missing
//!   (the level is chosen once at load, [`Isa`]); the first layer reads the CHW input directly;
//! - a depthwise 3x3 kernel vectorised over channels; attention as two GEMMs and a
//!   vectorised softmax;
//! - a sparse head in [`PoseEstimator::estimate`]: the class branch runs first and the box and
//!   keypoint branches (a quarter of the network's FLOPs) only at the anchors whose score
//!   passes the threshold, the only ones decoded (the same persons as the dense head; see
//!   [`FastYoloPose::set_sparse_head`]);
//! - rows of every heavy op split over a small spinning thread team (both cores; see
//!   `team.rs` for why not rayon).
//!
//! Why not a candle `CustomOp1`: a custom op must return a freshly allocated, NCHW-contiguous
//! `CpuStorage` per call, which rules out the arena, the slice-as-concat trick and the
//! residual epilogue writing in place; the tensors would also need an NCHW<->NHWC transpose
//! around each op. Candle is still used to read the safetensors weights; the kernels are plain
//! Rust called from the estimator.

mod kernels;
mod net;
mod ops;
mod team;
mod winograd;

use std::path::Path;
use std::time::Instant;

pub use kernels::{Isa, PackedB};
pub use ops::{Kind, OpRecord, Profile, KIND_NAMES, STAGE_NAMES};

use crate::{decode_raw, ModelError, Person, PoseError, PoseEstimator, PoseOptions, PreparedFrame};

/// The fast YOLO11-pose estimator (see the module documentation).
pub struct FastYoloPose {
    net: net::FastNet,
    opts: PoseOptions,
    arena: ops::Arena,
    scratch: net::Scratch,
    raw: Vec<f32>,
    /// The threads a forward runs on (see [`FastYoloPose::set_threads`]).
    team: team::Team,
    /// Head boxes/keypoints only where the class score passes (see [`FastYoloPose::set_sparse_head`]).
    sparse_head: bool,
    /// The kernels' instruction set, chosen at load.
    isa: Isa,
}

impl FastYoloPose {
    /// Loads converted safetensors weights (YOLO11-pose only), on the best instruction set
    /// this CPU has ([`Isa::best`]).
    pub fn load(weights: &Path, opts: PoseOptions) -> Result<Self, ModelError> {
        Self::load_on(weights, opts, Isa::best())
    }

    /// [`FastYoloPose::load`] on the instruction set a `pose.isa` value names (`auto`,
    /// `avx512`, `avx2`, `portable`); one this CPU lacks is an error.
    pub fn load_isa(weights: &Path, opts: PoseOptions, isa: &str) -> Result<Self, ModelError> {
        Self::load_on(weights, opts, Isa::select(isa).map_err(ModelError::Input)?)
    }

    /// [`FastYoloPose::load`] on `isa`, which must be [`Isa::supported`].
    pub fn load_on(weights: &Path, opts: PoseOptions, isa: Isa) -> Result<Self, ModelError> {
        check_size(opts.input_width, opts.input_height)?;
        if !isa.supported() {
            return Err(ModelError::Input(format!(
                "pose ISA {isa}: this CPU lacks it (best here: {})",
                Isa::best()
            )));
        }
        isa.self_check().map_err(ModelError::Input)?;
        // The level decides at load which kernels the layers get (Winograd needs AVX2).
        let net = kernels::with_isa(isa, || net::FastNet::load(weights))?;
        tracing::debug!(isa = isa.name(), "fast pose path loaded");
        Ok(Self {
            net,
            opts,
            arena: ops::Arena::default(),
            scratch: net::Scratch::default(),
            raw: Vec::new(),
            team: new_team(0)?,
            sparse_head: true,
            isa,
        })
    }

    /// The instruction set the kernels run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Options in use.
    pub fn options(&self) -> PoseOptions {
        self.opts
    }

    /// Runs each forward on `n` threads, the caller included (`0`: one per core; the default).
    /// On a machine shared with other busy processes, fewer threads can give lower and
    /// steadier latency: every op waits for its slowest chunk, and a preempted thread stalls it.
    pub fn set_threads(&mut self, n: usize) -> Result<(), ModelError> {
        if threads_for(n) != self.team.threads() {
            self.team = new_team(n)?;
        }
        Ok(())
    }

    /// Whether [`PoseEstimator::estimate`] computes the head's box and keypoint branches only
    /// at anchors whose class score passes the confidence threshold (default: on). The
    /// persons are the same either way (they come from those anchors only); off runs the
    /// whole head densely, as [`FastYoloPose::forward_raw`] always does.
    pub fn set_sparse_head(&mut self, on: bool) {
        self.sparse_head = on;
    }

    /// Threads each forward runs on.
    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// Changes the input size (any positive multiple of 32); buffers grow on the next frame.
    pub fn set_input_size(&mut self, width: usize, height: usize) -> Result<(), ModelError> {
        check_size(width, height)?;
        self.opts.input_width = width;
        self.opts.input_height = height;
        Ok(())
    }

    /// The pre-NMS output `(56, A)`, channel-major, exactly like
    /// [`crate::YoloNet::forward_raw`] (within float rounding), for one CHW image.
    pub fn forward_raw(
        &mut self,
        chw: &[f32],
        width: usize,
        height: usize,
    ) -> Result<&[f32], ModelError> {
        self.run(chw, width, height, None, None)?;
        Ok(&self.raw)
    }

    /// Profile (time per op kind and stage, FLOPs) of the last forward.
    pub fn last_profile(&self) -> Profile {
        self.arena.prof
    }

    /// Turns per-op tracing on or off (see [`FastYoloPose::last_ops`]).
    pub fn set_trace(&mut self, on: bool) {
        self.arena.trace = on;
    }

    /// Per-op records of the last forward (empty unless tracing is on).
    pub fn last_ops(&self) -> &[OpRecord] {
        &self.arena.ops
    }

    /// Floats held by the activation arena (grows to the largest size seen).
    pub fn arena_floats(&self) -> usize {
        self.arena.capacity()
    }

    fn run(
        &mut self,
        chw: &[f32],
        width: usize,
        height: usize,
        min_logit: Option<f32>,
        head_logit: Option<f32>,
    ) -> Result<(), ModelError> {
        check_size(width, height)?;
        if chw.len() != 3 * width * height {
            return Err(ModelError::Input(format!(
                "input has {} values, expected 3x{height}x{width}",
                chw.len()
            )));
        }
        let t0 = Instant::now();
        let (model, arena, scratch, raw) =
            (&self.net, &mut self.arena, &mut self.scratch, &mut self.raw);
        let work = move || -> Result<(), ModelError> {
            arena.reset();
            let outs = model.features(arena, scratch, chw, width, height, head_logit)?;
            net::decode_timed(arena, &outs, min_logit, raw);
            Ok(())
        };
        kernels::with_isa(self.isa, || team::install(&self.team, work))?;
        self.arena.prof.total_s = t0.elapsed().as_secs_f64();
        Ok(())
    }
}

/// `n`, or one per core for `0`.
fn threads_for(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |p| p.get())
    } else {
        n
    }
}

/// A team of `n` threads (`0`: one per core).
fn new_team(n: usize) -> Result<team::Team, ModelError> {
    let n = threads_for(n);
    team::Team::new(n).map_err(|e| ModelError::Input(format!("cannot start {n} pose threads: {e}")))
}

fn check_size(w: usize, h: usize) -> Result<(), ModelError> {
    if w == 0 || h == 0 || !w.is_multiple_of(32) || !h.is_multiple_of(32) {
        return Err(ModelError::Input(format!(
            "input size {w}x{h} must be positive multiples of 32"
        )));
    }
    Ok(())
}

impl PoseEstimator for FastYoloPose {
    fn input_size(&self) -> (usize, usize) {
        (self.opts.input_width, self.opts.input_height)
    }

    fn estimate(&mut self, batch: &[PreparedFrame]) -> Result<Vec<Vec<Person>>, PoseError> {
        let mut out = Vec::with_capacity(batch.len());
        let thr = self.opts.conf_threshold;
        // score > thr  <=>  logit > ln(thr / (1 - thr)); skip the box/keypoint decode of the rest.
        let min_logit = (thr > 0.0 && thr < 1.0).then(|| (thr / (1.0 - thr)).ln() - 1e-3);
        let head_logit = min_logit.filter(|_| self.sparse_head);
        for f in batch {
            self.run(&f.chw, f.width, f.height, min_logit, head_logit)?;
            let a = self.raw.len() / crate::decode::RAW_ROWS;
            let mut persons = decode_raw(&self.raw, a, thr, self.opts.iou_threshold);
            for p in &mut persons {
                f.letterbox.person_to_source(p);
            }
            out.push(persons);
        }
        Ok(out)
    }
}

/// Test inputs shared by the kernel, Winograd and op tests.
#[cfg(test)]
pub(crate) mod testing {
    /// Small deterministic PRNG (xorshift) for test inputs in [-1, 1).
    pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}
