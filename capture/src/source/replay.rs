//! Replays JPEG frames captured (or encoded) earlier, as if a camera produced them now: each
//! frame is stamped with the wall-clock time at which it is handed out.
//!
//! Benches and tests use it to stream the same bytes several times without decoding or
//! encoding again (the frames are shared, so a new replay of them costs nothing).
//! [`Replay::from_recording`] replays a phrase the daemon recorded (`referee-record`): its
//! frames exactly as received, at the rate of their capture stamps, each with its media time
//! (capture stamp minus the first one) as `pts_us`.

use super::{now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo};
use std::sync::Arc;

/// A source yielding the given JPEG frames in order, once.
#[derive(Debug, Clone)]
pub struct Replay {
    info: SourceInfo,
    frames: Arc<[Vec<u8>]>,
    /// Media time of each frame (recordings), else none.
    pts_us: Option<Arc<[u64]>>,
    next: usize,
}

impl Replay {
    /// Replays `frames` (complete JPEG files) with `info`'s name, size and frame rate; the frame
    /// count becomes the number of frames given.
    pub fn new(info: SourceInfo, frames: impl Into<Arc<[Vec<u8>]>>) -> Self {
        let frames = frames.into();
        let info = SourceInfo {
            frame_count: Some(frames.len() as u64),
            ..info
        };
        Replay {
            info,
            frames,
            pts_us: None,
            next: 0,
        }
    }

    /// The frames of a recording (`phrase-NNN.tar`) in the order the daemon received them,
    /// with the recorded session's name, size and the frame rate of its capture stamps. Only
    /// JPEG frames are forwarded as they are (the agent's default encoding); a recording of PNG
    /// or raw frames is refused. Also returns the recorded signal log's name and bytes.
    pub fn from_recording(path: &std::path::Path) -> Result<(Self, String, Vec<u8>), SourceError> {
        let bad = |reason: String| SourceError::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        let rec = referee_record::Recording::open(path).map_err(|e| bad(e.to_string()))?;
        if let Some(reason) = rec.incomplete_reason() {
            return Err(bad(format!("the recording is incomplete: {reason}")));
        }
        let mut frames = Vec::with_capacity(rec.frames.len());
        let mut stamps = Vec::with_capacity(rec.frames.len());
        for (f, bytes) in rec.frames {
            if f.encoding != referee_pose_api::FrameEncoding::Jpeg {
                return Err(bad(format!(
                    "{} is {:?}: only JPEG frames are replayed",
                    f.file, f.encoding
                )));
            }
            frames.push(bytes);
            stamps.push((f.frame, f.capture_ts_us));
        }
        let m = &rec.manifest;
        let first = stamps.iter().map(|s| s.1).find(|&t| t > 0).unwrap_or(0);
        let pts: Vec<u64> = stamps.iter().map(|s| s.1.saturating_sub(first)).collect();
        let info = SourceInfo {
            name: format!("{} phrase {}", m.session_id, m.phrase),
            width: m.width,
            height: m.height,
            fps: stamp_rate(&stamps).unwrap_or(m.fps),
            frame_count: None,
        };
        let signal_file = m.signal_file.clone();
        let mut replay = Replay::new(info, frames);
        replay.pts_us = Some(pts.into());
        Ok((replay, signal_file, rec.signal))
    }
}

/// Frames per second of capture time between the first and last stamped frames (frame numbers
/// count captures, so frames lost on the way do not lower it).
fn stamp_rate(stamps: &[(u64, u64)]) -> Option<f32> {
    let mut stamped = stamps.iter().filter(|s| s.1 > 0);
    let (a, b) = (stamped.next()?, stamped.next_back()?);
    let (frames, secs) = (
        b.0.checked_sub(a.0)? as f64,
        (b.1.checked_sub(a.1)?) as f64 / 1e6,
    );
    let rate = frames / secs;
    (rate.is_finite() && rate > 0.0).then_some(rate as f32)
}

impl FrameSource for Replay {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        let Some(bytes) = self.frames.get(self.next) else {
            return Ok(None);
        };
        let frame = CapturedFrame {
            index: self.next as u64,
            capture_ts_us: now_us(),
            width: self.info.width,
            height: self.info.height,
            data: FrameData::Jpeg(bytes.clone()),
            pts_us: self.pts_us.as_ref().and_then(|p| p.get(self.next).copied()),
        };
        self.next += 1;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SourceInfo {
        SourceInfo {
            name: "clip.mp4".into(),
            width: 64,
            height: 48,
            fps: 25.0,
            frame_count: None,
        }
    }

    #[test]
    fn replays_each_frame_once_in_order_stamped_now() {
        let frames: Arc<[Vec<u8>]> = vec![vec![0xFF, 0xD8, 1], vec![0xFF, 0xD8, 2]].into();
        let mut r = Replay::new(info(), frames.clone());
        assert_eq!(r.info().frame_count, Some(2));
        assert_eq!(
            (r.info().width, r.info().height, r.info().fps),
            (64, 48, 25.0)
        );
        let before = now_us();
        for (i, want) in frames.iter().enumerate() {
            let f = r.next_frame().unwrap().expect("a frame");
            assert_eq!(f.index, i as u64);
            assert_eq!(f.data, FrameData::Jpeg(want.clone()));
            assert_eq!((f.width, f.height, f.pts_us), (64, 48, None));
            assert!(f.capture_ts_us >= before);
        }
        assert!(r.next_frame().unwrap().is_none());
        assert!(r.next_frame().unwrap().is_none(), "stays at the end");
        // A second replay of the same frames starts from the first again.
        let mut again = Replay::new(info(), frames);
        assert_eq!(again.next_frame().unwrap().unwrap().index, 0);
    }

    #[test]
    fn a_recording_replays_its_frames_at_the_rate_of_their_stamps() {
        use referee_record::{FrameRecord, Manifest, ModelId, PhraseWriter, FORMAT_VERSION};
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s/phrase-000.tar");
        let mut w = PhraseWriter::create(&path).unwrap();
        // Frames 0, 1 and 3 (2 was lost on the way) at 25 fps of capture time.
        for n in [0u64, 1, 3] {
            let bytes = vec![0xFF, 0xD8, n as u8];
            let rec = FrameRecord {
                frame: n,
                capture_ts_us: 5_000_000 + n * 40_000,
                encoding: referee_pose_api::FrameEncoding::Jpeg,
                len: 3,
                arrival_us: 1,
                file: referee_record::layout::frame_entry(n, referee_pose_api::FrameEncoding::Jpeg),
            };
            w.add_frame(rec, &bytes).unwrap();
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            complete: true,
            incomplete_reason: None,
            session_id: "s".into(),
            piste: "p".into(),
            camera: "c".into(),
            fps: 30.0,
            width: 64,
            height: 48,
            undistort: None,
            phrase: 0,
            phrase_start_us: None,
            signal_file: "log.txt".into(),
            frames: 3,
            frame_bytes: 9,
            recorded_at_ms: 0,
            engine_version: "t".into(),
            pose_model: ModelId::stand_in("stand-in"),
            settings: Default::default(),
            verdict: serde_json::json!({}),
            referee_call: None,
        };
        w.finish("log.txt", b"the log", &manifest).unwrap();
        let (mut r, name, log) = Replay::from_recording(&path).unwrap();
        assert_eq!(
            (name.as_str(), log.as_slice()),
            ("log.txt", &b"the log"[..])
        );
        assert_eq!((r.info().width, r.info().height), (64, 48));
        assert!((r.info().fps - 25.0).abs() < 1e-3, "{}", r.info().fps);
        let mut got = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            got.push((f.data, f.pts_us));
        }
        assert_eq!(
            got,
            vec![
                (FrameData::Jpeg(vec![0xFF, 0xD8, 0]), Some(0)),
                (FrameData::Jpeg(vec![0xFF, 0xD8, 1]), Some(40_000)),
                (FrameData::Jpeg(vec![0xFF, 0xD8, 3]), Some(120_000)),
            ]
        );
        // An unfinished one is refused.
        std::fs::write(tmp.path().join("s/phrase-001.tar.partial"), b"x").unwrap();
        assert!(Replay::from_recording(&tmp.path().join("s/phrase-001.tar.partial")).is_err());
    }

    #[test]
    fn no_frames_is_an_empty_source() {
        let mut r = Replay::new(info(), Vec::new());
        assert_eq!(r.info().frame_count, Some(0));
        assert!(r.next_frame().unwrap().is_none());
    }
}
