//! Reader for the old system's keypoint workbooks.
//!
//! Four sheets `left_x`, `left_y`, `right_x`, `right_y` (any letter case), a header row naming the
//! COCO keypoints `kp_0`..`kp_16` (or `0`..`16`), one row per frame. Empty, `NaN` or error cells
//! are missing keypoints.

use std::path::{Path, PathBuf};

use calamine::{Data, Reader};

use crate::{Keypoints, PoseFrame, NUM_KEYPOINTS};

/// Why a workbook could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkbookError {
    /// The file could not be opened as a spreadsheet.
    #[error("cannot open keypoints workbook {path}: {source}")]
    Open {
        /// The workbook.
        path: PathBuf,
        /// The reader's error.
        source: calamine::Error,
    },
    /// A required sheet is absent.
    #[error("keypoints workbook {path} has no sheet `{sheet}` (found: {found}); expected left_x, left_y, right_x, right_y")]
    MissingSheet {
        /// The workbook.
        path: PathBuf,
        /// The sheet looked for.
        sheet: &'static str,
        /// Sheets present.
        found: String,
    },
    /// A sheet could not be read.
    #[error("keypoints workbook {path}: cannot read sheet `{sheet}`: {source}")]
    Sheet {
        /// The workbook.
        path: PathBuf,
        /// The sheet.
        sheet: String,
        /// The reader's error.
        source: calamine::Error,
    },
    /// A sheet's header does not name all 17 keypoint columns.
    #[error("keypoints workbook {path}, sheet `{sheet}`: {reason}; the header row must name kp_0..kp_16 (or 0..16)")]
    Header {
        /// The workbook.
        path: PathBuf,
        /// The sheet.
        sheet: String,
        /// What was wrong.
        reason: String,
    },
    /// A cell holds something that is not a number.
    #[error("keypoints workbook {path}, sheet `{sheet}`, row {row}, column {column}: {value:?} is not a number (use a number, NaN or an empty cell)")]
    Cell {
        /// The workbook.
        path: PathBuf,
        /// The sheet.
        sheet: String,
        /// 1-based spreadsheet row.
        row: usize,
        /// The column's header.
        column: String,
        /// The cell, as text.
        value: String,
    },
    /// The frame rate is not a positive finite number.
    #[error("frame rate must be a positive number of frames per second, got {0}")]
    Fps(f64),
}

/// Frame rates the old system recorded at (the 2025 captures ran at about 15 fps, the 2026 ones
/// at 30 fps).
pub const KNOWN_RATES: [f64; 2] = [15.0, 30.0];

/// Frame rate of a workbook of `n_frames` rows when none is given: its rows span the phrase either
/// to the recording end or to the first hit, so pick the known rate closest (relative error) to
/// `n_frames / phrase_end` or `n_frames / first_hit`. `None` without a usable time or when no
/// known rate is within 25 % (the rows then cover only part of the phrase).
pub fn infer_fps(n_frames: usize, timeline: &crate::signal::Timeline) -> Option<f64> {
    let spans = [timeline.phrase_end(), timeline.first_hit().map(|(t, _)| t)];
    let mut best: Option<(f64, f64)> = None;
    for span in spans.into_iter().flatten().filter(|s| *s > 0.0) {
        let rate = n_frames as f64 / span;
        for known in KNOWN_RATES {
            let err = (rate / known - 1.0).abs();
            if best.is_none_or(|(e, _)| err < e) {
                best = Some((err, known));
            }
        }
    }
    best.filter(|(err, _)| *err <= 0.25).map(|(_, r)| r)
}

/// Sheet names of the old system's keypoints workbooks, in order (read in any letter case).
pub const SHEETS: [&str; 4] = ["left_x", "left_y", "right_x", "right_y"];

/// Maps a header cell to a keypoint index: `kp_3`, `3`, `3.0`.
fn header_index(cell: &Data) -> Option<usize> {
    let idx = match cell {
        Data::Int(i) => usize::try_from(*i).ok()?,
        Data::Float(f) if f.fract() == 0.0 && *f >= 0.0 => *f as usize,
        Data::String(s) => {
            let s = s.trim();
            let s = s
                .strip_prefix("kp_")
                .or_else(|| s.strip_prefix("KP_"))
                .or_else(|| s.strip_prefix("kp"))
                .unwrap_or(s);
            s.parse().ok()?
        }
        _ => return None,
    };
    (idx < NUM_KEYPOINTS).then_some(idx)
}

fn cell_value(cell: &Data) -> Result<f32, String> {
    match cell {
        Data::Empty | Data::Error(_) => Ok(f32::NAN),
        Data::Float(f) => Ok(*f as f32),
        Data::Int(i) => Ok(*i as f32),
        Data::String(s) => {
            let t = s.trim();
            if t.is_empty() || t.eq_ignore_ascii_case("nan") || t.eq_ignore_ascii_case("none") {
                Ok(f32::NAN)
            } else {
                t.parse::<f32>().map_err(|_| s.clone())
            }
        }
        other => Err(other.to_string()),
    }
}

/// One sheet as rows of 17 values.
fn read_sheet(
    wb: &mut calamine::Sheets<std::io::BufReader<std::fs::File>>,
    path: &Path,
    name: &str,
) -> Result<Vec<[f32; NUM_KEYPOINTS]>, WorkbookError> {
    let range = wb.worksheet_range(name).map_err(|e| WorkbookError::Sheet {
        path: path.to_path_buf(),
        sheet: name.to_string(),
        source: e,
    })?;
    let header_err = |reason: String| WorkbookError::Header {
        path: path.to_path_buf(),
        sheet: name.to_string(),
        reason,
    };
    let first_row = range.start().map(|(r, _)| r as usize).unwrap_or(0);
    let mut rows = range.rows();
    let header = rows
        .next()
        .ok_or_else(|| header_err("the sheet is empty".into()))?;
    let mut cols: [Option<usize>; NUM_KEYPOINTS] = [None; NUM_KEYPOINTS];
    for (c, cell) in header.iter().enumerate() {
        if let Some(k) = header_index(cell) {
            if cols[k].is_some() {
                return Err(header_err(format!("keypoint {k} is named twice")));
            }
            cols[k] = Some(c);
        }
    }
    if let Some(k) = cols.iter().position(Option::is_none) {
        return Err(header_err(format!("no column for keypoint {k}")));
    }
    let mut out = Vec::with_capacity(range.height().saturating_sub(1));
    for (r, row) in rows.enumerate() {
        let mut vals = [f32::NAN; NUM_KEYPOINTS];
        for (k, col) in cols.iter().enumerate() {
            let c = col.unwrap_or(0);
            let cell = row.get(c).unwrap_or(&Data::Empty);
            vals[k] = cell_value(cell).map_err(|value| WorkbookError::Cell {
                path: path.to_path_buf(),
                sheet: name.to_string(),
                row: first_row + r + 2,
                column: header.get(c).map(|h| h.to_string()).unwrap_or_default(),
                value,
            })?;
        }
        out.push(vals);
    }
    Ok(out)
}

/// Reads a keypoints workbook into pose frames (frame i at t = i / fps). A side whose 17 x values
/// are all missing in a row is `None` for that frame; present keypoints get confidence 1.
pub fn read_workbook(path: &Path, fps: f64) -> Result<Vec<PoseFrame>, WorkbookError> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(WorkbookError::Fps(fps));
    }
    let mut wb = calamine::open_workbook_auto(path).map_err(|source| WorkbookError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let names = wb.sheet_names();
    let mut sheets = Vec::with_capacity(4);
    for want in SHEETS {
        let actual = names
            .iter()
            .find(|n| n.trim().eq_ignore_ascii_case(want))
            .cloned()
            .ok_or_else(|| WorkbookError::MissingSheet {
                path: path.to_path_buf(),
                sheet: want,
                found: names.join(", "),
            })?;
        sheets.push(read_sheet(&mut wb, path, &actual)?);
    }
    // A range ends at its last non-empty row, so trailing frames where a fencer was never seen
    // make that fencer's sheets shorter: pad them as missing.
    let n = sheets.iter().map(Vec::len).max().unwrap_or(0);
    for (name, sheet) in SHEETS.iter().zip(&mut sheets) {
        if sheet.len() < n {
            tracing::debug!(
                sheet = name,
                rows = sheet.len(),
                frames = n,
                "padding missing trailing rows"
            );
            sheet.resize(n, [f32::NAN; NUM_KEYPOINTS]);
        }
    }
    let side = |xs: &[f32; NUM_KEYPOINTS], ys: &[f32; NUM_KEYPOINTS]| -> Option<Keypoints> {
        let mut kp = [[f32::NAN, f32::NAN, 0.0]; NUM_KEYPOINTS];
        let mut any = false;
        for k in 0..NUM_KEYPOINTS {
            if xs[k].is_finite() && ys[k].is_finite() {
                kp[k] = [xs[k], ys[k], 1.0];
                any = true;
            }
        }
        any.then_some(kp)
    };
    Ok((0..n)
        .map(|i| PoseFrame {
            frame: i as u64,
            t: i as f64 / fps,
            left: side(&sheets[0][i], &sheets[1][i]),
            right: side(&sheets[2][i], &sheets[3][i]),
        })
        .collect())
}
