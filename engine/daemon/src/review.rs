//! The HTTP side of the phrase history, for people reviewing verdicts (the feed page uses it):
//!
//! - `GET /phrases[?piste=P&limit=N]`: the recent phrases, newest first, each with our verdict
//!   in short, the referee's call and whether they agree, and the addresses of its pictures.
//! - `GET /phrases/{session}/{phrase}/overlay.png` and `.../timeline.svg`: the phrase's
//!   artifacts, read from `<output_dir>/<session>/phrase-NNN/`. The session must be a safe name
//!   and the phrase a number, so a request can never reach outside that folder.
//! - `POST /phrases/{session}/{phrase}/call` with `{"call": "left" | "right" | "no_touch"}`: the
//!   referee's call from the page.
//!
//! Every route needs the feed token ([`FeedToken`]), like the feed itself.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::history::{History, PhraseEntry, StoredCall};
use crate::http::HttpState;
use crate::http_auth::FeedToken;
use referee_record::CallWinner;

/// Phrases `GET /phrases` returns when no `limit` is given.
pub const DEFAULT_LIMIT: usize = 200;

/// The review routes (merged into the daemon's router).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/phrases", get(list))
        .route("/phrases/{session}/{phrase}/overlay.png", get(overlay))
        .route("/phrases/{session}/{phrase}/timeline.svg", get(timeline))
        .route("/phrases/{session}/{phrase}/call", post(call))
}

/// One phrase as `/phrases` shows it.
#[derive(Serialize)]
pub struct PhraseView {
    #[serde(flatten)]
    entry: PhraseEntry,
    /// The call that counts (the page's, else the log's).
    human_call: Option<StoredCall>,
    /// Our verdict is that call (`null` without a call).
    agrees: Option<bool>,
    /// Where its overlay image and timeline plot are served.
    overlay_url: String,
    timeline_url: String,
}

impl From<PhraseEntry> for PhraseView {
    fn from(entry: PhraseEntry) -> Self {
        let base = format!("/phrases/{}/{}", entry.session_id, entry.phrase);
        Self {
            human_call: entry.human_call().cloned(),
            agrees: entry.agrees(),
            overlay_url: format!("{base}/overlay.png"),
            timeline_url: format!("{base}/timeline.svg"),
            entry,
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    /// Only this piste.
    piste: Option<String>,
    /// At most this many phrases.
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListDoc {
    /// Newest first.
    phrases: Vec<PhraseView>,
    /// Phrases the history holds in all, and at most.
    total: usize,
    max_phrases: usize,
}

async fn list(_: FeedToken, State(s): State<HttpState>, Query(q): Query<ListQuery>) -> Response {
    let history = &s.core().history;
    let piste = q.piste.as_deref().filter(|p| !p.is_empty());
    let phrases = history
        .recent(piste, q.limit.unwrap_or(DEFAULT_LIMIT))
        .into_iter()
        .map(PhraseView::from)
        .collect();
    Json(ListDoc {
        phrases,
        total: history.len(),
        max_phrases: history.max_phrases(),
    })
    .into_response()
}

/// A refused request: its status and why, answered as JSON `{"error": ...}`.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// A JSON `{"error": ...}` answer.
fn refuse(code: StatusCode, message: String) -> Response {
    Refusal(code, message).into_response()
}

/// The phrase named by the path, checked: a safe session name and a phrase number.
fn phrase_path(session: &str, phrase: &str) -> Result<(String, u32), Refusal> {
    referee_engine::admission::check_safe_name(session)
        .map_err(|m| Refusal(StatusCode::BAD_REQUEST, format!("session id {m}")))?;
    let n = phrase.parse::<u32>().map_err(|_| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("phrase {phrase:?} is not a phrase number"),
        )
    })?;
    Ok((session.to_string(), n))
}

/// One of a phrase's artifact files, with its content type.
async fn artifact(s: &HttpState, session: &str, phrase: &str, file: &str, mime: &str) -> Response {
    let (session, phrase) = match phrase_path(session, phrase) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Some(out) = s.core().engine.config().output_dir.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "this daemon writes no artifacts".into(),
        );
    };
    let dir = match referee_engine::artifacts::job::phrase_dir(&out, &session, phrase) {
        Ok(d) => d,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match tokio::fs::read(dir.join(file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                // Our own SVG is shown as an image only: no scripts, nothing fetched.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => refuse(
            StatusCode::NOT_FOUND,
            format!("no {file} for {session} phrase {phrase} (yet)"),
        ),
        Err(e) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read {file}: {e}"),
        ),
    }
}

async fn overlay(
    _: FeedToken,
    State(s): State<HttpState>,
    Path((session, phrase)): Path<(String, String)>,
) -> Response {
    artifact(&s, &session, &phrase, "overlay.png", "image/png").await
}

async fn timeline(
    _: FeedToken,
    State(s): State<HttpState>,
    Path((session, phrase)): Path<(String, String)>,
) -> Response {
    artifact(&s, &session, &phrase, "timeline.svg", "image/svg+xml").await
}

/// The body of a call from the page.
#[derive(Debug, Deserialize)]
pub struct CallBody {
    /// `left`, `right` or `no_touch`.
    pub call: CallWinner,
}

async fn call(
    _: FeedToken,
    State(s): State<HttpState>,
    Path((session, phrase)): Path<(String, String)>,
    body: Result<Json<CallBody>, JsonRejection>,
) -> Response {
    let (session, phrase) = match phrase_path(&session, &phrase) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(r#"expected {{"call": "left" | "right" | "no_touch"}}: {e}"#),
            )
        }
    };
    match s.core().history.page_call(&session, phrase, body.call) {
        Some(entry) => Json(PhraseView::from(entry)).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            format!("{session} phrase {phrase} is not in the history"),
        ),
    }
}

/// Sets the agreement gauges (overall and per piste) from the history, for `/metrics`.
pub fn export_agreement(history: &History) {
    let r = history.agreement();
    let ratio = |v: Option<f64>| v.unwrap_or(f64::NAN);
    metrics::gauge!("referee_history_phrases").set(history.len() as f64);
    metrics::gauge!("referee_human_calls").set(r.overall.calls as f64);
    metrics::gauge!("referee_human_calls_sure").set(r.overall.sure_calls as f64);
    metrics::gauge!("referee_agreement_ratio").set(ratio(r.overall.agreement));
    metrics::gauge!("referee_agreement_when_sure_ratio").set(ratio(r.overall.agreement_when_sure));
    for (piste, a) in &r.pistes {
        let label = [("piste", piste.clone())];
        metrics::gauge!("referee_piste_human_calls", &label).set(a.calls as f64);
        metrics::gauge!("referee_piste_human_calls_sure", &label).set(a.sure_calls as f64);
        metrics::gauge!("referee_piste_agreement_ratio", &label).set(ratio(a.agreement));
        metrics::gauge!("referee_piste_agreement_when_sure_ratio", &label)
            .set(ratio(a.agreement_when_sure));
    }
}
