//! Decode: the encoded frame bytes (JPEG, PNG, raw RGB) into an RGB image. A frame that does
//! not decode is counted and still reported to the track stage, which must learn it arrived.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use referee_pose_api::decode_frame;
use tracing::{info_span, warn};

use super::{DecodedJob, FrameJob, PosedFrame, StageContext};
use crate::stats::{DropReason, Stage};

pub(crate) fn run(
    ctx: &StageContext,
    rx: Receiver<FrameJob>,
    tx: Sender<DecodedJob>,
    failed_tx: Sender<PosedFrame>,
) {
    for job in rx {
        if job.session.is_closed() {
            continue;
        }
        let _span = info_span!("decode", session = job.session.id(), frame = job.frame).entered();
        let started = ctx.clock.now();
        match decode_frame(job.encoding, &job.bytes, ctx.cfg.max_frame_pixels) {
            Ok(image) => {
                ctx.stats
                    .record_stage(Stage::Decode, ctx.clock.now() - started);
                if tx.send(DecodedJob { job, image }).is_err() {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "bad frame bytes; counted, session continues");
                job.session
                    .counters
                    .bad_frames
                    .fetch_add(1, Ordering::Relaxed);
                ctx.stats.count_drop(DropReason::BadImage);
                let failed = job.failed();
                if failed_tx.send(failed).is_err() {
                    return;
                }
            }
        }
    }
}
