//! Cameras (V4L through nokhwa), behind the cargo feature `camera`.
//!
//! Without the feature the same functions exist and return
//! [`SourceError::CameraSupportMissing`], so a CLI can call them unconditionally.

use super::SourceError;
#[cfg(not(feature = "camera"))]
use super::{CapturedFrame, FrameSource, SourceInfo};

/// True when this build was compiled with camera support (cargo feature `camera`).
pub const CAMERA_SUPPORTED: bool = cfg!(feature = "camera");

/// `Ok` when this build can use cameras, else [`SourceError::CameraSupportMissing`]
/// ("built without camera support: rebuild with --features camera").
pub fn require_camera_support() -> Result<(), SourceError> {
    if CAMERA_SUPPORTED {
        Ok(())
    } else {
        Err(SourceError::CameraSupportMissing)
    }
}

/// A camera found by [`list_cameras`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraInfo {
    /// Index to pass to [`Camera::open`].
    pub index: u32,
    /// Human-readable name.
    pub name: String,
    /// Driver-specific description (device path, bus, ...).
    pub description: String,
}

/// Lists the cameras this machine has; an empty list when there are none.
#[cfg(not(feature = "camera"))]
pub fn list_cameras() -> Result<Vec<CameraInfo>, SourceError> {
    Err(SourceError::CameraSupportMissing)
}

/// An open camera streaming frames.
#[cfg(not(feature = "camera"))]
#[derive(Debug)]
pub struct Camera {
    info: SourceInfo,
}

#[cfg(not(feature = "camera"))]
impl Camera {
    /// Opens camera `index` asking for the closest format to `width`x`height` at `fps`.
    pub fn open(_index: u32, _width: u32, _height: u32, _fps: f32) -> Result<Self, SourceError> {
        Err(SourceError::CameraSupportMissing)
    }
}

#[cfg(not(feature = "camera"))]
impl FrameSource for Camera {
    fn info(&self) -> &SourceInfo {
        &self.info
    }
    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
        Err(SourceError::CameraSupportMissing)
    }
}

#[cfg(feature = "camera")]
pub use imp::{list_cameras, Camera};

#[cfg(feature = "camera")]
mod imp {
    use nokhwa::utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    };

    use super::super::{now_us, CapturedFrame, FrameData, FrameSource, SourceError, SourceInfo};
    use super::CameraInfo;

    /// Pixel formats we can forward (MJPEG) or convert to RGB ourselves, in order of preference.
    const FORMATS: &[FrameFormat] = &[
        FrameFormat::MJPEG,
        FrameFormat::YUYV,
        FrameFormat::NV12,
        FrameFormat::RAWRGB,
        FrameFormat::RAWBGR,
        FrameFormat::GRAY,
    ];

    /// Lists the cameras this machine has; an empty list when there are none.
    pub fn list_cameras() -> Result<Vec<CameraInfo>, SourceError> {
        let found = nokhwa::query(ApiBackend::Auto)
            .map_err(|e| SourceError::Camera(format!("cannot list cameras: {e}")))?;
        Ok(found
            .iter()
            .enumerate()
            .map(|(i, c)| CameraInfo {
                index: match c.index() {
                    CameraIndex::Index(n) => *n,
                    CameraIndex::String(_) => i as u32,
                },
                name: c.human_name(),
                description: format!("{} {}", c.description(), c.misc())
                    .trim()
                    .to_string(),
            })
            .collect())
    }

    /// An open camera streaming frames. MJPEG frames are forwarded untouched; other pixel
    /// formats (YUYV, NV12, RGB, BGR, grey) are converted to RGB.
    pub struct Camera {
        info: SourceInfo,
        camera: nokhwa::Camera,
        format: FrameFormat,
        next: u64,
    }

    impl std::fmt::Debug for Camera {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Camera")
                .field("info", &self.info)
                .field("format", &self.format)
                .finish_non_exhaustive()
        }
    }

    impl Camera {
        /// Opens camera `index` asking for the closest format to `width`x`height` at `fps`
        /// (MJPEG preferred), and starts streaming.
        pub fn open(index: u32, width: u32, height: u32, fps: f32) -> Result<Self, SourceError> {
            if width == 0 || height == 0 || !(fps.is_finite() && fps > 0.0) {
                return Err(SourceError::InvalidArgument(format!(
                    "camera format {width}x{height} at {fps} fps is not valid"
                )));
            }
            let wanted = CameraFormat::new_from(
                width,
                height,
                FrameFormat::MJPEG,
                fps.round().max(1.0) as u32,
            );
            let request =
                RequestedFormat::with_formats(RequestedFormatType::Closest(wanted), FORMATS);
            let mut camera =
                nokhwa::Camera::new(CameraIndex::Index(index), request).map_err(|e| {
                    SourceError::Camera(format!(
                    "cannot open camera {index}: {e} (list the cameras with --list-cameras; check \
                     that /dev/video{index} exists and that this user may read it)"
                ))
                })?;
            camera
                .open_stream()
                .map_err(|e| SourceError::Camera(format!("cannot start camera {index}: {e}")))?;
            let format = camera.camera_format();
            let name = camera.info().human_name();
            tracing::info!(index, %name, format = %format, "camera opened");
            Ok(Self {
                info: SourceInfo {
                    name,
                    width: format.width(),
                    height: format.height(),
                    fps: format.frame_rate() as f32,
                    frame_count: None,
                },
                camera,
                format: format.format(),
                next: 0,
            })
        }
    }

    impl FrameSource for Camera {
        fn info(&self) -> &SourceInfo {
            &self.info
        }

        fn next_frame(&mut self) -> Result<Option<CapturedFrame>, SourceError> {
            let buffer = self
                .camera
                .frame()
                .map_err(|e| SourceError::Camera(format!("cannot read a frame: {e}")))?;
            let capture_ts_us = now_us();
            let res = buffer.resolution();
            let (w, h) = (res.width(), res.height());
            let bytes = buffer.buffer();
            let data = match buffer.source_frame_format() {
                FrameFormat::MJPEG => FrameData::Jpeg(bytes.to_vec()),
                other => FrameData::Rgb(to_rgb(other, bytes, w as usize, h as usize)?),
            };
            let index = self.next;
            self.next += 1;
            Ok(Some(CapturedFrame {
                index,
                capture_ts_us,
                width: w,
                height: h,
                data,
                pts_us: None,
            }))
        }
    }

    fn clamp(v: i32) -> u8 {
        v.clamp(0, 255) as u8
    }

    /// BT.601 limited-range YUV to RGB.
    fn yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
        let c = (y as i32 - 16) * 298;
        let (d, e) = (u as i32 - 128, v as i32 - 128);
        [
            clamp((c + 409 * e + 128) >> 8),
            clamp((c - 100 * d - 208 * e + 128) >> 8),
            clamp((c + 516 * d + 128) >> 8),
        ]
    }

    /// Converts a raw camera buffer to packed RGB24.
    pub(super) fn to_rgb(
        format: FrameFormat,
        src: &[u8],
        w: usize,
        h: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let need = match format {
            FrameFormat::YUYV => w * h * 2,
            FrameFormat::NV12 => w * h * 3 / 2,
            FrameFormat::RAWRGB | FrameFormat::RAWBGR => w * h * 3,
            FrameFormat::GRAY => w * h,
            FrameFormat::MJPEG => 0,
        };
        let needs_even = matches!(format, FrameFormat::YUYV | FrameFormat::NV12);
        if src.len() < need || (needs_even && w & 1 == 1) {
            return Err(SourceError::Camera(format!(
                "{format} frame of {} bytes is too short for {w}x{h}",
                src.len()
            )));
        }
        let mut out = Vec::with_capacity(w * h * 3);
        match format {
            FrameFormat::YUYV => {
                for q in src[..need].chunks_exact(4) {
                    out.extend_from_slice(&yuv(q[0], q[1], q[3]));
                    out.extend_from_slice(&yuv(q[2], q[1], q[3]));
                }
            }
            FrameFormat::NV12 => {
                let (luma, chroma) = src.split_at(w * h);
                for y in 0..h {
                    for x in 0..w {
                        let c = (y / 2) * w + (x / 2) * 2;
                        out.extend_from_slice(&yuv(luma[y * w + x], chroma[c], chroma[c + 1]));
                    }
                }
            }
            FrameFormat::RAWRGB => out.extend_from_slice(&src[..need]),
            FrameFormat::RAWBGR => {
                for p in src[..need].chunks_exact(3) {
                    out.extend_from_slice(&[p[2], p[1], p[0]]);
                }
            }
            FrameFormat::GRAY => {
                for &g in &src[..need] {
                    out.extend_from_slice(&[g, g, g]);
                }
            }
            FrameFormat::MJPEG => {}
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn yuyv_grey_and_bgr_convert() {
            // Mid-grey YUYV (Y=126, U=V=128) gives grey RGB.
            let px = to_rgb(FrameFormat::YUYV, &[126, 128, 126, 128], 2, 1).unwrap();
            assert_eq!(px.len(), 6);
            assert!(px.iter().all(|&v| (127..=129).contains(&v)), "{px:?}");
            let px = to_rgb(FrameFormat::RAWBGR, &[1, 2, 3, 4, 5, 6], 2, 1).unwrap();
            assert_eq!(px, vec![3, 2, 1, 6, 5, 4]);
            assert!(to_rgb(FrameFormat::GRAY, &[1], 2, 1).is_err());
        }
    }
}
