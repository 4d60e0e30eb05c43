//! Writes a phrase's artifacts off the verdict path, on the artifacts writer's pool, as one
//! folder renamed into place (all files or none).

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use referee_pose_api::{decode_frame, FrameEncoding, Keypoints, Side};
use referee_rules::signal::{EventKind, Timeline};
use tracing::{info, warn};

use crate::artifacts::pool::WorkerPool;
use crate::artifacts::{self, TimelineHit, TimelineSeries};
use crate::rectify::{RectifyParams, RemapTable};
use crate::tracker::TrackedPose;

/// The encoded frame nearest the hit, with both fencers' keypoints (rectified pixels).
pub(crate) struct OverlayFrame {
    pub frame: u64,
    pub encoding: FrameEncoding,
    pub bytes: Arc<Vec<u8>>,
    pub left: Option<Keypoints>,
    pub right: Option<Keypoints>,
}

/// Everything needed to write one phrase's artifacts.
pub(crate) struct ArtifactJob {
    pub dir: PathBuf,
    pub title: String,
    pub result_json: String,
    pub poses: Vec<TrackedPose>,
    pub timeline: Timeline,
    pub rectified: (usize, usize),
    pub overlay: Option<OverlayFrame>,
    pub rectify: RectifyParams,
}

/// The folder for one phrase's artifacts: `<output_dir>/<session>/phrase-NNN`. The session id
/// must be a safe name and the path must stay under `output_dir` (checked on the components,
/// so it holds before the folder exists); anything else is refused, never written.
pub fn phrase_dir(
    output_dir: &Path,
    session_id: &str,
    phrase: u32,
) -> Result<PathBuf, ArtifactJobError> {
    crate::admission::check_safe_name(session_id)
        .map_err(|m| ArtifactJobError::UnsafePath(format!("session id {m}")))?;
    let relative = PathBuf::from(session_id).join(format!("phrase-{phrase:03}"));
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(ArtifactJobError::UnsafePath(format!(
            "{} leaves {}",
            relative.display(),
            output_dir.display()
        )));
    }
    let dir = output_dir.join(relative);
    if !dir.starts_with(output_dir) {
        return Err(ArtifactJobError::UnsafePath(format!(
            "{} is not under {}",
            dir.display(),
            output_dir.display()
        )));
    }
    Ok(dir)
}

/// The artifacts writer: one pool of threads (`artifacts.workers`) over a bounded queue
/// (`artifacts.queue`), each job written with [`write`].
pub(crate) type ArtifactPool = WorkerPool<ArtifactJob>;

/// Starts the artifacts writer, after removing what a crash left of unfinished phrases.
pub(crate) fn start_pool(output_dir: Option<&Path>, workers: usize, queue: usize) -> ArtifactPool {
    if let Some(out) = output_dir {
        clean_leftovers(out);
    }
    WorkerPool::start("referee-artifacts", workers, queue, |job: ArtifactJob| {
        let dir = job.dir.clone();
        match write(job) {
            Ok(()) => {
                info!(dir = %dir.display(), "artifacts written");
                Ok(())
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "writing artifacts failed");
                Err(format!("{}: {e}", dir.display()))
            }
        }
    })
}

/// Marks the folder a phrase's files are written into before it is renamed into place.
const PENDING: &str = ".tmp-";

/// Removes the unfinished phrase folders (`<session>/.phrase-NNN.tmp-*`) a crash left behind;
/// they are hidden and never read, so this only reclaims their space.
pub(crate) fn clean_leftovers(output_dir: &Path) {
    let Ok(sessions) = std::fs::read_dir(output_dir) else {
        return;
    };
    for session in sessions.flatten() {
        let Ok(entries) = std::fs::read_dir(session.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".phrase-") && name.contains(PENDING) {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        info!(dir = %e.path().display(), "removed an unfinished phrase folder")
                    }
                    Err(err) => {
                        warn!(dir = %e.path().display(), error = %err, "cannot remove an unfinished phrase folder")
                    }
                }
            }
        }
    }
}

/// Writes result.json, keypoints.xlsx, timeline.svg and overlay.png as one folder, all or
/// none: they are written into a hidden sibling folder which is then renamed to `job.dir`
/// (replacing an older one), so readers never see a phrase with part of its files.
pub(crate) fn write(job: ArtifactJob) -> Result<(), ArtifactJobError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| ArtifactJobError::Io(path, e)
    };
    let (Some(parent), Some(name)) = (job.dir.parent(), job.dir.file_name()) else {
        return Err(ArtifactJobError::UnsafePath(format!(
            "{} has no parent",
            job.dir.display()
        )));
    };
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let pending = parent.join(format!(
        ".{}{PENDING}{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&pending).map_err(io(&pending))?;
    let dir = job.dir.clone();
    let written = write_files(job, &pending).and_then(|()| publish(&pending, &dir));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&pending);
    }
    written
}

/// Renames the finished folder `pending` to `dir`; an existing `dir` (the phrase decided
/// again) is moved aside first and removed after.
fn publish(pending: &Path, dir: &Path) -> Result<(), ArtifactJobError> {
    let io = |e| ArtifactJobError::Io(dir.to_path_buf(), e);
    if let Ok(d) = File::open(pending) {
        let _ = d.sync_all();
    }
    let old = dir.exists().then(|| {
        let mut aside = pending.as_os_str().to_owned();
        aside.push("-old");
        PathBuf::from(aside)
    });
    if let Some(old) = &old {
        std::fs::rename(dir, old).map_err(io)?;
    }
    std::fs::rename(pending, dir).map_err(io)?;
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(old);
    }
    if let Some(parent) = dir.parent().and_then(|p| File::open(p).ok()) {
        let _ = parent.sync_all();
    }
    Ok(())
}

/// Writes the phrase's files into `dir`.
fn write_files(job: ArtifactJob, dir: &Path) -> Result<(), ArtifactJobError> {
    artifacts::write_bytes_atomic(&dir.join("result.json"), job.result_json.as_bytes())?;
    let frames: Vec<_> = job.poses.iter().map(|p| p.tracked.clone()).collect();
    let norm = job.rectified.0.max(1) as f32;
    artifacts::write_keypoints_workbook(&dir.join("keypoints.xlsx"), &frames, norm)?;
    let series = timeline_series(&job.title, &job.poses, &job.timeline, norm);
    artifacts::write_timeline_svg(&dir.join("timeline.svg"), &series)?;
    if let Some(o) = job.overlay {
        let image = decode_frame(o.encoding, &o.bytes, usize::MAX)
            .map_err(|e| ArtifactJobError::Overlay(format!("frame {}: {e}", o.frame)))?;
        let table = RemapTable::build(image.width, image.height, &job.rectify)
            .map_err(|e| ArtifactJobError::Overlay(e.to_string()))?;
        let rectified = table
            .undistort_rgb(&image)
            .map_err(|e| ArtifactJobError::Overlay(e.to_string()))?;
        artifacts::write_overlay(
            &dir.join("overlay.png"),
            &rectified,
            o.left.as_ref(),
            o.right.as_ref(),
        )?;
    }
    Ok(())
}

/// Positions over time (fractions of the frame width), blade contacts and hits for the plot.
fn timeline_series(
    title: &str,
    poses: &[TrackedPose],
    timeline: &Timeline,
    width: f32,
) -> TimelineSeries {
    let x = |k: Option<&Keypoints>| {
        let k = k?;
        let hips = [k[11][0], k[12][0]];
        let seen: Vec<f32> = hips.into_iter().filter(|v| v.is_finite()).collect();
        (!seen.is_empty()).then(|| seen.iter().sum::<f32>() / seen.len() as f32 / width)
    };
    let mut hits = Vec::new();
    for e in &timeline.events {
        let t = e.t as f32;
        match &e.kind {
            EventKind::Hit { scorer, .. } => {
                hits.push(TimelineHit {
                    t,
                    side: *scorer,
                    label: format!("HIT {}", scorer.name()),
                });
            }
            EventKind::SimultaneousHits => {
                for side in [Side::Left, Side::Right] {
                    hits.push(TimelineHit {
                        t,
                        side,
                        label: "simultaneous".into(),
                    });
                }
            }
            _ => {}
        }
    }
    TimelineSeries {
        title: title.to_string(),
        times: poses.iter().map(|p| p.t as f32).collect(),
        left_x: poses.iter().map(|p| x(p.tracked.left.as_ref())).collect(),
        right_x: poses.iter().map(|p| x(p.tracked.right.as_ref())).collect(),
        pauses: Vec::new(),
        blade_contacts: timeline.blade_contacts().map(|t| t as f32).collect(),
        hits,
    }
}

/// Why writing artifacts failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactJobError {
    #[error("cannot create {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("overlay image: {0}")]
    Overlay(String),
    #[error("refused artifact path: {0}")]
    UnsafePath(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_traversal_session_id_cannot_leave_the_output_dir() {
        let out = Path::new("/srv/referee/out");
        for id in [
            "..",
            ".",
            "../x",
            "a/../../b",
            "/etc",
            ".hidden",
            "a\\b",
            "",
        ] {
            assert!(
                matches!(phrase_dir(out, id, 0), Err(ArtifactJobError::UnsafePath(_))),
                "{id:?} must be refused"
            );
        }
        let dir = phrase_dir(out, "piste-1_2026.12.01", 3).expect("a safe name");
        assert_eq!(dir, out.join("piste-1_2026.12.01").join("phrase-003"));
    }

    fn job(dir: PathBuf, overlay_bytes: Option<Vec<u8>>) -> ArtifactJob {
        ArtifactJob {
            dir,
            title: "s phrase 0".into(),
            result_json: "{\"winner\": \"left\"}".into(),
            poses: Vec::new(),
            timeline: Timeline::default(),
            rectified: (320, 192),
            overlay: overlay_bytes.map(|b| OverlayFrame {
                frame: 3,
                encoding: FrameEncoding::Jpeg,
                bytes: Arc::new(b),
                left: None,
                right: None,
            }),
            rectify: RectifyParams {
                fisheye_enabled: false,
                strength: 0.0,
                balance: 0.0,
                band: (0.0, 1.0),
                target: (320, 192),
            },
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Failure 8 of issue 16: a phrase could be left with part of its files. Now a failure
    /// after the first files leaves no phrase folder and no temporary one.
    #[test]
    fn disk_partial_phrase_files_are_all_or_none() {
        let out = tempfile::tempdir().expect("tmp");
        let dir = phrase_dir(out.path(), "s", 0).expect("dir");
        // result.json, the workbook and the plot are written, then the overlay's frame is no JPEG.
        let err = write(job(dir.clone(), Some(b"not a jpeg".to_vec()))).unwrap_err();
        assert!(matches!(err, ArtifactJobError::Overlay(_)), "{err}");
        assert!(!dir.exists(), "a failed phrase leaves no folder");
        assert_eq!(names(&out.path().join("s")), Vec::<String>::new());

        write(job(dir.clone(), None)).expect("written");
        assert_eq!(
            names(&dir),
            ["keypoints.xlsx", "result.json", "timeline.svg"]
        );
        // Deciding the phrase again replaces the folder as a whole.
        std::fs::write(dir.join("stale.txt"), "old").expect("seed");
        write(job(dir.clone(), None)).expect("rewritten");
        assert_eq!(
            names(&dir),
            ["keypoints.xlsx", "result.json", "timeline.svg"]
        );
        assert_eq!(names(&out.path().join("s")), ["phrase-000"]);
    }

    #[test]
    fn unfinished_phrase_folders_from_a_crash_are_removed_at_start() {
        let out = tempfile::tempdir().expect("tmp");
        let session = out.path().join("s");
        let leftover = session.join(".phrase-001.tmp-1-0");
        std::fs::create_dir_all(&leftover).expect("leftover");
        std::fs::write(leftover.join("result.json"), "{}").expect("partial file");
        std::fs::create_dir_all(session.join("phrase-000")).expect("a finished phrase");
        let pool = start_pool(Some(out.path()), 1, 1);
        assert_eq!(names(&session), ["phrase-000"]);
        pool.shutdown();
    }
}
