//! The HTTP server of the runtime API: accepts connections within limits,
//! closes the ones that stall, and answers every refusal as JSON.
//!
//! `axum::serve` keeps a connection open for as long as the client wants:
//! one that never finishes its headers, or idles between keep-alive
//! requests, held a file descriptor and memory for ever. Here each
//! connection is watched: its headers must arrive within the read timeout
//! (counted from the accept, or from the first byte of a later request), a
//! body may not pause longer than that, and a connection with no request
//! under way closes after the idle timeout. Connections over the limits
//! (in all, and from one client address) are answered 503 and closed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::http::ApiError;

/// Limits and timeouts of the API's connections (`run` and `operator`).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Time a client has to send a request's complete headers, counted
    /// from the connection's accept or from the first byte of a later
    /// request; also the longest pause while it sends a body. Slower
    /// clients are disconnected. Identity services send whole requests
    /// at once: a few seconds is plenty even across regions.
    #[arg(long = "http-read-timeout", default_value = "10s", value_parser = crate::resources::parse_duration)]
    pub read_timeout: Duration,
    /// A connection with no request under way closes after this long
    /// (keep-alive). Above the usual client pool idle time (Go, Java and
    /// reqwest keep idle connections 30 to 90 s) matters less than not
    /// holding descriptors for clients that went away.
    #[arg(long = "http-idle-timeout", default_value = "60s", value_parser = crate::resources::parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections in all; more are answered 503 and closed. Keep it
    /// below the process's file-descriptor limit less what the store, the
    /// watches and outbound calls need.
    #[arg(long = "http-max-connections", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections from one client IP address; more are answered
    /// 503 and closed, so that one client cannot take every connection.
    /// Raise it when many callers reach idplane through one proxy address.
    #[arg(long = "http-max-connections-per-client", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_client: u32,
}

/// Why a connection is not served, or no longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromClient,
}

/// Whether one more connection from a client may open, given what is open.
pub fn admit(open: u32, open_from_client: u32, settings: &HttpSettings) -> Result<(), Refusal> {
    if open >= settings.max_connections {
        Err(Refusal::TooManyConnections)
    } else if open_from_client >= settings.max_connections_per_client {
        Err(Refusal::TooManyFromClient)
    } else {
        Ok(())
    }
}

/// What a connection is doing, as the watchdog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// Requests whose headers arrived and whose answer is not yet written.
    pub in_flight: usize,
    /// When the client began a request whose headers are not complete.
    pub head_since: Option<Duration>,
    /// The last byte read or written.
    pub last_io: Duration,
}

/// The watchdog's decision at `now` (all times since one origin): close
/// the connection, or look again at the returned time.
pub fn watch(now: Duration, phase: Phase, settings: &HttpSettings) -> Result<Duration, Stalled> {
    if phase.in_flight > 0 {
        // A handler is working (a hook call may take seconds with no byte
        // on the wire); a stalled body is cut by the body's own timeout.
        return Ok(now + settings.read_timeout.min(settings.idle_timeout));
    }
    if let Some(since) = phase.head_since {
        let deadline = since + settings.read_timeout;
        return if now >= deadline {
            Err(Stalled::Headers)
        } else {
            Ok(deadline)
        };
    }
    let deadline = phase.last_io + settings.idle_timeout;
    if now >= deadline {
        Err(Stalled::Idle)
    } else {
        Ok(deadline)
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    Headers,
    Idle,
}

/// Serves `app` on `listener` until `stop` is cancelled; then no new
/// connections, and the requests under way are answered.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    settings: HttpSettings,
    stop: CancellationToken,
) {
    let counts = Arc::new(Counts::default());
    let connections = TaskTracker::new();
    let origin = Instant::now();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, or the peer left before the
                    // accept: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match counts.open(peer.ip(), &settings) {
            Ok(slot) => {
                tracing::debug!(%peer, open = counts.open.load(Ordering::Relaxed), "API connection accepted");
                let (app, settings, stop) = (app.clone(), settings.clone(), stop.clone());
                connections.spawn(async move {
                    connection(stream, peer, app, settings, stop, origin).await;
                    drop(slot);
                    tracing::debug!(%peer, "API connection closed");
                });
            }
            Err(refusal) => {
                connections.spawn(refuse(stream, peer, refusal));
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection; dropping it frees its place.
struct Slot {
    counts: Arc<Counts>,
    client: IpAddr,
}

impl Counts {
    fn open(self: &Arc<Self>, client: IpAddr, settings: &HttpSettings) -> Result<Slot, Refusal> {
        let mut per_client = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let open = u32::try_from(self.open.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        let from_client = per_client.get(&client).copied().unwrap_or(0);
        admit(open, from_client, settings)?;
        *per_client.entry(client).or_insert(0) += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            counts: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_client = self
            .counts
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
        self.counts.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers 503 on a connection over the limits, then closes it.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
    let message = match refusal {
        Refusal::TooManyConnections => {
            "idplane has as many open connections as --http-max-connections allows; retry shortly"
        }
        Refusal::TooManyFromClient => {
            "this client address has as many open connections as --http-max-connections-per-client allows; reuse them or retry shortly"
        }
    };
    tracing::warn!(%peer, ?refusal, "API connection refused");
    let body = serde_json::json!({"code": "too_many_connections", "message": message}).to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing, so that the close is
        // not a reset that could discard the answer before it is read.
        let mut sink = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? {
                0 => return Ok::<_, std::io::Error>(()),
                _ => continue,
            }
        }
    })
    .await;
}

/// Serves one connection under the watchdog.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    settings: HttpSettings,
    stop: CancellationToken,
    origin: Instant,
) {
    let activity = Arc::new(Activity::new(origin));
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        let read_timeout = settings.read_timeout;
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let (app, activity) = (app.clone(), activity.clone());
            async move {
                let _busy = activity.begin_request();
                Ok::<_, Infallible>(handle(app, request, read_timeout).await)
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let next_look = match watch(origin.elapsed(), activity.phase(), &settings) {
            Ok(at) => origin + at,
            Err(stalled) => {
                tracing::debug!(%peer, ?stalled, "closing a stalled API connection");
                return;
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "API connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = tokio::time::sleep_until(next_look) => {}
        }
    }
}

/// One request: an early 413 for a body announced too large (before a
/// `100 Continue` invites it), a body that may not stall, and an answer
/// that is JSON whatever refused it.
async fn handle(
    app: axum::Router,
    request: Request<hyper::body::Incoming>,
    read_timeout: Duration,
) -> Response<Body> {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > crate::http::MAX_BODY_BYTES as u64) {
        let mut response = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request body is larger than {} bytes",
                crate::http::MAX_BODY_BYTES
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let request = request.map(|body| Body::new(TimedBody::new(body, read_timeout)));
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    json_errors(response).await
}

/// Turns an error that axum or a route answered as plain text (a path or
/// query that does not parse, a method not allowed) into the API's JSON.
async fn json_errors(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_server_error() => "internal",
        _ => "refused",
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::CONNECTION] {
        if let Some(v) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    answer
}

/// What the watchdog reads about a connection; written by the I/O and
/// the service.
struct Activity {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since origin, plus one; 0: no request head under way.
    head_since: AtomicU64,
    last_io: AtomicU64,
}

impl Activity {
    fn new(origin: Instant) -> Self {
        let now = millis(origin);
        // A new connection owes its first request's headers from now.
        Self {
            origin,
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(now + 1),
            last_io: AtomicU64::new(now),
        }
    }

    fn phase(&self) -> Phase {
        let head = self.head_since.load(Ordering::Relaxed);
        Phase {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            head_since: (head > 0).then(|| Duration::from_millis(head - 1)),
            last_io: Duration::from_millis(self.last_io.load(Ordering::Relaxed)),
        }
    }

    fn read(&self) {
        let now = millis(self.origin);
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(0, now + 1, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(millis(self.origin), Ordering::Relaxed);
    }

    /// A request's headers are complete: until the guard drops, the
    /// connection is busy.
    fn begin_request(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        Busy(self.clone())
    }
}

fn millis(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// A TCP stream that reports each read and write to the watchdog.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body whose every frame must come within the read timeout.
struct TimedBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// A body that paused longer than `--http-read-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body paused longer than --http-read-timeout ({0:?})")]
pub struct BodyStalled(Duration);

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(this.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn settings() -> HttpSettings {
        HttpSettings {
            read_timeout: s(10),
            idle_timeout: s(60),
            max_connections: 3,
            max_connections_per_client: 2,
        }
    }

    #[test]
    fn connections_are_admitted_within_both_limits() {
        let set = settings();
        assert_eq!(admit(0, 0, &set), Ok(()));
        assert_eq!(admit(2, 1, &set), Ok(()));
        assert_eq!(admit(2, 2, &set), Err(Refusal::TooManyFromClient));
        assert_eq!(admit(3, 0, &set), Err(Refusal::TooManyConnections));
    }

    #[test]
    fn headers_must_arrive_within_the_read_timeout() {
        let set = settings();
        let phase = Phase {
            in_flight: 0,
            head_since: Some(s(100)),
            last_io: s(105),
        };
        assert_eq!(watch(s(105), phase, &set), Ok(s(110)));
        // Bytes keep coming, but the headers never end: still closed.
        assert_eq!(watch(s(110), phase, &set), Err(Stalled::Headers));
    }

    #[test]
    fn an_idle_connection_closes_after_the_idle_timeout() {
        let set = settings();
        let phase = Phase {
            in_flight: 0,
            head_since: None,
            last_io: s(100),
        };
        assert_eq!(watch(s(130), phase, &set), Ok(s(160)));
        assert_eq!(watch(s(160), phase, &set), Err(Stalled::Idle));
    }

    #[test]
    fn a_request_under_way_is_never_cut_by_the_watchdog() {
        let set = settings();
        let phase = Phase {
            in_flight: 1,
            head_since: None,
            last_io: s(0),
        };
        assert_eq!(watch(s(1000), phase, &set), Ok(s(1010)));
    }
}
