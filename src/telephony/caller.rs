//! Calling a hook over HTTP: headers (the auth secret, the custom ones),
//! the hook's timeout, no redirects, an answer read up to 256 KB while it
//! streams, and one retry after a timeout or a connection error. Every
//! call goes through the egress rule (see [`crate::egress`]): names are
//! resolved and filtered by the client's own resolver, literal addresses
//! (which no resolver sees) are checked before the request, and the peer
//! that answered is checked again. The judgement of a complete answer is
//! [`super::contract::judge`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue as HttpHeaderValue, header};

use super::contract::{Failure, FailureKind, MAX_RESPONSE_BYTES, Verdict, judge};
use crate::egress::{self, Egress, EgressError};
use crate::index::HookConfig;

/// What one execution of a hook (with its retry, if any) came to.
#[derive(Debug)]
pub struct Exchange {
    pub verdict: Verdict,
    /// Requests sent: 1, or 2 after a retried timeout or connection error.
    pub attempts: u32,
    /// From the first request to the last answer.
    pub took: Duration,
    /// The last answer's HTTP status, if one came.
    pub http_status: Option<u16>,
    /// The last answer's body, kept only when asked (previews).
    pub body: Option<Vec<u8>>,
    /// The last answer's `Content-Type`, when it had one.
    pub content_type: Option<String>,
}

/// The HTTP client of every hook call.
#[derive(Clone)]
pub struct HookCaller {
    client: reqwest::Client,
    egress: Arc<Egress>,
}

/// The client could not be built (TLS roots...).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client for telephony hooks: {0}")]
pub struct CallerError(#[from] reqwest::Error);

struct Answer {
    status: u16,
    location: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A refusal as a hook failure; any other egress error (a name that does
/// not resolve) is a connection error, as before the rule.
fn egress_failure(e: &EgressError) -> Failure {
    if e.is_refusal() {
        Failure::new(FailureKind::EgressRefused, e.to_string())
    } else {
        Failure::new(FailureKind::Connection, format!("cannot connect: {e}"))
    }
}

impl HookCaller {
    /// A client whose every connection goes through `egress`.
    pub fn new(egress: Arc<Egress>) -> Result<Self, CallerError> {
        let client = egress
            .http_client()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idplane/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { client, egress })
    }

    /// The headers of a request to `hook`: content type, the auth header
    /// with its secret, and the custom headers.
    pub fn headers(hook: &HookConfig) -> Result<HeaderMap, Failure> {
        let mut headers = HeaderMap::with_capacity(3 + hook.headers.len());
        headers.insert(
            header::CONTENT_TYPE,
            HttpHeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HttpHeaderValue::from_static("application/json"),
        );
        let invalid = |what: String| Failure::new(FailureKind::InvalidConfig, what);
        let name = HeaderName::from_bytes(hook.auth_header.as_bytes())
            .map_err(|_| invalid(format!("\"{}\" is not a header name", hook.auth_header)))?;
        let mut secret = HttpHeaderValue::from_str(hook.auth_secret.as_text().trim_end())
            .map_err(|_| invalid("the auth secret is not a valid header value".into()))?;
        secret.set_sensitive(true);
        headers.insert(name, secret);
        for h in &hook.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| invalid(format!("\"{}\" is not a header name", h.name)))?;
            let value = HttpHeaderValue::from_str(&h.value.as_text())
                .map_err(|_| invalid(format!("the value of header {} is not valid", h.name)))?;
            headers.append(name, value);
        }
        Ok(headers)
    }

    /// Executes `hook` with `body`: a second request only after a timeout
    /// or a connection error.
    pub async fn call(&self, hook: &HookConfig, body: Vec<u8>, keep_body: bool) -> Exchange {
        let start = Instant::now();
        let prepared = Self::headers(hook).and_then(|h| Ok((h, self.target(&hook.url)?)));
        let (headers, url) = match prepared {
            Ok(p) => p,
            Err(failure) => {
                return Exchange {
                    verdict: Verdict::Failed(failure),
                    attempts: 0,
                    took: start.elapsed(),
                    http_status: None,
                    body: None,
                    content_type: None,
                };
            }
        };
        let body = axum::body::Bytes::from(body);
        let timeout = Duration::from_millis(hook.timeout_millis.max(1));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = self.once(&url, &headers, body.clone(), timeout).await;
            match result {
                Err(f) if f.kind.is_retried() && attempts < 2 => continue,
                Err(f) => {
                    // A refused address got no request (the resolver
                    // refused it before any connection).
                    let refused = f.kind == FailureKind::EgressRefused;
                    return Exchange {
                        verdict: Verdict::Failed(f),
                        attempts: attempts - u32::from(refused),
                        took: start.elapsed(),
                        http_status: None,
                        body: None,
                        content_type: None,
                    };
                }
                Ok(answer) => {
                    let verdict = judge(answer.status, answer.location.as_deref(), &answer.body);
                    return Exchange {
                        verdict,
                        attempts,
                        took: start.elapsed(),
                        http_status: Some(answer.status),
                        body: keep_body.then_some(answer.body),
                        content_type: answer.content_type,
                    };
                }
            }
        }
    }

    /// The URL as the client reads it, refused when its host is an address
    /// the rule refuses (an address never reaches the client's resolver:
    /// `http://2130706433/` is dialled as 127.0.0.1).
    fn target(&self, url: &str) -> Result<reqwest::Url, Failure> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            Failure::new(
                FailureKind::InvalidConfig,
                format!("the url cannot be used: {e}"),
            )
        })?;
        if let Some(ip) = egress::url_literal(&parsed) {
            self.egress
                .check(None, ip)
                .map_err(|e| egress_failure(&e))?;
        }
        Ok(parsed)
    }

    async fn once(
        &self,
        url: &reqwest::Url,
        headers: &HeaderMap,
        body: axum::body::Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let transport = |e: reqwest::Error, reading: bool| {
            if let Some(refused) = egress::find_in(&e) {
                egress_failure(refused)
            } else if e.is_timeout() {
                Failure::new(
                    FailureKind::Timeout,
                    format!("no complete answer within {} ms", timeout.as_millis()),
                )
            } else if reading {
                Failure::new(
                    FailureKind::Connection,
                    "the connection broke while reading the answer",
                )
            } else {
                Failure::new(FailureKind::Connection, connection_detail(&e))
            }
        };
        let mut response = self
            .client
            .post(url.clone())
            .headers(headers.clone())
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport(e, false))?;
        // The resolver and the check above decided where to connect; the
        // peer that answered must be one of those (a pooled connection, a
        // connector change): nothing of its answer is read otherwise.
        if let Some(peer) = response.remote_addr() {
            let name = url
                .host_str()
                .filter(|_| egress::url_literal(url).is_none());
            self.egress
                .check(name, peer.ip())
                .map_err(|e| egress_failure(&e))?;
        }
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let too_large = || {
            Failure::new(
                FailureKind::BodyTooLarge,
                format!("the answer is over {} KB", MAX_RESPONSE_BYTES / 1024),
            )
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(e, true))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            location,
            content_type,
            body,
        })
    }
}

/// The innermost cause of a connection error (`Connection refused`...),
/// without the URL's query.
fn connection_detail(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    let cause = source.to_string();
    let what = if e.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    if cause.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {cause}")
    }
}
