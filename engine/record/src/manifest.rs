//! The JSON documents of a recording: `frames.json` ([`FrameRecord`]s) and `manifest.json`
//! ([`Manifest`]).

use std::collections::BTreeMap;

use referee_pose_api::FrameEncoding;
use serde::{Deserialize, Serialize};

/// Version of the layout and manifest; a reader refuses a newer one.
pub const FORMAT_VERSION: u32 = 1;

/// One frame as received, in `frames.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// The session's frame number (the wire header's).
    pub frame: u64,
    /// Capture time, microseconds since the Unix epoch (the wire header's; 0 = unknown).
    pub capture_ts_us: u64,
    /// How the bytes are encoded (the wire header's).
    pub encoding: FrameEncoding,
    /// Number of bytes.
    pub len: u32,
    /// When the daemon received it, microseconds since the Unix epoch.
    pub arrival_us: u64,
    /// Its entry in the tar (`frames/NNNNN.jpg`).
    pub file: String,
}

/// The pose model a recording was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelId {
    /// The model's name as the daemon shows it (the weights' file name).
    pub name: String,
    /// sha256 of the weights file, hex; `None` for a stand-in estimator without weights.
    pub sha256: Option<String>,
}

impl ModelId {
    /// A stand-in estimator (tests, benches without weights): there is no file to hash.
    pub fn stand_in(name: &str) -> Self {
        Self {
            name: name.to_string(),
            sha256: None,
        }
    }

    /// The sha256 for people: the hex digest, or `stand-in (NAME)`.
    pub fn describe(&self) -> String {
        match &self.sha256 {
            Some(h) => h.clone(),
            None => format!("stand-in ({})", self.name),
        }
    }
}

/// The settings the daemon ran with when it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SettingsSnapshot {
    /// The keys that decide a verdict, as text `Settings::set` accepts (dotted key -> value):
    /// replay applies them over the defaults.
    pub values: BTreeMap<String, String>,
    /// Every setting, as the daemon logs them (tokens redacted), for people.
    pub all: String,
}

/// The side a human gave the touch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallWinner {
    /// The left fencer.
    Left,
    /// The right fencer.
    Right,
    /// No touch for either.
    NoTouch,
}

impl CallWinner {
    /// The fencer given the touch (`None` for no touch).
    pub fn side(self) -> Option<referee_pose_api::Side> {
        match self {
            CallWinner::Left => Some(referee_pose_api::Side::Left),
            CallWinner::Right => Some(referee_pose_api::Side::Right),
            CallWinner::NoTouch => None,
        }
    }
}

impl From<referee_pose_api::Side> for CallWinner {
    fn from(s: referee_pose_api::Side) -> Self {
        match s {
            referee_pose_api::Side::Left => CallWinner::Left,
            referee_pose_api::Side::Right => CallWinner::Right,
        }
    }
}

/// Where a human call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOrigin {
    /// The signal log's tail (`Manual selection winner:` / `Confirmed result winner:`).
    Log,
    /// A referee on the feed page.
    Page,
}

/// The referee's own call, kept beside the verdict (never an input to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanCall {
    /// Who the referee gave the touch to.
    pub winner: CallWinner,
    /// Where the call came from.
    pub origin: CallOrigin,
    /// How it was entered at the box (`manual_selection`, `confirmed`), for log calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// When the call was made, as the source stamped it (log stamp or page time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// `manifest.json`: everything needed to replay the phrase and check the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] when written.
    pub format: u32,
    /// False when frames were lost on the way to the recorder (see `incomplete_reason`):
    /// such a recording is not replayed as complete.
    pub complete: bool,
    /// Why it is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
    /// The session.
    pub session_id: String,
    /// Its piste.
    pub piste: String,
    /// The camera's name.
    pub camera: String,
    /// The session's declared frame rate.
    pub fps: f32,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The agent's fisheye hint, as `[enabled, strength, balance]`, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undistort: Option<(bool, f32, f32)>,
    /// The phrase within the session.
    pub phrase: u32,
    /// Capture time of the phrase's first frame, when the agent sent it (continuous bouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phrase_start_us: Option<u64>,
    /// The signal log's file name (its entry is `signal/<name>`).
    pub signal_file: String,
    /// Frames in the recording.
    pub frames: u64,
    /// Their bytes.
    pub frame_bytes: u64,
    /// When the recording was closed, milliseconds since the Unix epoch.
    pub recorded_at_ms: u64,
    /// `referee` version that recorded it.
    pub engine_version: String,
    /// The pose model.
    pub pose_model: ModelId,
    /// The settings.
    pub settings: SettingsSnapshot,
    /// The verdict's full document (the daemon's `result.json`).
    pub verdict: serde_json::Value,
    /// The referee's call, once known (from the log, its later update, or the page).
    #[serde(default)]
    pub referee_call: Option<HumanCall>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_serialise_in_snake_case_and_stand_ins_say_so() {
        let c = HumanCall {
            winner: CallWinner::NoTouch,
            origin: CallOrigin::Page,
            how: None,
            at: None,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"winner":"no_touch","origin":"page"}"#);
        assert_eq!(serde_json::from_str::<HumanCall>(&j).unwrap(), c);
        assert_eq!(ModelId::stand_in("x").describe(), "stand-in (x)");
    }
}
