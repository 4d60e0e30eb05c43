//! Per-phrase artifacts, each written atomically (temp file in the same directory, then rename):
//! `result.json` ([`write_json_atomic`]), the keypoints workbook in the old system's format
//! ([`write_keypoints_workbook`]), a timeline plot as SVG ([`write_timeline_svg`]) and an
//! overlay image of both skeletons at the hit ([`write_overlay`], PNG). [`job`] writes one
//! phrase's set as a whole folder; [`pool`] is the writer threads with their bounded queue.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use referee_pose_api::{Keypoints, RgbImage, Side};
use serde::Serialize;

use crate::tracker::TrackedFrame;

pub mod job;
pub mod pool;

/// Sheet names of the old system's keypoints workbooks, in order (one home: the reader's).
pub use referee_rules::workbook::SHEETS as WORKBOOK_SHEETS;
/// COCO-17 limbs drawn on the overlay (keypoint index pairs).
pub const COCO_LIMBS: [(usize, usize); 16] = [
    (0, 1),
    (0, 2),
    (1, 3),
    (2, 4),
    (5, 6),
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
];
/// Overlay colour of the left fencer (blue).
pub const LEFT_COLOR: [u8; 3] = [30, 144, 255];
/// Overlay colour of the right fencer (red).
pub const RIGHT_COLOR: [u8; 3] = [230, 40, 40];
/// Keypoints below this confidence are not drawn.
pub const DRAW_MIN_CONF: f32 = 0.3;

/// Why an artifact could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serialising JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("building the keypoints workbook: {0}")]
    Xlsx(#[from] rust_xlsxwriter::XlsxError),
    #[error("encoding PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("invalid input: {0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory is written, synced
/// and renamed over `path`, so readers see the old file or the new one, never a partial one.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| ArtifactError::Invalid(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Ok(d) = File::open(dir) {
        // Best effort: persist the rename itself.
        let _ = d.sync_all();
    }
    result
}

/// Serialises `value` as pretty JSON and writes it atomically to `path`.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<(), ArtifactError> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_bytes_atomic(path, &bytes)
}

/// Writes the keypoints workbook in the old system's format: sheets `left_x`, `left_y`,
/// `right_x`, `right_y`; header row `kp_0` .. `kp_16` (COCO order); one row per entry of
/// `frames`; each coordinate divided by `norm`; an empty cell where the fencer was unseen or a
/// coordinate is not finite.
///
/// `norm` is the caller's per-phrase normalisation constant. The old files used a body-size
/// constant (values of roughly 1..15); the engine passes the image width (values in `[0, 1]`).
/// The rules are scale-free, so either reads the same; the constant belongs in `result.json`.
pub fn write_keypoints_workbook(
    path: &Path,
    frames: &[TrackedFrame],
    norm: f32,
) -> Result<(), ArtifactError> {
    if !(norm.is_finite() && norm > 0.0) {
        return Err(ArtifactError::Invalid(format!(
            "normalisation constant {norm} must be finite and positive"
        )));
    }
    if frames.len() >= 1_048_575 {
        return Err(ArtifactError::Invalid(format!(
            "{} frames exceed a worksheet's rows",
            frames.len()
        )));
    }
    let mut wb = rust_xlsxwriter::Workbook::new();
    for (sheet, name) in WORKBOOK_SHEETS.iter().enumerate() {
        let ws = wb.add_worksheet();
        ws.set_name(*name)?;
        for k in 0..17u16 {
            ws.write_string(0, k, format!("kp_{k}"))?;
        }
        let (right, axis) = (sheet >= 2, sheet % 2);
        for (row, f) in frames.iter().enumerate() {
            let Some(kps) = (if right {
                f.right.as_ref()
            } else {
                f.left.as_ref()
            }) else {
                continue;
            };
            for (k, kp) in kps.iter().enumerate() {
                let v = kp[axis] as f64 / norm as f64;
                if v.is_finite() {
                    ws.write_number(row as u32 + 1, k as u16, v)?;
                }
            }
        }
    }
    let bytes = wb.save_to_buffer()?;
    write_bytes_atomic(path, &bytes)
}

/// A hit for the timeline plot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineHit {
    /// Seconds from the phrase start.
    pub t: f32,
    /// Who hit (on screen).
    pub side: Side,
    /// Short text shown next to the marker (e.g. "HIT left", "valid").
    pub label: String,
}

/// What the timeline plot shows; all times in seconds from the phrase start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TimelineSeries {
    /// Plot title (session, phrase, verdict).
    pub title: String,
    /// Time of each frame.
    pub times: Vec<f32>,
    /// Horizontal position of the left fencer per frame (any unit, e.g. 0..1 of the frame
    /// width), `None` where unseen. Same length as `times`.
    pub left_x: Vec<Option<f32>>,
    /// Same for the right fencer.
    pub right_x: Vec<Option<f32>>,
    /// Pauses (either fencer) as `(t0, t1)` ranges, shaded.
    pub pauses: Vec<(f32, f32)>,
    /// Blade contacts (beats, parries).
    pub blade_contacts: Vec<f32>,
    /// Hits, drawn as vertical markers in the hitter's colour.
    pub hits: Vec<TimelineHit>,
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f32, target: f32) -> f32 {
    let raw = (span / target).max(1e-6);
    let p = 10f32.powf(raw.log10().floor());
    let m = raw / p;
    let n = if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    n * p
}

/// Renders the timeline as a standalone SVG document (no external resources).
pub fn timeline_svg(s: &TimelineSeries) -> String {
    const W: f32 = 960.0;
    const H: f32 = 400.0;
    const ML: f32 = 60.0;
    const MR: f32 = 130.0;
    const MT: f32 = 40.0;
    const MB: f32 = 50.0;
    let finite = |v: &f32| v.is_finite();
    let mut tvals: Vec<f32> = s.times.iter().copied().filter(finite).collect();
    tvals.extend(s.pauses.iter().flat_map(|p| [p.0, p.1]).filter(finite));
    tvals.extend(s.blade_contacts.iter().copied().filter(finite));
    tvals.extend(s.hits.iter().map(|h| h.t).filter(finite));
    let t0 = tvals.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let mut t1 = tvals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if t1.partial_cmp(&t0) != Some(std::cmp::Ordering::Greater) {
        t1 = t0 + 1.0;
    }
    let xs = s
        .left_x
        .iter()
        .chain(&s.right_x)
        .flatten()
        .copied()
        .filter(finite);
    let (mut y0, mut y1) = xs.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if y1.partial_cmp(&y0) != Some(std::cmp::Ordering::Greater) {
        (y0, y1) = if y0.is_finite() {
            (y0 - 0.5, y0 + 0.5)
        } else {
            (0.0, 1.0)
        };
    }
    let pad = (y1 - y0) * 0.08;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let px = |t: f32| ML + (t - t0) / (t1 - t0) * pw;
    let py = |v: f32| MT + (1.0 - (v - y0) / (y1 - y0)) * ph;
    let color = |c: [u8; 3]| format!("rgb({},{},{})", c[0], c[1], c[2]);

    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text x="{ML}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(&s.title)
    );
    // Pauses.
    for &(a, b) in s
        .pauses
        .iter()
        .filter(|p| p.0.is_finite() && p.1.is_finite() && p.1 > p.0)
    {
        let (xa, xb) = (px(a.max(t0)), px(b.min(t1)));
        let _ = writeln!(
            o,
            r#"<rect class="pause" x="{xa:.1}" y="{MT}" width="{:.1}" height="{ph}" fill="rgb(150,150,150)" fill-opacity="0.25"><title>pause {a:.2}-{b:.2} s</title></rect>"#,
            (xb - xa).max(0.5)
        );
    }
    // Axes, ticks, grid.
    let _ = writeln!(
        o,
        r#"<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let step = nice_step(t1 - t0, 10.0);
    let mut t = (t0 / step).ceil() * step;
    while t <= t1 + step * 1e-3 {
        let x = px(t);
        let _ = writeln!(
            o,
            r#"<line x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="rgb(225,225,225)"/>"#,
            MT + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            MT + ph + 16.0,
            trim_num(t)
        );
        t += step;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        ML + pw / 2.0,
        H - 10.0
    );
    let ystep = nice_step(y1 - y0, 5.0);
    let mut v = (y0 / ystep).ceil() * ystep;
    while v <= y1 {
        let y = py(v);
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ML - 6.0,
            y + 4.0,
            trim_num(v)
        );
        v += ystep;
    }
    let _ = writeln!(
        o,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">horizontal position</text>"#,
        MT + ph / 2.0,
        MT + ph / 2.0
    );
    // Position series, broken where unseen.
    for (series, c, name) in [
        (&s.left_x, LEFT_COLOR, "left"),
        (&s.right_x, RIGHT_COLOR, "right"),
    ] {
        let mut runs: Vec<Vec<(f32, f32)>> = vec![Vec::new()];
        for (t, v) in s.times.iter().zip(series.iter()) {
            match v {
                Some(v) if v.is_finite() && t.is_finite() => {
                    runs.last_mut().map_or((), |r| r.push((px(*t), py(*v))))
                }
                _ => {
                    if runs.last().is_some_and(|r| !r.is_empty()) {
                        runs.push(Vec::new());
                    }
                }
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                o,
                r#"<polyline class="{name}" points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                pts.join(" "),
                color(c)
            );
        }
    }
    // Blade contacts and hits.
    for &t in s.blade_contacts.iter().filter(|t| t.is_finite()) {
        let x = px(t);
        let _ = writeln!(
            o,
            r#"<line class="blade" x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="rgb(240,150,0)" stroke-width="1.5" stroke-dasharray="5,3"/>"#,
            MT + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" fill="rgb(200,120,0)">blade {t:.2}s</text>"#,
            x + 3.0,
            MT + 12.0
        );
    }
    for (i, h) in s.hits.iter().filter(|h| h.t.is_finite()).enumerate() {
        let x = px(h.t);
        let c = color(if h.side == Side::Left {
            LEFT_COLOR
        } else {
            RIGHT_COLOR
        });
        let _ = writeln!(
            o,
            r#"<line class="hit" x1="{x:.1}" y1="{MT}" x2="{x:.1}" y2="{:.1}" stroke="{c}" stroke-width="2.5"/>"#,
            MT + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}" fill="{c}" font-weight="bold">{} {:.2}s</text>"#,
            x + 3.0,
            MT + 28.0 + 14.0 * i as f32,
            xml_escape(&h.label),
            h.t
        );
    }
    // Legend.
    let lx = ML + pw + 12.0;
    let legend = [
        (color(LEFT_COLOR), "left fencer", false),
        (color(RIGHT_COLOR), "right fencer", false),
        ("rgb(240,150,0)".to_string(), "blade contact", true),
        ("rgb(150,150,150)".to_string(), "pause", false),
    ];
    for (i, (c, label, dashed)) in legend.iter().enumerate() {
        let y = MT + 10.0 + 20.0 * i as f32;
        let dash = if *dashed {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{c}" stroke-width="3"{dash}/>"#,
            lx + 22.0
        );
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
            lx + 28.0,
            y + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

fn trim_num(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Writes [`timeline_svg`] atomically to `path`.
pub fn write_timeline_svg(path: &Path, series: &TimelineSeries) -> Result<(), ArtifactError> {
    write_bytes_atomic(path, timeline_svg(series).as_bytes())
}

/// Draws one COCO-17 skeleton (limbs and joints with confidence >= [`DRAW_MIN_CONF`]) onto `img`,
/// clipped to the image. Line width scales with the image size.
pub fn draw_skeleton(img: &mut RgbImage, kps: &Keypoints, color: [u8; 3]) {
    if !img.is_consistent() {
        return;
    }
    let radius = (img.width.max(img.height) as f32 / 400.0).max(1.5);
    let ok = |k: &[f32; 3]| k[2] >= DRAW_MIN_CONF && k[0].is_finite() && k[1].is_finite();
    for &(a, b) in &COCO_LIMBS {
        let (ka, kb) = (&kps[a], &kps[b]);
        if ok(ka) && ok(kb) {
            draw_line(img, (ka[0], ka[1]), (kb[0], kb[1]), radius * 0.6, color);
        }
    }
    for k in kps.iter().filter(|k| ok(k)) {
        fill_disc(img, k[0], k[1], radius * 1.4, [255, 255, 255]);
        fill_disc(img, k[0], k[1], radius, color);
    }
}

fn fill_disc(img: &mut RgbImage, cx: f32, cy: f32, r: f32, color: [u8; 3]) {
    let (w, h) = (img.width as f32, img.height as f32);
    if cx < -r || cy < -r || cx > w + r || cy > h + r {
        return;
    }
    let x0 = (cx - r).floor().max(0.0) as usize;
    let x1 = ((cx + r).ceil().min(w - 1.0)).max(0.0) as usize;
    let y0 = (cy - r).floor().max(0.0) as usize;
    let y1 = ((cy + r).ceil().min(h - 1.0)).max(0.0) as usize;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            if dx * dx + dy * dy <= r * r {
                let i = (y * img.width + x) * 3;
                img.data[i..i + 3].copy_from_slice(&color);
            }
        }
    }
}

fn draw_line(img: &mut RgbImage, a: (f32, f32), b: (f32, f32), r: f32, color: [u8; 3]) {
    let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
    // Keypoints far outside the frame (bad detections) would make a huge loop: cap it.
    let steps = (len / (r * 0.5).max(0.5)).ceil().min(20_000.0) as usize;
    for s in 0..=steps {
        let t = if steps == 0 {
            0.0
        } else {
            s as f32 / steps as f32
        };
        fill_disc(img, a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, r, color);
    }
}

/// Encodes an RGB image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, ArtifactError> {
    if !img.is_consistent() || img.width > u32::MAX as usize || img.height > u32::MAX as usize {
        return Err(ArtifactError::Invalid(format!(
            "image {}x{} with {} bytes",
            img.width,
            img.height,
            img.data.len()
        )));
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width as u32, img.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(&img.data)?;
    }
    Ok(out)
}

/// Draws both skeletons (left in [`LEFT_COLOR`], right in [`RIGHT_COLOR`]) on a copy of `rgb`
/// (the rectified frame at the hit; keypoints in its coordinates) and writes it as PNG.
pub fn write_overlay(
    path: &Path,
    rgb: &RgbImage,
    left: Option<&Keypoints>,
    right: Option<&Keypoints>,
) -> Result<(), ArtifactError> {
    let mut img = rgb.clone();
    if let Some(k) = left {
        draw_skeleton(&mut img, k, LEFT_COLOR);
    }
    if let Some(k) = right {
        draw_skeleton(&mut img, k, RIGHT_COLOR);
    }
    write_bytes_atomic(path, &encode_png(&img)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{Data, Reader};

    fn kps(x: f32, y: f32) -> Keypoints {
        let mut k = [[0.0f32; 3]; 17];
        for (i, p) in k.iter_mut().enumerate() {
            *p = [x + i as f32, y + 10.0 * i as f32, 0.9];
        }
        k
    }

    fn no_temp_files(dir: &Path) -> bool {
        fs::read_dir(dir).expect("read dir").all(|e| {
            !e.expect("entry")
                .file_name()
                .to_string_lossy()
                .contains(".tmp-")
        })
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("result.json");
        fs::write(&p, "old").expect("seed");
        write_json_atomic(
            &p,
            &serde_json::json!({"winner": "left", "confidence": 0.8}),
        )
        .expect("write");
        let back: serde_json::Value =
            serde_json::from_slice(&fs::read(&p).expect("read")).expect("json");
        assert_eq!(back["winner"], "left");
        assert!(no_temp_files(dir.path()));
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
        // A missing directory is a clean error, and leaves nothing behind.
        let err = write_json_atomic(&dir.path().join("nope/x.json"), &1).unwrap_err();
        assert!(matches!(err, ArtifactError::Io { .. }), "{err}");
    }

    #[test]
    fn workbook_round_trips_through_calamine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("keypoints.xlsx");
        let frames = vec![
            TrackedFrame {
                frame: 0,
                left: Some(kps(100.0, 50.0)),
                right: Some(kps(900.0, 60.0)),
                left_box: None,
                right_box: None,
            },
            TrackedFrame {
                frame: 1,
                left: None,
                right: Some(kps(890.0, 61.0)),
                left_box: None,
                right_box: None,
            },
            TrackedFrame {
                frame: 2,
                left: Some(kps(110.0, 50.0)),
                right: None,
                left_box: None,
                right_box: None,
            },
        ];
        write_keypoints_workbook(&p, &frames, 200.0).expect("write");
        assert!(no_temp_files(dir.path()));
        let mut wb: calamine::Xlsx<_> = calamine::open_workbook(&p).expect("open");
        assert_eq!(wb.sheet_names(), WORKBOOK_SHEETS.map(String::from));
        let lx = wb.worksheet_range("left_x").expect("left_x");
        assert_old_header(&lx, "left_x");
        let cell = |r: &calamine::Range<Data>, row: u32, col: u32| r.get_value((row, col)).cloned();
        assert_eq!(cell(&lx, 1, 0), Some(Data::Float(0.5)));
        assert_eq!(cell(&lx, 1, 4), Some(Data::Float(104.0 / 200.0)));
        assert!(
            matches!(cell(&lx, 2, 0), None | Some(Data::Empty)),
            "unseen fencer is empty"
        );
        assert_eq!(cell(&lx, 3, 0), Some(Data::Float(110.0 / 200.0)));
        let ry = wb.worksheet_range("right_y").expect("right_y");
        assert_eq!(cell(&ry, 2, 1), Some(Data::Float((61.0 + 10.0) / 200.0)));
        assert!(matches!(cell(&ry, 3, 5), None | Some(Data::Empty)));
        assert!(write_keypoints_workbook(&p, &frames, 0.0).is_err());
    }

    /// Our workbook has the sheet and header spellings of the old system's lowercase files.
    #[test]
    fn workbook_matches_old_files() {
        let Some(old) = referee_test_support::require_shared(
            "data/phrases/20251020_205920_phrase01/keypoints.xlsx",
            "comparing our workbook layout with an old system's file",
        ) else {
            return;
        };
        let mut wb: calamine::Xlsx<_> = calamine::open_workbook(&old).expect("open old workbook");
        assert_eq!(wb.sheet_names(), WORKBOOK_SHEETS.map(String::from));
        for s in WORKBOOK_SHEETS {
            let r = wb.worksheet_range(s).expect("sheet");
            assert_old_header(&r, s);
        }
    }

    /// The header row is `kp_0` .. `kp_16`, as in the old system's lowercase files.
    fn assert_old_header(r: &calamine::Range<Data>, sheet: &str) {
        let header: Vec<String> = r
            .rows()
            .next()
            .expect("header")
            .iter()
            .map(|c| c.to_string())
            .collect();
        let want: Vec<String> = (0..17).map(|k| format!("kp_{k}")).collect();
        assert_eq!(header, want, "sheet {sheet}");
    }

    /// Loose XML check: every opening tag is closed in order.
    fn balanced(svg: &str) -> bool {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else {
                return false;
            };
            let tag = &rest[i + 1..i + j];
            rest = &rest[i + j + 1..];
            if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop().as_deref() != Some(name.trim()) {
                    return false;
                }
            } else {
                stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn timeline_svg_is_well_formed_with_markers() {
        let times: Vec<f32> = (0..45).map(|i| i as f32 / 15.0).collect();
        let s = TimelineSeries {
            title: "phrase 3 <double> & co".into(),
            left_x: times
                .iter()
                .map(|t| {
                    if (1.0..1.2).contains(t) {
                        None
                    } else {
                        Some(0.3 + 0.1 * t)
                    }
                })
                .collect(),
            right_x: times.iter().map(|t| Some(0.8 - 0.05 * t)).collect(),
            times,
            pauses: vec![(0.5, 0.9)],
            blade_contacts: vec![1.4],
            hits: vec![
                TimelineHit {
                    t: 2.6,
                    side: Side::Left,
                    label: "HIT left".into(),
                },
                TimelineHit {
                    t: 2.62,
                    side: Side::Right,
                    label: "HIT right".into(),
                },
            ],
        };
        let svg = timeline_svg(&s);
        assert!(balanced(&svg), "unbalanced SVG:\n{svg}");
        assert!(!balanced("<svg><g></svg>"), "the checker can fail");
        assert!(svg.contains("&lt;double&gt; &amp; co"));
        assert_eq!(svg.matches(r#"class="hit""#).count(), 2);
        assert_eq!(svg.matches(r#"class="blade""#).count(), 1);
        assert_eq!(svg.matches(r#"class="pause""#).count(), 1);
        assert_eq!(
            svg.matches(r#"class="left""#).count(),
            2,
            "left series broken at the gap"
        );
        assert_eq!(svg.matches(r#"class="right""#).count(), 1);
        assert!(
            svg.contains("HIT left 2.60s")
                && svg.contains("blade 1.40s")
                && svg.contains("time (s)")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("timeline.svg");
        write_timeline_svg(&p, &s).expect("write");
        assert_eq!(fs::read_to_string(&p).expect("read"), svg);
        // Degenerate input still renders.
        assert!(balanced(&timeline_svg(&TimelineSeries::default())));
    }

    #[test]
    fn overlay_draws_limbs() {
        let img = RgbImage::filled(200, 150, [0, 0, 0]);
        let mut left = [[0.0f32, 0.0, 0.0]; 17];
        left[5] = [40.0, 30.0, 0.9]; // left shoulder
        left[11] = [40.0, 110.0, 0.9]; // left hip
        let mut right = [[0.0f32, 0.0, 0.0]; 17];
        right[13] = [120.0, 100.0, 0.9];
        right[15] = [170.0, 100.0, 0.9];
        right[14] = [1e9, -1e9, 0.9]; // wild keypoint: clipped, no hang
        right[16] = [100.0, 140.0, 0.9];
        right[12] = [150.0, 20.0, 0.1]; // low confidence: not drawn
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("overlay.png");
        write_overlay(&p, &img, Some(&left), Some(&right)).expect("write");
        let out = referee_pose_api::decode_frame(
            referee_pose_api::FrameEncoding::Png,
            &fs::read(&p).expect("read"),
            1 << 20,
        )
        .expect("decode");
        let px = |x: usize, y: usize| &out.data[(y * 200 + x) * 3..(y * 200 + x) * 3 + 3];
        assert_eq!(px(40, 70), &LEFT_COLOR, "midpoint of the left torso limb");
        assert_eq!(px(145, 100), &RIGHT_COLOR, "midpoint of the right shin");
        assert_eq!(px(150, 20), &[0, 0, 0], "low-confidence joint not drawn");
        assert_eq!(px(180, 140), &[0, 0, 0], "background untouched");
        assert!(no_temp_files(dir.path()));
    }
}
