//! Writes a phrase's artifacts off the verdict path, on a short-lived thread.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use referee_pose_api::{decode_frame, FrameEncoding, Keypoints, Side};
use referee_rules::signal::{EventKind, Timeline};
use tracing::{info, warn};

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

/// Writes the artifacts on a background thread; failures are logged and counted.
pub(crate) fn spawn(job: ArtifactJob) -> Option<std::thread::JoinHandle<()>> {
    let spawned = std::thread::Builder::new()
        .name("referee-artifacts".into())
        .spawn(move || {
            let dir = job.dir.clone();
            match write(job) {
                Ok(()) => info!(dir = %dir.display(), "artifacts written"),
                Err(e) => {
                    metrics::counter!("referee_artifact_errors_total").increment(1);
                    warn!(dir = %dir.display(), error = %e, "writing artifacts failed");
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!(error = %e, "cannot start the artifact writer thread");
            None
        }
    }
}

/// Writes result.json, keypoints.xlsx, timeline.svg and overlay.png into `job.dir`.
pub(crate) fn write(job: ArtifactJob) -> Result<(), ArtifactJobError> {
    std::fs::create_dir_all(&job.dir).map_err(|e| ArtifactJobError::Io(job.dir.clone(), e))?;
    artifacts::write_bytes_atomic(&job.dir.join("result.json"), job.result_json.as_bytes())?;
    let frames: Vec<_> = job.poses.iter().map(|p| p.tracked.clone()).collect();
    let norm = job.rectified.0.max(1) as f32;
    artifacts::write_keypoints_workbook(&job.dir.join("keypoints.xlsx"), &frames, norm)?;
    let series = timeline_series(&job.title, &job.poses, &job.timeline, norm);
    artifacts::write_timeline_svg(&job.dir.join("timeline.svg"), &series)?;
    if let Some(o) = job.overlay {
        let image = decode_frame(o.encoding, &o.bytes, usize::MAX)
            .map_err(|e| ArtifactJobError::Overlay(format!("frame {}: {e}", o.frame)))?;
        let table = RemapTable::build(image.width, image.height, &job.rectify)
            .map_err(|e| ArtifactJobError::Overlay(e.to_string()))?;
        let rectified = table
            .undistort_rgb(&image)
            .map_err(|e| ArtifactJobError::Overlay(e.to_string()))?;
        artifacts::write_overlay(
            &job.dir.join("overlay.png"),
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
}
