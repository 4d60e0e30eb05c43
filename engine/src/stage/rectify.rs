//! Rectify: each decoded frame through its geometry's remap table (fisheye undistort, piste-band
//! crop and letterbox fused into one lookup), ready for pose.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use tracing::{info_span, warn};

use super::{DecodedJob, PosedFrame, PreparedJob, StageContext};
use crate::rectify::RemapCache;
use crate::stats::{DropReason, Stage};

/// The rectify stage: one remap table per camera geometry (fisheye undistort, piste-band crop
/// and letterbox fused), shared by every session that uses it.
pub(crate) fn run(
    ctx: &StageContext,
    rx: Receiver<DecodedJob>,
    tx: Sender<PreparedJob>,
    failed_tx: Sender<PosedFrame>,
) {
    // One remap table per camera geometry, shared by every session that uses it.
    let mut tables = RemapCache::new(16);
    for DecodedJob { job, image } in rx {
        if job.session.is_closed() {
            continue;
        }
        let _span = info_span!("rectify", session = job.session.id(), frame = job.frame).entered();
        let started = ctx.clock.now();
        let prepared = tables
            .get(image.width, image.height, &job.session.rectify)
            .and_then(|table| Ok((table.prepare(&image)?, table.rectified_size())));
        let (prepared, rectified) = match prepared {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot rectify this frame; dropped");
                job.session.counters.dropped.fetch_add(1, Ordering::Relaxed);
                ctx.stats.count_drop(DropReason::Geometry);
                if failed_tx.send(job.failed()).is_err() {
                    return;
                }
                continue;
            }
        };
        ctx.stats
            .record_stage(Stage::Rectify, ctx.clock.now() - started);
        if tx
            .send(PreparedJob {
                job,
                prepared,
                rectified,
            })
            .is_err()
        {
            return;
        }
    }
}
