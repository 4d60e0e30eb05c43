//! Who may read the feed over HTTP: the feed-token check every protected route shares.
//!
//! The policy is the QUIC side's ([`AuthPolicy`], built from `auth.feed_tokens` and the HTTP
//! bind address): with feed tokens configured a request must carry one, either as
//! `Authorization: Bearer TOKEN` or as `?token=TOKEN` (for `EventSource`, which cannot set
//! headers); with none, requests are accepted on a loopback bind only.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use referee_transport::auth::AuthPolicy;
use referee_transport::messages::Role;
use serde::Deserialize;

use crate::http::HttpState;

/// Proof that a request may read the feed. Put it first among a handler's arguments
/// (`async fn h(_: FeedToken, ...)`); without a valid token the request is answered
/// 401 with a JSON `{"error": ...}` body and a `WWW-Authenticate: Bearer` header.
#[derive(Debug, Clone, Copy)]
pub struct FeedToken;

impl FromRequestParts<HttpState> for FeedToken {
    type Rejection = Unauthorized;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        require_feed_token(state.auth(), parts).map(|()| FeedToken)
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token a request carries: the `Authorization: Bearer` header first, else `?token=`.
pub fn request_token(parts: &Parts) -> Option<String> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    bearer.or_else(|| {
        Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.token)
    })
}

/// A request refused for want of a valid feed token; answered 401.
#[derive(Debug)]
pub struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({
                "error": self.0,
                "hint": "send `Authorization: Bearer TOKEN` or add ?token=TOKEN (a feed token)",
            })),
        )
            .into_response()
    }
}

/// Checks that the request may read the feed under `auth`.
pub fn require_feed_token(auth: &AuthPolicy, parts: &Parts) -> Result<(), Unauthorized> {
    let token = request_token(parts).unwrap_or_default();
    auth.authorize(Role::Feed, &token).map_err(|e| {
        metrics::counter!("referee_http_unauthorized_total").increment(1);
        tracing::debug!(path = %parts.uri.path(), error = %e, "HTTP request refused");
        Unauthorized(e.to_string())
    })
}
