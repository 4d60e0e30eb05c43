//! Replays JPEG frames captured (or encoded) earlier, as if a camera produced them now: each
//! frame is stamped with the wall-clock time at which it is handed out.
//!
//! Benches and tests use it to stream the same bytes several times without decoding or
//! encoding again (the frames are shared, so a new replay of them costs nothing).

use super::{now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo};
use std::sync::Arc;

/// A source yielding the given JPEG frames in order, once.
#[derive(Debug, Clone)]
pub struct Replay {
    info: SourceInfo,
    frames: Arc<[Vec<u8>]>,
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
            next: 0,
        }
    }
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
            pts_us: None,
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
    fn no_frames_is_an_empty_source() {
        let mut r = Replay::new(info(), Vec::new());
        assert_eq!(r.info().frame_count, Some(0));
        assert!(r.next_frame().unwrap().is_none());
    }
}
