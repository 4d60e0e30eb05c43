//! `referee replay REC|DIR [--json]`: runs recorded phrases through the same engine in this
//! process, with the recorded settings and the pose model they name, and checks that each
//! verdict is reproduced exactly (winner, confidence, reason, evidence, features, timeline).
//! A later phrase of a continuous bout is replayed after the bout's earlier phrases, in one
//! session, as the daemon saw them. A folder is a regression suite: every recording under it is replayed,
//! incomplete ones are skipped with the reason, and the exit status is non-zero when any
//! verdict differs or a recording cannot be replayed as recorded (another model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use referee_daemon::Core;
use referee_record::{compare_verdicts, Difference, ReadError, Recording};
use serde::Serialize;

/// Arguments of `referee replay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A recording (`phrase-NNN.tar`) or a folder of them (e.g. `<output_dir>/recordings`).
    rec: PathBuf,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    json: bool,
    /// Override a recorded setting (e.g. --set pose.model=PATH when the weights moved; the
    /// model's sha256 must still match). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Seconds to wait for each verdict.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

/// What happened to one recording.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// The verdict was reproduced.
    Identical,
    /// The verdict differs in these fields.
    Different,
    /// Not replayed: incomplete (partial file, no manifest, lost frames).
    Skipped,
    /// Not replayed: it cannot run as recorded (another model, settings this build refuses).
    Refused,
    /// The replay itself failed.
    Failed,
}

#[derive(Debug, Serialize)]
struct Report {
    path: PathBuf,
    outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    differences: Vec<DiffJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    winner: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confidence: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct DiffJson {
    field: String,
    recorded: serde_json::Value,
    replayed: serde_json::Value,
}

impl From<&Difference> for DiffJson {
    fn from(d: &Difference) -> Self {
        Self {
            field: d.field.clone(),
            recorded: d.recorded.clone(),
            replayed: d.replayed.clone(),
        }
    }
}

impl Report {
    fn new(path: &Path, outcome: Outcome, reason: Option<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            outcome,
            reason,
            differences: Vec::new(),
            winner: None,
            confidence: None,
        }
    }
}

/// An engine for one set of recorded settings with the sha256 of its weights, or why none.
type Started = Result<(Core, Option<String>), String>;

/// Engines already started, by recorded settings (a folder usually shares one).
struct Engines {
    cores: BTreeMap<BTreeMap<String, String>, Started>,
    overrides: Vec<String>,
}

impl Engines {
    /// The engine for these settings and the sha256 of its weights file, or why there is none.
    fn get(&mut self, rec: &Recording) -> &Started {
        let key = rec.manifest.settings.values.clone();
        let overrides = self.overrides.clone();
        self.cores
            .entry(key)
            .or_insert_with(|| start_engine(rec, &overrides).map_err(|e| format!("{e:#}")))
    }

    fn shutdown(self) {
        for (core, _) in self.cores.into_values().flatten() {
            core.shutdown();
        }
    }
}

fn start_engine(rec: &Recording, overrides: &[String]) -> anyhow::Result<(Core, Option<String>)> {
    let mut settings = referee_daemon::replay::recorded_settings(&rec.manifest.settings)
        .context("the recorded settings")?;
    for pair in overrides {
        settings.set_pair(pair).context("applying --set")?;
    }
    let weights = referee_daemon::pose::weights_path(&settings);
    let sha = referee_models::fetch::sha256_file(&weights)
        .map(Some)
        .with_context(|| format!("hashing the pose weights {}", weights.display()))?;
    let (estimators, _) = super::load_estimators(&settings)?;
    let mut cfg = referee_daemon::load_engine_config(&settings)?;
    // A replay checks the verdict; it writes no artifacts.
    cfg.output_dir = None;
    Ok((Core::start(cfg, estimators), sha))
}

fn replay_one(
    path: &Path,
    engines: &mut Engines,
    rt: &tokio::runtime::Runtime,
    timeout: Duration,
) -> Report {
    let rec = match Recording::open(path) {
        Ok(r) => r,
        Err(e @ ReadError::Incomplete { .. }) => {
            return Report::new(path, Outcome::Skipped, Some(e.to_string()))
        }
        Err(e) => return Report::new(path, Outcome::Failed, Some(e.to_string())),
    };
    if let Some(reason) = rec.incomplete_reason() {
        return Report::new(
            path,
            Outcome::Skipped,
            Some(format!("recorded incomplete: {reason}")),
        );
    }
    let recorded_model = rec.manifest.pose_model.clone();
    let (core, sha) = match engines.get(&rec) {
        Ok((core, sha)) => (core.clone(), sha.clone()),
        Err(e) => return Report::new(path, Outcome::Refused, Some(e.clone())),
    };
    match (&recorded_model.sha256, &sha) {
        (Some(want), Some(have)) if want == have => {}
        _ => {
            let reason = format!(
                "recorded with pose model {} ({}), the settings name weights with sha256 {}: \
                 replay needs the same model",
                recorded_model.name,
                recorded_model.describe(),
                sha.as_deref().unwrap_or("unknown")
            );
            return Report::new(path, Outcome::Refused, Some(reason));
        }
    }
    // A later phrase of a continuous bout is replayed after the phrases before it, in one
    // session, so the tracker and the session clock are as they were live.
    let (earlier, note) = earlier_phrases(&rec);
    let mut bout: Vec<&Recording> = earlier.iter().collect();
    bout.push(&rec);
    let run = referee_daemon::replay::replay_bout(&core, &bout, timeout);
    let verdict = match rt.block_on(run).map(|mut v| v.pop()) {
        Ok(Some(v)) => v,
        Ok(None) => return Report::new(path, Outcome::Failed, Some("no verdict".into())),
        Err(e) => return Report::new(path, Outcome::Failed, Some(e.to_string())),
    };
    let replayed: serde_json::Value = match serde_json::from_str(&verdict.detail_json) {
        Ok(v) => v,
        Err(e) => {
            return Report::new(
                path,
                Outcome::Failed,
                Some(format!("the replayed verdict is not JSON: {e}")),
            )
        }
    };
    let diffs = compare_verdicts(&rec.manifest.verdict, &replayed);
    let outcome = if diffs.is_empty() {
        Outcome::Identical
    } else {
        Outcome::Different
    };
    let mut report = Report::new(path, outcome, note);
    report.differences = diffs.iter().map(DiffJson::from).collect();
    report.winner = replayed["verdict"].get("winner").cloned();
    report.confidence = replayed["verdict"].get("confidence").cloned();
    report
}

/// The complete recordings of the phrases before `rec` in its session folder (phrase 0 on),
/// or none and why, when one of them is missing or incomplete.
fn earlier_phrases(rec: &Recording) -> (Vec<Recording>, Option<String>) {
    let m = &rec.manifest;
    let Some(dir) = rec.path.parent() else {
        return (Vec::new(), None);
    };
    let mut out = Vec::new();
    for phrase in 0..m.phrase {
        let path = dir.join(format!("phrase-{phrase:03}.tar"));
        match Recording::open(&path) {
            Ok(r) if r.incomplete_reason().is_none() && r.manifest.session_id == m.session_id => {
                out.push(r)
            }
            _ => {
                let note = format!(
                    "phrase {phrase} of this bout is not recorded complete: replayed on its own \
                     (its session clock starts at its first frame, so times may differ)"
                );
                return (Vec::new(), Some(note));
            }
        }
    }
    (out, None)
}

fn print_line(r: &Report) {
    let p = r.path.display();
    match r.outcome {
        Outcome::Identical => println!(
            "identical  {p}: {} ({}){}",
            r.winner.clone().unwrap_or_default(),
            r.confidence.clone().unwrap_or_default(),
            r.reason
                .as_ref()
                .map(|n| format!("; {n}"))
                .unwrap_or_default()
        ),
        Outcome::Different => {
            println!("DIFFERENT  {p}:");
            if let Some(n) = &r.reason {
                println!("    ({n})");
            }
            for d in &r.differences {
                println!(
                    "    {}: recorded {}, replayed {}",
                    d.field, d.recorded, d.replayed
                );
            }
        }
        Outcome::Skipped => println!(
            "skipped    {p}: {}",
            r.reason.as_deref().unwrap_or_default()
        ),
        Outcome::Refused => println!(
            "REFUSED    {p}: {}",
            r.reason.as_deref().unwrap_or_default()
        ),
        Outcome::Failed => println!(
            "FAILED     {p}: {}",
            r.reason.as_deref().unwrap_or_default()
        ),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let paths = referee_record::list(&args.rec)
        .with_context(|| format!("looking for recordings in {}", args.rec.display()))?;
    anyhow::ensure!(
        !paths.is_empty(),
        "no recordings (phrase-NNN.tar) in {}",
        args.rec.display()
    );
    let rt = super::runtime(2)?;
    let mut engines = Engines {
        cores: BTreeMap::new(),
        overrides: args.set.clone(),
    };
    let timeout = Duration::from_secs(args.timeout_s);
    let mut reports = Vec::new();
    for path in &paths {
        let r = replay_one(path, &mut engines, &rt, timeout);
        if !args.json {
            print_line(&r);
        }
        reports.push(r);
    }
    engines.shutdown();
    let count = |o: fn(&Outcome) -> bool| reports.iter().filter(|r| o(&r.outcome)).count();
    let identical = count(|o| matches!(o, Outcome::Identical));
    let different = count(|o| matches!(o, Outcome::Different));
    let skipped = count(|o| matches!(o, Outcome::Skipped));
    let refused = count(|o| matches!(o, Outcome::Refused));
    let failed = count(|o| matches!(o, Outcome::Failed));
    let summary = format!(
        "{} recording(s): {identical} identical, {different} different, {skipped} skipped \
         (incomplete), {refused} refused, {failed} failed",
        reports.len()
    );
    if args.json {
        let doc = serde_json::json!({
            "recordings": reports,
            "identical": identical,
            "different": different,
            "skipped": skipped,
            "refused": refused,
            "failed": failed,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{summary}");
    }
    // A single recording that could not be replayed is a failure too: nothing was checked.
    let nothing_checked = identical + different == 0;
    if different + refused + failed > 0 || nothing_checked {
        anyhow::bail!("{summary}");
    }
    Ok(())
}
