//! Dev-only helpers shared by the workspace's tests: where the real shared data and the pose
//! weights are, and what a test does when they are absent.
//!
//! - The shared folder is `$REFEREE_SHARED_DIR`, else `shared/` beside the workspace root
//!   (`../shared` from the directory holding the workspace's `Cargo.toml`).
//! - A test that needs a file there calls [`require_shared`]: it gets the path, or `None` after
//!   a `skipped <test>: ...` line on stderr. Under CI ([`in_ci`]) the absence is a failure
//!   instead: a CI run must not pass by skipping what it was meant to check.
//! - The pose weights are `$REFEREE_WEIGHTS`, else the caller's default (pass
//!   `referee_models::default_weights_path`, so that this crate needs no Candle). Their absence
//!   always fails the test, with the command that fetches them ([`require_weights`]).
//!
//! Nothing here caches: every call reads the environment afresh.

use std::path::{Path, PathBuf};

/// Environment variable naming the shared folder (the one holding `data/` and `models/`).
pub const SHARED_DIR_ENV: &str = "REFEREE_SHARED_DIR";
/// Environment variable naming converted pose weights (a `.safetensors` file).
pub const WEIGHTS_ENV: &str = "REFEREE_WEIGHTS";
/// The sample saber clip (63 frames, 1280x720), relative to the shared folder.
pub const SAMPLE_CLIP: &str = "data/3809.MP4";
/// The sample clip's signal log, relative to the shared folder.
pub const SAMPLE_SIGNAL: &str = "data/3809_signal.txt";
/// The old system's keypoint workbook for the sample clip, relative to the shared folder.
pub const SAMPLE_KEYPOINTS: &str = "data/3809_keypoints.xlsx";
/// The folder of real phrases (one folder each), relative to the shared folder.
pub const PHRASES: &str = "data/phrases";
/// The official YOLO11n-pose checkpoint, relative to the shared folder.
pub const SHARED_CHECKPOINT: &str = "models/yolo11n-pose.pt";

/// The workspace root: the nearest ancestor of this crate whose `Cargo.toml` declares
/// `[workspace]`.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml"))
                .map(|t| t.lines().any(|l| l.trim() == "[workspace]"))
                .unwrap_or(false)
        })
        .unwrap_or(here)
        .to_path_buf()
}

/// Where the shared folder should be, whether or not it exists.
fn shared_candidate() -> PathBuf {
    if let Some(d) = nonempty_env(SHARED_DIR_ENV) {
        return PathBuf::from(d);
    }
    let root = workspace_root();
    match root.parent() {
        Some(p) => p.join("shared"),
        None => root.join("..").join("shared"),
    }
}

/// The shared folder (`$REFEREE_SHARED_DIR`, else `../shared` beside the workspace root) when
/// it exists.
pub fn shared_dir() -> Option<PathBuf> {
    let d = shared_candidate();
    d.is_dir().then_some(d)
}

/// Whether this is a CI run: `CI` is set to anything but empty, `0` or `false` (CI services set
/// `CI=true`; `CI=1` counts too).
pub fn in_ci() -> bool {
    nonempty_env("CI").is_some_and(|v| {
        let v = v.to_string_lossy();
        !(v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => "this test".to_string(),
    }
}

/// Skips the running test for `reason`: prints `skipped <test>: <reason>` to stderr, or, under
/// CI, panics with it. The caller returns after this.
#[track_caller]
pub fn skip(reason: &str) {
    let test = test_name();
    if in_ci() {
        panic!("{test}: {reason} (CI is set, so this fails instead of skipping)");
    }
    eprintln!("skipped {test}: {reason}");
}

/// Where `rel` is in the shared folder, whether or not it exists (for a file a test reads once
/// [`require_shared`] has found the folder it belongs to).
pub fn shared_path(rel: &str) -> PathBuf {
    shared_candidate().join(rel)
}

/// `rel` (e.g. [`SAMPLE_CLIP`]) inside the shared folder when it exists. When it does not,
/// [`skip`]s with `why` (what the test needs it for) and the path it looked at, and returns
/// `None`; under CI that panics instead.
#[track_caller]
pub fn require_shared(rel: &str, why: &str) -> Option<PathBuf> {
    let p = shared_path(rel);
    if p.exists() {
        return Some(p);
    }
    skip(&format!(
        "{why} needs {}, which is not there (set {SHARED_DIR_ENV} to the shared folder)",
        p.display()
    ));
    None
}

/// The sample clip and its signal log (see [`require_shared`]).
#[track_caller]
pub fn sample_clip(why: &str) -> Option<(PathBuf, PathBuf)> {
    Some((
        require_shared(SAMPLE_CLIP, why)?,
        require_shared(SAMPLE_SIGNAL, why)?,
    ))
}

/// The phrase folders under `phrases` that hold a file `holding` (e.g. `signal.txt`), sorted.
/// Empty when `phrases` does not exist; panics when it exists but cannot be listed.
pub fn phrase_dirs(phrases: &Path, holding: &str) -> Vec<PathBuf> {
    if !phrases.exists() {
        return Vec::new();
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(phrases)
        .unwrap_or_else(|e| panic!("listing {}: {e}", phrases.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(holding).is_file())
        .collect();
    v.sort();
    v
}

/// The converted pose weights' path: `$REFEREE_WEIGHTS`, else `default()` (pass
/// `referee_models::default_weights_path`). Whether the file exists is not checked.
pub fn weights_path(default: impl FnOnce() -> PathBuf) -> PathBuf {
    nonempty_env(WEIGHTS_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(default)
}

/// The converted pose weights ([`weights_path`]); panics with the command that fetches them
/// when they are missing. Unlike the shared data this never skips, CI or not: the test suite
/// needs the weights (the README's step 1 or `cargo run --release -- model fetch`).
#[track_caller]
pub fn require_weights(default: impl FnOnce() -> PathBuf) -> PathBuf {
    let p = weights_path(default);
    assert!(
        p.is_file(),
        "{}: pose weights not found at {}: run `cargo run --release -- model fetch` first \
         (or set {WEIGHTS_ENV} to a converted .safetensors)",
        test_name(),
        p.display()
    );
    p
}

fn nonempty_env(k: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(k).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    fn panic_text(r: std::thread::Result<impl Sized>) -> String {
        let payload = match r {
            Ok(_) => panic!("expected a panic"),
            Err(p) => p,
        };
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    /// Sets (Some) or removes (None) environment variables, restoring them on drop.
    struct Env(Vec<(&'static str, Option<std::ffi::OsString>)>);
    impl Env {
        fn set(vars: &[(&'static str, Option<&Path>)]) -> Env {
            let saved = vars
                .iter()
                .map(|(k, _)| (*k, std::env::var_os(k)))
                .collect();
            for (k, v) in vars {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
            Env(saved)
        }
    }
    impl Drop for Env {
        fn drop(&mut self) {
            for (k, v) in &self.0 {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
    }

    #[test]
    fn workspace_root_holds_this_crate() {
        let root = workspace_root();
        assert!(root.join("Cargo.lock").exists() || root.join("Cargo.toml").exists());
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).starts_with(&root));
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("tests/support"), "{}", root.display());
    }

    #[test]
    fn phrase_dirs_lists_sorted_folders_holding_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let phrases = tmp.path().join("phrases");
        for (name, file) in [("b", "signal.txt"), ("a", "signal.txt"), ("c", "other.txt")] {
            std::fs::create_dir_all(phrases.join(name)).unwrap();
            std::fs::write(phrases.join(name).join(file), "x").unwrap();
        }
        std::fs::write(phrases.join("signal.txt"), "not a folder").unwrap();
        assert_eq!(
            phrase_dirs(&phrases, "signal.txt"),
            vec![phrases.join("a"), phrases.join("b")]
        );
        assert!(phrase_dirs(&tmp.path().join("absent"), "signal.txt").is_empty());
    }

    /// Everything that reads the environment, in one test: the environment is process-wide
    /// and the other tests here do not read it.
    #[test]
    fn locating_skipping_and_failing_under_ci() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        let absent = tmp.path().join("absent");
        std::fs::create_dir_all(shared.join("data")).unwrap();
        std::fs::write(shared.join(SAMPLE_CLIP), "clip").unwrap();
        let weights = tmp.path().join("w.safetensors");
        std::fs::write(&weights, "w").unwrap();

        // CI values
        for (v, ci) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("false", false),
            ("0", false),
            ("", false),
        ] {
            let _env = Env::set(&[("CI", Some(Path::new(v)))]);
            assert_eq!(in_ci(), ci, "CI={v:?}");
        }

        // absent data, CI unset: None after a message
        {
            let _env = Env::set(&[(SHARED_DIR_ENV, Some(&absent)), ("CI", None)]);
            assert!(!in_ci());
            assert_eq!(shared_dir(), None);
            assert_eq!(require_shared(SAMPLE_CLIP, "decoding the clip"), None);
            assert_eq!(sample_clip("streaming the clip"), None);
        }
        // absent data under CI: a failure that names the test, the reason and the path
        for ci in ["true", "1"] {
            let _env = Env::set(&[(SHARED_DIR_ENV, Some(&absent)), ("CI", Some(Path::new(ci)))]);
            let msg = panic_text(catch_unwind(|| {
                require_shared(SAMPLE_CLIP, "decoding the clip")
            }));
            assert!(
                msg.contains("locating_skipping_and_failing_under_ci"),
                "{msg}"
            );
            assert!(msg.contains("decoding the clip"), "{msg}");
            assert!(
                msg.contains(&absent.join(SAMPLE_CLIP).display().to_string()),
                "{msg}"
            );
            assert!(msg.contains(SHARED_DIR_ENV), "{msg}");
            assert!(msg.contains("CI"), "{msg}");
        }
        // present data: Some, CI or not; a missing file in a present folder still skips/fails
        for ci in [None, Some(Path::new("true"))] {
            let _env = Env::set(&[(SHARED_DIR_ENV, Some(&shared)), ("CI", ci)]);
            assert_eq!(shared_dir(), Some(shared.clone()));
            assert_eq!(shared_path(SAMPLE_SIGNAL), shared.join(SAMPLE_SIGNAL));
            assert_eq!(
                require_shared(SAMPLE_CLIP, "decoding the clip"),
                Some(shared.join(SAMPLE_CLIP))
            );
            let signal = catch_unwind(|| sample_clip("streaming the clip"));
            match ci {
                None => assert_eq!(signal.ok(), Some(None)),
                Some(_) => assert!(panic_text(signal).contains(SAMPLE_SIGNAL)),
            }
        }
        // an empty REFEREE_SHARED_DIR counts as unset: the folder beside the workspace
        {
            let _env = Env::set(&[(SHARED_DIR_ENV, Some(Path::new(""))), ("CI", None)]);
            assert_eq!(
                shared_candidate(),
                workspace_root().parent().unwrap().join("shared")
            );
        }

        // weights: $REFEREE_WEIGHTS, else the default; absent ones fail even without CI
        {
            let _env = Env::set(&[(WEIGHTS_ENV, Some(&weights)), ("CI", None)]);
            assert_eq!(require_weights(|| absent.clone()), weights);
        }
        {
            let _env = Env::set(&[(WEIGHTS_ENV, None), ("CI", None)]);
            assert_eq!(weights_path(|| absent.clone()), absent);
            assert_eq!(require_weights(|| weights.clone()), weights);
            let msg = panic_text(catch_unwind(AssertUnwindSafe(|| {
                require_weights(|| absent.clone())
            })));
            assert!(msg.contains("model fetch"), "{msg}");
            assert!(msg.contains(&absent.display().to_string()), "{msg}");
        }
    }
}
