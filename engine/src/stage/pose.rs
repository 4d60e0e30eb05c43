//! Pose: prepared frames through the pose estimator, batched across sessions. Each worker
//! thread owns one estimator; frames leave out of order and the track stage reorders them.

use crossbeam_channel::{Receiver, Sender};
use referee_pose_api::{Person, PoseEstimator, PreparedFrame};
use tracing::{info, info_span, warn};

use super::{PosedFrame, PreparedJob, StageContext};
use crate::clock::Clock;
use crate::stats::{DropReason, Stage};

/// Runs one blank frame through the model so buffers, packed weights and worker threads are
/// ready before the first real frame (the first inference is otherwise several times slower).
fn warm_up(estimator: &mut dyn PoseEstimator, clock: &dyn Clock) {
    let (w, h) = estimator.input_size();
    let blank = PreparedFrame::blank(w, h);
    let started = clock.now();
    match estimator.estimate(&[blank]) {
        Ok(_) => info!(
            ms = (clock.now() - started).as_secs_f64() * 1e3,
            "pose model warmed up"
        ),
        Err(e) => warn!(error = %e, "pose warm-up failed"),
    }
}

pub(crate) fn run(
    ctx: &StageContext,
    mut estimator: Box<dyn PoseEstimator>,
    rx: Receiver<PreparedJob>,
    tx: Sender<PosedFrame>,
) {
    warm_up(estimator.as_mut(), ctx.clock.as_ref());
    let max_batch = ctx.cfg.pose_batch.max(1);
    let mut batch: Vec<PreparedJob> = Vec::with_capacity(max_batch);
    let mut frames: Vec<PreparedFrame> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Frames already waiting (often from other sessions) join the batch.
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch.retain(|j| !j.job.session.is_closed());
        if batch.is_empty() {
            continue;
        }
        let _span = info_span!("pose", batch = batch.len()).entered();
        let started = ctx.clock.now();
        frames.clear();
        let mut jobs = Vec::with_capacity(batch.len());
        for PreparedJob {
            job,
            prepared,
            rectified,
        } in batch.drain(..)
        {
            frames.push(prepared);
            jobs.push((job, rectified));
        }
        let results = estimator.estimate(&frames);
        let elapsed = ctx.clock.now() - started;
        ctx.stats
            .record_stage(Stage::Pose, elapsed / jobs.len() as u32);
        metrics::histogram!("referee_pose_batch_size").record(jobs.len() as f64);
        let per_frame: Vec<Option<Vec<Person>>> = match results {
            Ok(r) if r.len() == jobs.len() => r.into_iter().map(Some).collect(),
            Ok(r) => {
                warn!(
                    expected = jobs.len(),
                    got = r.len(),
                    "pose returned the wrong number of results"
                );
                vec![None; jobs.len()]
            }
            Err(e) => {
                warn!(error = %e, "pose inference failed for a batch");
                vec![None; jobs.len()]
            }
        };
        for ((job, rectified), persons) in jobs.into_iter().zip(per_frame) {
            if persons.is_none() {
                ctx.stats.count_drop(DropReason::PoseFailed);
            }
            let posed = PosedFrame {
                session: job.session,
                frame: job.frame,
                capture_ts_us: job.capture_ts_us,
                encoding: job.encoding,
                bytes: job.bytes,
                persons,
                rectified,
                admitted_at: job.admitted_at,
            };
            drop(job.permit);
            if tx.send(posed).is_err() {
                return;
            }
        }
    }
}
