//! Frame sources against real and generated data.

use std::path::{Path, PathBuf};

use referee_capture::source::{
    ffmpeg_available, open_video, CapturedFrame, FfmpegSource, FrameData, FrameSource, ImageFolder,
    Mp4Source, SourceError, Synthetic,
};

/// The sample clip, or None after a skip line (a failure under CI) when the shared data is absent.
fn sample_clip() -> Option<PathBuf> {
    referee_test_support::require_shared(
        referee_test_support::SAMPLE_CLIP,
        "decoding the sample clip",
    )
}

fn drain(src: &mut dyn FrameSource) -> Vec<CapturedFrame> {
    let mut out = Vec::new();
    while let Some(f) = src.next_frame().expect("frame") {
        out.push(f);
    }
    out
}

fn rgb(f: &CapturedFrame) -> &[u8] {
    match &f.data {
        FrameData::Rgb(b) => b,
        FrameData::Jpeg(_) => panic!("expected RGB"),
    }
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs() as u64)
        .sum::<u64>() as f64
        / a.len() as f64
}

#[test]
fn mp4_sample_decodes_all_63_frames() {
    let Some(clip) = sample_clip() else { return };
    let mut src = Mp4Source::open(&clip).expect("open sample");
    let info = src.info().clone();
    assert_eq!((info.width, info.height), (1280, 720));
    assert_eq!(info.frame_count, Some(63));
    assert!((info.fps - 30.0).abs() < 0.5, "fps {}", info.fps);
    let frames = drain(&mut src);
    assert_eq!(frames.len(), 63);
    let mut last_ts = 0;
    let mut last_pts = None;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.index, i as u64);
        assert_eq!((f.width, f.height), (1280, 720));
        assert_eq!(rgb(f).len(), 1280 * 720 * 3);
        assert!(f.capture_ts_us >= last_ts, "capture timestamps go forward");
        last_ts = f.capture_ts_us;
        let pts = f.pts_us.expect("pts");
        if let Some(p) = last_pts {
            assert!(pts > p, "pts strictly increasing");
        }
        last_pts = Some(pts);
        // Not a flat picture: a broadcast frame has a wide range of values.
        let px = rgb(f);
        let (lo, hi) = (px.iter().min().unwrap(), px.iter().max().unwrap());
        assert!(hi - lo > 100, "frame {i} is nearly flat ({lo}..{hi})");
    }
    // Consecutive frames differ a little (motion), but far less than unrelated pictures.
    let mut moving = 0;
    for w in frames.windows(2) {
        let d = mean_abs_diff(rgb(&w[0]), rgb(&w[1]));
        assert!(d < 40.0, "consecutive frames too different: {d}");
        if d > 0.2 {
            moving += 1;
        }
    }
    assert!(moving > 50, "only {moving} of 62 frame pairs show motion");
    // The clip ends about 2.1 s after it starts.
    let span = last_pts.unwrap() - frames[0].pts_us.unwrap();
    assert!((2_000_000..2_200_000).contains(&span), "pts span {span} us");
}

#[test]
fn open_video_picks_the_mp4_decoder() {
    let Some(clip) = sample_clip() else { return };
    let mut src = open_video(&clip).expect("open");
    assert_eq!(src.info().name, "3809.MP4");
    let f = src.next_frame().unwrap().expect("first frame");
    assert!(matches!(f.data, FrameData::Rgb(_)));
}

#[test]
fn missing_file_is_a_clear_error() {
    let err = open_video(Path::new("/nonexistent/clip.mp4"))
        .err()
        .expect("error");
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = Mp4Source::open(Path::new("/nonexistent/clip.mp4")).unwrap_err();
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
}

#[test]
fn corrupt_mp4_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.mp4");
    // An ftyp box followed by garbage that claims a huge box.
    let mut bytes = b"\0\0\0\x14ftypisom\0\0\0\x01isom".to_vec();
    bytes.extend_from_slice(b"\xff\xff\xff\xf0moov\x01\x02\x03");
    std::fs::write(&path, &bytes).unwrap();
    let err = Mp4Source::open(&path).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken.mp4"), "{msg}");
}

#[test]
fn empty_and_folder_paths_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_video(dir.path()).err().expect("folder rejected");
    assert!(err.to_string().contains("folder"), "{err}");
    let empty = dir.path().join("empty.avi");
    std::fs::write(&empty, b"").unwrap();
    let err = open_video(&empty).err().expect("empty rejected");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn synthetic_is_deterministic_with_moving_content() {
    let mut a = Synthetic::new(640, 360, 15.0, Some(20)).unwrap();
    let mut b = Synthetic::new(640, 360, 15.0, Some(20)).unwrap();
    let fa = drain(&mut a);
    let fb = drain(&mut b);
    assert_eq!(fa.len(), 20);
    assert_eq!(a.info().frame_count, Some(20));
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(x.data, y.data, "frame {} differs between runs", x.index);
    }
    for w in fa.windows(2) {
        assert_ne!(w[0].data, w[1].data, "frames must change over time");
    }
    // Endless when no count is given.
    let mut endless = Synthetic::new(64, 64, 30.0, None).unwrap();
    for _ in 0..100 {
        assert!(endless.next_frame().unwrap().is_some());
    }
}

// ---------------------------------------------------------------- image folders

fn jpeg_bytes(w: u16, h: u16, seed: u8) -> Vec<u8> {
    let px: Vec<u8> = (0..w as usize * h as usize * 3)
        .map(|i| ((i / 3) as u8).wrapping_add(seed))
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&px, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

fn png_bytes(w: u32, h: u32, color: png::ColorType, px: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(px).unwrap();
    wr.finish().unwrap();
    out
}

#[test]
fn image_folder_forwards_jpeg_and_decodes_png_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let j0 = jpeg_bytes(8, 4, 0);
    let j2 = jpeg_bytes(8, 4, 50);
    let rgb: Vec<u8> = (0..8 * 4 * 3).map(|i| i as u8).collect();
    let rgba: Vec<u8> = (0..8 * 4).flat_map(|i| [i as u8, 2, 3, 255]).collect();
    std::fs::write(dir.path().join("frame_000.jpg"), &j0).unwrap();
    std::fs::write(
        dir.path().join("frame_001.png"),
        png_bytes(8, 4, png::ColorType::Rgb, &rgb),
    )
    .unwrap();
    std::fs::write(dir.path().join("frame_002.JPEG"), &j2).unwrap();
    std::fs::write(
        dir.path().join("frame_003.png"),
        png_bytes(8, 4, png::ColorType::Rgba, &rgba),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut src = ImageFolder::open(dir.path(), 15.0).unwrap();
    assert_eq!((src.info().width, src.info().height), (8, 4));
    assert_eq!(src.info().frame_count, Some(4));
    let frames = drain(&mut src);
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[0].data, FrameData::Jpeg(j0));
    assert_eq!(frames[1].data, FrameData::Rgb(rgb));
    assert_eq!(frames[2].data, FrameData::Jpeg(j2));
    let want: Vec<u8> = (0..8 * 4).flat_map(|i| [i as u8, 2, 3]).collect();
    assert_eq!(frames[3].data, FrameData::Rgb(want));
    assert_eq!(frames[3].index, 3);
}

#[test]
fn image_folder_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // Empty folder.
    let err = ImageFolder::open(dir.path(), 15.0).unwrap_err();
    assert!(err.to_string().contains("no .jpg"), "{err}");
    // Missing folder.
    let err = ImageFolder::open(&dir.path().join("nope"), 15.0).unwrap_err();
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    // Mixed sizes.
    std::fs::write(dir.path().join("a.jpg"), jpeg_bytes(8, 4, 0)).unwrap();
    std::fs::write(dir.path().join("b.jpg"), jpeg_bytes(16, 4, 0)).unwrap();
    let err = ImageFolder::open(dir.path(), 15.0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("b.jpg") && msg.contains("16x4") && msg.contains("same size"),
        "{msg}"
    );
    // Unreadable (corrupt) image.
    std::fs::remove_file(dir.path().join("b.jpg")).unwrap();
    std::fs::write(dir.path().join("c.png"), b"not a png at all").unwrap();
    let err = ImageFolder::open(dir.path(), 15.0).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("c.png") && msg.contains("PNG"), "{msg}");
    std::fs::remove_file(dir.path().join("c.png")).unwrap();
    std::fs::write(dir.path().join("d.jpg"), &jpeg_bytes(8, 4, 0)[..20]).unwrap();
    let err = ImageFolder::open(dir.path(), 15.0).unwrap_err();
    assert!(err.to_string().contains("d.jpg"), "{err}");
    // Bad fps.
    assert!(ImageFolder::open(dir.path(), 0.0).is_err());
}

// ---------------------------------------------------------------- ffmpeg fallback

#[test]
fn ffmpeg_source_reads_the_sample_and_an_avi() {
    if !ffmpeg_available() {
        referee_test_support::skip("ffmpeg is not installed (apt-get install ffmpeg)");
        return;
    }
    let Some(clip) = sample_clip() else { return };
    let mut src = FfmpegSource::open(&clip).expect("ffmpeg opens the sample");
    assert_eq!((src.info().width, src.info().height), (1280, 720));
    assert!((src.info().fps - 30.0).abs() < 0.5);
    let frames = drain(&mut src);
    assert_eq!(frames.len(), 63);
    for f in &frames {
        let FrameData::Jpeg(j) = &f.data else {
            panic!("expected JPEG")
        };
        assert_eq!(&j[..2], &[0xFF, 0xD8]);
        assert_eq!(&j[j.len() - 2..], &[0xFF, 0xD9]);
    }
    // The JPEG frames decode to the same pictures as the pure-Rust MP4 decoder (lossy, close).
    let mut mp4 = Mp4Source::open(&clip).unwrap();
    let reference = drain(&mut mp4);
    for (i, frame) in frames.iter().enumerate() {
        let FrameData::Jpeg(j) = &frame.data else {
            unreachable!()
        };
        let img = referee_pose_api::image::decode_image(j).unwrap();
        let (w, h, px) = (img.width, img.height, img.data);
        assert_eq!((w, h), (1280, 720));
        let d = mean_abs_diff(&px, rgb(&reference[i]));
        assert!(d < 6.0, "frame {i}: ffmpeg vs openh264 mean abs diff {d}");
    }

    // H.264 with B-frames (display order differs from decode order): the pure-Rust decoder must
    // give the frames in display order, like ffmpeg.
    let dir = tempfile::tempdir().unwrap();
    let bframes = dir.path().join("bframes.mp4");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(&clip)
        .args([
            "-an",
            "-frames:v",
            "24",
            "-s",
            "640x360",
            "-c:v",
            "libx264",
            "-bf",
            "3",
        ])
        .args([
            "-profile:v",
            "high",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
        ])
        .arg(&bframes)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not write the B-frame test MP4");
    let ours = drain(&mut Mp4Source::open(&bframes).unwrap());
    let theirs = drain(&mut FfmpegSource::open(&bframes).unwrap());
    assert_eq!(ours.len(), 24);
    assert_eq!(theirs.len(), 24);
    let theirs_rgb: Vec<Vec<u8>> = theirs
        .iter()
        .map(|b| {
            let FrameData::Jpeg(j) = &b.data else {
                unreachable!()
            };
            referee_pose_api::image::decode_image(j).unwrap().data
        })
        .collect();
    let (mut same, mut shifted) = (0.0, 0.0);
    for (i, a) in ours.iter().enumerate() {
        let d = mean_abs_diff(&theirs_rgb[i], rgb(a));
        assert!(
            d < 6.0,
            "B-frame clip, frame {i}: ffmpeg vs openh264 mean abs diff {d}"
        );
        same += d;
        if i + 1 < ours.len() {
            shifted += mean_abs_diff(&theirs_rgb[i + 1], rgb(a));
        }
    }
    // The comparison can tell frames apart: pairing with the next frame is clearly worse.
    assert!(
        shifted > 2.0 * same,
        "same-index {same:.1} vs shifted {shifted:.1}"
    );

    // An AVI as the old recorder wrote (MPEG-4 part 2 in AVI), made from the sample.
    let avi = dir.path().join("phrase.avi");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(&clip)
        .args([
            "-an",
            "-frames:v",
            "10",
            "-r",
            "15",
            "-s",
            "640x360",
            "-c:v",
            "mpeg4",
        ])
        .arg(&avi)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ffmpeg could not write the test AVI");
    let mut src = open_video(&avi).expect("open_video falls back to ffmpeg for AVI");
    assert_eq!((src.info().width, src.info().height), (640, 360));
    assert!(
        (src.info().fps - 15.0).abs() < 0.5,
        "fps {}",
        src.info().fps
    );
    let frames = drain(&mut *src);
    assert_eq!(frames.len(), 10);
    assert!(frames.iter().all(|f| matches!(f.data, FrameData::Jpeg(_))));
}

#[test]
fn non_video_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.avi");
    std::fs::write(&path, b"this is not a video").unwrap();
    let err = open_video(&path).err().expect("error");
    let msg = err.to_string();
    assert!(msg.contains("notes.avi"), "{msg}");
    if ffmpeg_available() {
        assert!(
            msg.contains("not a video") || msg.contains("ffmpeg"),
            "{msg}"
        );
    } else {
        assert!(matches!(err, SourceError::FfmpegMissing { .. }), "{err:?}");
        assert!(msg.contains("install Debian's ffmpeg package"), "{msg}");
    }
}

#[test]
fn missing_ffmpeg_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old_recorder.avi");
    std::fs::write(&path, b"RIFF....AVI LIST").unwrap();
    let missing = dir.path().join("no-such-ffmpeg");
    let err = FfmpegSource::open_with(&path, missing.as_os_str(), missing.as_os_str()).unwrap_err();
    assert!(matches!(err, SourceError::FfmpegMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("old_recorder.avi")
            && msg.contains("install Debian's ffmpeg package")
            && msg.contains("convert the file to MP4/H.264"),
        "{msg}"
    );
}

// ---------------------------------------------------------------- camera

#[cfg(not(feature = "camera"))]
#[test]
fn camera_without_feature_says_how_to_rebuild() {
    use referee_capture::source::{list_cameras, require_camera_support, Camera};
    for err in [
        list_cameras().unwrap_err(),
        Camera::open(0, 1280, 720, 30.0).unwrap_err(),
        require_camera_support().unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            "built without camera support: rebuild with --features camera"
        );
    }
}

#[cfg(feature = "camera")]
#[test]
fn camera_enumeration_and_clean_open_error() {
    use referee_capture::source::{list_cameras, require_camera_support, Camera};
    require_camera_support().unwrap();
    let cams = list_cameras().expect("enumeration works without cameras");
    if !cams.is_empty() {
        eprintln!("skipped: this machine has cameras: {cams:?}");
        return;
    }
    let err = Camera::open(0, 1280, 720, 30.0).unwrap_err();
    assert!(matches!(err, SourceError::Camera(_)), "{err:?}");
    assert!(err.to_string().contains("camera 0"), "{err}");
    assert!(Camera::open(0, 0, 720, 30.0).is_err());
}
