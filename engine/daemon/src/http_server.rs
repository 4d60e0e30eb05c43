//! The HTTP accept loop, with the bounds `axum::serve` lacks: at most `max_connections` open
//! connections (the next one is answered 503 and closed), a read timeout per request (its head
//! and body must arrive within `read_timeout` of its first byte) and an idle timeout per
//! connection (no request in progress for `idle_timeout`). A request is in progress from its
//! first byte until its response body is finished, so an open event stream never times out.
//!
//! Each connection runs on hyper's HTTP/1 server with a watchdog that follows its phase
//! ([`Phase`]): the reads mark the first byte of a request, the service marks the request
//! handled and its response body marks the end.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

/// The HTTP side's bounds (`http.*` settings).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's head and body must arrive within this of its first byte.
    pub read_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl HttpLimits {
    /// The limits from the `[http]` settings.
    pub fn from_config(h: &referee_config::HttpSettings) -> Self {
        Self {
            read_timeout: Duration::from_secs(h.read_timeout_s),
            idle_timeout: Duration::from_secs(h.idle_timeout_s),
            max_connections: h.max_connections.max(1),
        }
    }
}

/// What the accept loop has seen, shown on /status (`http`) and in /metrics.
#[derive(Debug, Default)]
pub struct HttpCounters {
    open: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    read_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

/// A snapshot of [`HttpCounters`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HttpCountersDoc {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused because `max_connections` were open.
    pub refused: u64,
    /// Connections closed (or requests answered 408) because a request arrived too slowly.
    pub read_timeouts: u64,
    /// Connections closed because they stayed idle too long.
    pub idle_timeouts: u64,
}

impl HttpCounters {
    /// The counters now.
    pub fn snapshot(&self) -> HttpCountersDoc {
        HttpCountersDoc {
            open: self.open.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            read_timeouts: self.read_timeouts.load(Ordering::Relaxed),
            idle_timeouts: self.idle_timeouts.load(Ordering::Relaxed),
        }
    }

    fn count_timeout(&self, kind: Expired) {
        let (counter, label) = match kind {
            Expired::Read => (&self.read_timeouts, "read"),
            Expired::Idle => (&self.idle_timeouts, "idle"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("referee_http_timeouts_total", "kind" => label).increment(1);
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in progress since `since`.
    Idle { since: Instant },
    /// A request's first byte arrived at `since`; its head is not complete yet.
    Head { since: Instant },
    /// `requests` requests are being answered (handler or response body still running).
    Busy { requests: usize },
}

/// Which timeout ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Read,
    Idle,
}

/// One connection's phase, shared by its reads, its service and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        })
    }

    /// Bytes arrived: an idle connection starts a request's head.
    fn on_bytes(&self) {
        let mut p = self.phase.lock();
        if let Phase::Idle { .. } = *p {
            *p = Phase::Head {
                since: Instant::now(),
            };
            drop(p);
            self.changed.notify_one();
        }
    }

    /// A request's head is complete: returns when its first byte came, and a guard that
    /// keeps the connection busy until dropped (with the response body).
    fn request_started(self: &Arc<Self>) -> (Instant, BusyGuard) {
        let mut p = self.phase.lock();
        let (started, requests) = match *p {
            Phase::Head { since } => (since, 1),
            Phase::Idle { .. } => (Instant::now(), 1),
            Phase::Busy { requests } => (Instant::now(), requests + 1),
        };
        *p = Phase::Busy { requests };
        drop(p);
        self.changed.notify_one();
        (started, BusyGuard(self.clone()))
    }

    /// Resolves when the connection has overstayed its current phase.
    async fn expired(&self, limits: HttpLimits) -> Expired {
        loop {
            let deadline = match *self.phase.lock() {
                Phase::Idle { since } => Some((since + limits.idle_timeout, Expired::Idle)),
                Phase::Head { since } => Some((since + limits.read_timeout, Expired::Read)),
                Phase::Busy { .. } => None,
            };
            match deadline {
                Some((at, kind)) if at <= Instant::now() => return kind,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Keeps its connection busy while alive; the last one dropped makes it idle.
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut p = self.0.phase.lock();
        if let Phase::Busy { requests } = *p {
            *p = if requests > 1 {
                Phase::Busy {
                    requests: requests - 1,
                }
            } else {
                Phase::Idle {
                    since: Instant::now(),
                }
            };
        }
        drop(p);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its connection busy until it is finished or dropped.
struct TrackedBody {
    inner: Body,
    _busy: BusyGuard,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The TCP stream, telling its [`Activity`] when bytes arrive.
struct WatchedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_bytes();
        }
        res
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a refused connection reads before it is closed.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 37\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many HTTP connections, try again\n";

/// Serves `router` on `listener` within `limits` until `shutdown` turns true; then each open
/// connection finishes its request in progress (at most `read_timeout` more) and closes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("referee_http_connections_refused_total").increment(1);
            debug!(%peer, max = limits.max_connections, "HTTP connection refused: at the cap");
            // Best effort, never waiting: the socket buffer takes these few bytes.
            let _ = stream.try_write(BUSY_RESPONSE);
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let open = counters.open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("referee_http_connections_open").set(open as f64);
        let (router, counters, shutdown) = (router.clone(), counters.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection(stream, router, limits, &counters, shutdown).await;
            let open = counters.open.fetch_sub(1, Ordering::Relaxed) - 1;
            metrics::gauge!("referee_http_connections_open").set(open as f64);
            drop(permit);
        });
    }
}

/// Runs one connection until it ends, times out or the daemon stops.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    counters: &Arc<HttpCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = TokioIo::new(WatchedStream {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let (activity, counters) = (activity.clone(), counters.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (started, busy) = activity.request_started();
            let mut router = router.clone();
            let counters = counters.clone();
            async move {
                let call = tower_service::Service::call(&mut router, req);
                let response =
                    match tokio::time::timeout_at(started + limits.read_timeout, call).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            counters.count_timeout(Expired::Read);
                            request_timeout()
                        }
                    };
                Ok::<_, std::convert::Infallible>(
                    response.map(|inner| TrackedBody { inner, _busy: busy }),
                )
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        kind = activity.expired(limits) => {
            counters.count_timeout(kind);
            debug!(?kind, "HTTP connection timed out");
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.read_timeout, conn).await;
        }
    }
}

/// Resolves once the daemon is stopping (or its stop sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn request_timeout() -> Response<Body> {
    let mut r = Response::new(Body::from("request not received in time\n"));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}
