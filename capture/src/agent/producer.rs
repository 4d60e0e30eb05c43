//! The capture thread: takes frames from the source at the pacer's rate, encodes them and
//! pushes them into the ring, numbered from 0, until the source ends or the agent stops.

use super::ring::{OutFrame, Ring};
use super::AgentError;
use crate::encode::{encode, Encoding};
use crate::pacing::Pacer;
use crate::source::{CaptureStamps, FrameSource};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Starts the capture thread; it marks the ring finished (with the error that ended the source,
/// if any) before it returns.
pub(super) fn spawn_producer(
    mut source: Box<dyn FrameSource>,
    encoding: Encoding,
    mut pacer: Pacer,
    stop: Arc<AtomicBool>,
    ring: Arc<Ring>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        let mut error = None;
        let mut stamps = CaptureStamps::default();
        while !stop.load(Ordering::Relaxed) {
            pacer.wait_blocking();
            let frame = match source.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => frame,
                Err(e) => {
                    error = Some(AgentError::Source(e));
                    break;
                }
            };
            let (enc, bytes) = match encode(&frame, encoding) {
                Ok(x) => x,
                Err(e) => {
                    error = Some(AgentError::Encode(e));
                    break;
                }
            };
            let out = OutFrame {
                frame: n,
                capture_ts_us: stamps.stamp(frame.capture_ts_us, frame.pts_us),
                encoding: enc,
                bytes: Arc::new(bytes),
            };
            if !ring.push(out, &stop) {
                break;
            }
            n += 1;
        }
        ring.finish(error);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pacing::Pacing;
    use crate::source::Synthetic;
    use referee_transport::messages::{Ack, FrameEncoding};
    use std::time::Duration;

    /// Runs the producer over `frames` synthetic frames at `fps`, as fast as possible, into an
    /// 8-frame ring; returns the ring once the source is exhausted.
    async fn produce_all(fps: f32, frames: u64) -> Arc<Ring> {
        let source = Synthetic::new(16, 16, fps, Some(frames)).unwrap();
        let ring = Arc::new(Ring::new(8, false));
        let pacer = Pacer::new(Pacing::AsFastAsPossible).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        spawn_producer(Box::new(source), Encoding::Raw, pacer, stop, ring.clone())
            .await
            .unwrap();
        ring
    }

    /// Issue #16 item 5: a file streamed as fast as possible was stamped with the time each
    /// frame was read, so its phrase looked a few milliseconds long. Stamps follow the media.
    #[tokio::test]
    async fn time_from_the_wrong_clock_file_frames_carry_media_time() {
        let ring = produce_all(10.0, 4).await;
        let ts: Vec<u64> = ring
            .unsent_before(u64::MAX)
            .iter()
            .map(|f| f.capture_ts_us)
            .collect();
        assert!(ts[0] > 0);
        let gaps: Vec<u64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [100_000; 3], "10 fps media time, whatever the pacing");
        let mut camera = CaptureStamps::default();
        assert_eq!(camera.stamp(7, None), 7, "a camera's own stamp is kept");
    }

    #[tokio::test]
    async fn encodes_every_frame_into_the_ring_in_order() {
        let ring = produce_all(30.0, 3).await;
        assert!(ring.exhausted(3) && !ring.exhausted(2));
        assert!(ring.take_error().is_none());
        let frames = ring.unsent_before(u64::MAX);
        let numbers: Vec<u64> = frames.iter().map(|f| f.frame).collect();
        assert_eq!(numbers, [0, 1, 2]);
        for f in &frames {
            assert_eq!(
                f.encoding,
                FrameEncoding::Rgb24 {
                    width: 16,
                    height: 16
                }
            );
            assert_eq!(f.bytes.len(), 16 * 16 * 3);
        }
        assert_eq!(ring.counts(&Ack::default()), (3, 3, 0));
    }

    #[tokio::test]
    async fn stops_when_told() {
        let source = Synthetic::new(16, 16, 30.0, None).unwrap();
        let ring = Arc::new(Ring::new(2, false));
        let pacer = Pacer::new(Pacing::AsFastAsPossible).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let task = spawn_producer(
            Box::new(source),
            Encoding::Raw,
            pacer,
            stop.clone(),
            ring.clone(),
        );
        // An endless source fills the blocking ring, then waits for acks until stopped.
        let filled = async {
            while ring.counts(&Ack::default()).1 < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), filled)
            .await
            .expect("the ring fills up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "a full blocking ring holds the capture thread"
        );
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the capture thread ends once stopped")
            .unwrap();
        assert!(ring.exhausted(u64::MAX));
    }
}
