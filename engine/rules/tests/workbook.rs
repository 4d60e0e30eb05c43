//! Keypoint workbooks: the accepted layouts and clear errors for malformed ones.

use std::path::{Path, PathBuf};

use referee_rules::workbook::{read_workbook, WorkbookError};
use rust_xlsxwriter::Workbook;

/// A cell to write.
#[derive(Clone, Copy)]
enum Cell {
    Num(f64),
    Text(&'static str),
    Empty,
}

/// A sheet to write: name, header row, data rows.
type Sheet = (&'static str, Vec<String>, Vec<Vec<Cell>>);

/// Writes `sheets` (name, header, rows) to a workbook in `dir`.
fn write(dir: &Path, file: &str, sheets: &[Sheet]) -> PathBuf {
    let mut wb = Workbook::new();
    for (name, header, rows) in sheets {
        let ws = wb.add_worksheet();
        ws.set_name(*name).expect("sheet name");
        for (c, h) in header.iter().enumerate() {
            ws.write_string(0, c as u16, h).expect("header");
        }
        for (r, row) in rows.iter().enumerate() {
            for (c, cell) in row.iter().enumerate() {
                let (r, c) = (r as u32 + 1, c as u16);
                match cell {
                    Cell::Num(v) => {
                        ws.write_number(r, c, *v).expect("number");
                    }
                    Cell::Text(s) => {
                        ws.write_string(r, c, *s).expect("text");
                    }
                    Cell::Empty => {}
                }
            }
        }
    }
    let p = dir.join(file);
    wb.save(&p).expect("save workbook");
    p
}

fn header(prefix: &str) -> Vec<String> {
    (0..17).map(|k| format!("{prefix}{k}")).collect()
}

fn rows(n: usize, base: f64) -> Vec<Vec<Cell>> {
    (0..n)
        .map(|i| {
            (0..17)
                .map(|k| Cell::Num(base + i as f64 * 0.1 + k as f64 * 0.01))
                .collect()
        })
        .collect()
}

fn four(names: [&'static str; 4], prefix: &str, n: usize) -> Vec<Sheet> {
    names
        .iter()
        .zip([1.0, 3.0, 6.0, 3.0])
        .map(|(name, base)| (*name, header(prefix), rows(n, base)))
        .collect()
}

const LOWER: [&str; 4] = ["left_x", "left_y", "right_x", "right_y"];

#[test]
fn reads_both_layouts_with_missing_cells() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = write(dir.path(), "a.xlsx", &four(LOWER, "kp_", 5));
    let f = read_workbook(&p, 15.0).expect("kp_ layout");
    assert_eq!(f.len(), 5);
    assert!((f[3].t - 0.2).abs() < 1e-12);
    let l = f[1].left.expect("left");
    assert!((l[2][0] - 1.12).abs() < 1e-5 && (l[2][1] - 3.12).abs() < 1e-5);
    assert_eq!(l[2][2], 1.0);

    // Left_X ... with 0..16 headers, NaN text, empty cells, and a fully missing right fencer row.
    let mut sheets = four(["Left_X", "Left_Y", "Right_X", "Right_Y"], "", 3);
    sheets[0].2[0][5] = Cell::Text("NaN");
    sheets[1].2[0][6] = Cell::Empty;
    for s in &mut sheets[2..] {
        s.2[2] = vec![Cell::Empty; 17];
    }
    let p = write(dir.path(), "b.xlsx", &sheets);
    let f = read_workbook(&p, 30.0).expect("Left_X layout");
    assert_eq!(f.len(), 3);
    let l = f[0].left.expect("left");
    assert!(
        l[5][0].is_nan() && l[5][2] == 0.0,
        "NaN cell is a missing keypoint"
    );
    assert!(l[6][0].is_nan(), "empty y makes the keypoint missing");
    assert!(l[7][0].is_finite());
    assert!(
        f[2].right.is_none(),
        "a row with no right keypoint has no right fencer"
    );
    assert!(f[2].left.is_some());
}

fn expect_err(p: &Path) -> WorkbookError {
    match read_workbook(p, 15.0) {
        Err(e) => e,
        Ok(f) => panic!(
            "expected an error for {}, got {} frames",
            p.display(),
            f.len()
        ),
    }
}

#[test]
fn missing_sheet_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = four(LOWER, "kp_", 4);
    s.remove(3);
    let e = expect_err(&write(dir.path(), "m.xlsx", &s));
    assert!(
        matches!(
            e,
            WorkbookError::MissingSheet {
                sheet: "right_y",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("right_y"));
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = four(LOWER, "kp_", 4);
    s[1].1[7] = "elbow".into();
    let e = expect_err(&write(dir.path(), "c.xlsx", &s));
    let msg = e.to_string();
    assert!(matches!(e, WorkbookError::Header { .. }), "{msg}");
    assert!(
        msg.contains("left_y") && msg.contains("keypoint 7"),
        "{msg}"
    );
}

#[test]
fn text_cell_is_named_with_row_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = four(LOWER, "kp_", 4);
    s[2].2[1][3] = Cell::Text("oops");
    let e = expect_err(&write(dir.path(), "t.xlsx", &s));
    match &e {
        WorkbookError::Cell {
            sheet,
            row,
            column,
            value,
            ..
        } => {
            assert_eq!(sheet, "right_x");
            assert_eq!(*row, 3, "header is row 1, frame 1 is row 3");
            assert_eq!(column, "kp_3");
            assert_eq!(value, "oops");
        }
        other => panic!("expected a cell error, got {other}"),
    }
}

#[test]
fn shorter_sheets_are_trailing_missing_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = four(LOWER, "kp_", 4);
    s[2].2.pop();
    s[3].2.truncate(2);
    let f = read_workbook(&write(dir.path(), "r.xlsx", &s), 15.0).expect("padded");
    assert_eq!(f.len(), 4);
    assert!(f[1].right.is_some());
    assert!(
        f[2].right.is_none(),
        "right_y ends at row 2: no right fencer in frame 2"
    );
    assert!(f[3].right.is_none() && f[3].left.is_some());
}

#[test]
fn non_workbook_and_bad_fps_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("fake.xlsx");
    std::fs::write(&p, b"this is not a zip file").expect("write");
    let e = expect_err(&p);
    assert!(matches!(e, WorkbookError::Open { .. }), "{e}");
    let e = expect_err(&dir.path().join("absent.xlsx"));
    assert!(matches!(e, WorkbookError::Open { .. }), "{e}");
    let good = write(dir.path(), "g.xlsx", &four(LOWER, "kp_", 2));
    assert!(matches!(
        read_workbook(&good, 0.0),
        Err(WorkbookError::Fps(_))
    ));
    assert!(matches!(
        read_workbook(&good, f64::NAN),
        Err(WorkbookError::Fps(_))
    ));
}
