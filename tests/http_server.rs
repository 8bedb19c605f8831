//! The API's HTTP server against real sockets: stalled and idle connections
//! are closed within their timeouts while others are served, connections
//! over the limits get a JSON 503, a body announced too large gets an early
//! 413, and every refusal is JSON.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "t-http-server-0123456789";

fn start(extra: &[&str]) -> (tempfile::TempDir, Idplane) {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!("tokens:\n  - {{name: idp, token: {TOKEN}, orgs: [acme]}}\n"),
    )
    .unwrap();
    let mut args = vec!["-n", "acme"];
    args.extend_from_slice(extra);
    let run = Idplane::run_manifests(
        &root().join("examples/org"),
        &tmp.path().join("state.db"),
        &tokens,
        &args,
        &[],
        &tmp.path().join("idplane.log"),
    );
    (tmp, run)
}

/// Reads what the server sends until it closes the connection (or
/// `limit` passes: then None).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if start.elapsed() >= limit {
                    return None;
                }
            }
            // A reset is a close too.
            Err(_) => return Some(String::from_utf8_lossy(&got).into_owned()),
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A whole request on a fresh connection: the raw answer.
fn raw(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    match stream.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        Err(e) => panic!(
            "no close within 10 s ({e}) after {request:?}; got {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

fn body_json(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}):\n{answer}"))
}

#[test]
fn a_thousand_half_open_connections_are_closed_within_the_read_timeout_while_others_are_served() {
    let (_tmp, run) = start(&[
        "--http-read-timeout",
        "6s",
        "--http-max-connections",
        "3000",
        "--http-max-connections-per-client",
        "2000",
    ]);
    let pid = run.child.id();
    let before = open_fds(pid);
    let opened = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut s = TcpStream::connect(&run.addr).unwrap();
            // Headers that never end.
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: idplane\r\nX-Slow: 1")
                .unwrap();
            s
        })
        .collect();
    // The server accepts them all (from the kernel's queue) and holds them.
    wait_for(
        "the server to hold the stalled connections",
        Duration::from_secs(5),
        || (open_fds(pid) >= before + 990).then_some(()),
    );
    // A normal client is served meanwhile.
    let (status, body) = http_get(&run.url("/healthz"), None);
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = http_get(&run.url("/v1/orgs/acme/config"), Some(TOKEN));
    assert_eq!(status, 200);
    // Half-way through the timeout they are all still open.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(opened.elapsed()));
    for s in stalled.iter_mut().step_by(50) {
        assert_eq!(
            read_until_closed(s, Duration::from_millis(20)),
            None,
            "closed after {:?}, before the 6 s read timeout",
            opened.elapsed()
        );
    }
    // Then each is closed by the server, within the timeout plus a margin
    // for a loaded 2-core machine.
    for s in &mut stalled {
        let limit = Duration::from_secs(15).saturating_sub(opened.elapsed());
        let answer = read_until_closed(s, limit);
        assert!(
            answer.is_some(),
            "a stalled connection is still open {:?} after it opened",
            opened.elapsed()
        );
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(5900),
        "closed before the 6 s read timeout: {:?}",
        opened.elapsed()
    );
    drop(stalled);
    let after = wait_for(
        "descriptors to be released",
        Duration::from_secs(10),
        || {
            let n = open_fds(pid);
            (n <= before + 10).then_some(n)
        },
    );
    assert!(after <= before + 10, "{before} -> {after}");
}

#[test]
fn an_idle_keep_alive_connection_closes_after_the_idle_timeout_and_not_before() {
    let (_tmp, run) = start(&["--http-idle-timeout", "2s", "--http-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(&run.addr).unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: idplane\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    let answered = Instant::now();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Kept alive past the read timeout (1 s): the idle timeout governs.
    std::thread::sleep(Duration::from_millis(1300));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: idplane\r\n\r\n")
        .unwrap();
    let n = stream.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered_again = Instant::now();
    assert!(answered_again - answered >= Duration::from_millis(1300));
    let closed = read_until_closed(&mut stream, Duration::from_secs(6));
    assert_eq!(
        closed.as_deref(),
        Some(""),
        "closed, with nothing more sent"
    );
    let idle = answered_again.elapsed();
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(6),
        "closed after {idle:?} idle (timeout 2 s)"
    );
}

#[test]
fn connections_over_the_per_client_limit_get_a_json_503() {
    let (_tmp, run) = start(&["--http-max-connections-per-client", "3"]);
    // Three connections, each proven admitted by an answered request and
    // kept alive. (One may be refused while the readiness check's own
    // connection is still closing: it is replaced.)
    let mut held = Vec::new();
    let mut buf = [0u8; 1024];
    wait_for(
        "three admitted connections",
        Duration::from_secs(10),
        || {
            let mut s = TcpStream::connect(&run.addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: idplane\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let n = s.read(&mut buf).unwrap_or(0);
            if buf[..n].starts_with(b"HTTP/1.1 200") {
                held.push(s);
            }
            (held.len() == 3).then_some(())
        },
    );
    let answer = raw(
        &run.addr,
        "GET /healthz HTTP/1.1\r\nHost: idplane\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = body_json(&answer);
    assert_eq!(body["code"], "too_many_connections");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--http-max-connections-per-client"),
        "{body}"
    );
    drop(held);
    // Once they close, the client is served again.
    wait_for("a place to free up", Duration::from_secs(10), || {
        (http_get(&run.url("/healthz"), None).0 == 200).then_some(())
    });
}

#[test]
fn a_body_announced_too_large_gets_an_early_413_without_100_continue() {
    let (_tmp, run) = start(&[]);
    let mut stream = TcpStream::connect(&run.addr).unwrap();
    let head = format!(
        "POST /v1/orgs/acme/enrollment/evaluate HTTP/1.1\r\nHost: idplane\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    // No body is sent: the answer must come without it.
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .expect("the server answers and closes without waiting for the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert_eq!(body_json(&answer)["code"], "body_too_large");
}

#[test]
fn refusals_of_the_path_query_and_method_are_json() {
    let (_tmp, run) = start(&[]);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for (request, status) in [
        (
            format!(
                "GET /v1/orgs/%FF/config HTTP/1.1\r\nHost: i\r\n{auth}Connection: close\r\n\r\n"
            ),
            "400",
        ),
        (
            format!(
                "GET /v1/orgs/acme/events?limit=abc HTTP/1.1\r\nHost: i\r\n{auth}Connection: close\r\n\r\n"
            ),
            "400",
        ),
        (
            format!(
                "DELETE /v1/orgs/acme/config HTTP/1.1\r\nHost: i\r\n{auth}Connection: close\r\n\r\n"
            ),
            "405",
        ),
        (
            "GET /nowhere HTTP/1.1\r\nHost: i\r\nConnection: close\r\n\r\n".to_string(),
            "404",
        ),
    ] {
        let answer = raw(&run.addr, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}\n{answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{answer}"
        );
        let body = body_json(&answer);
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let (_tmp, run) = start(&[]);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let answer = raw(
            &run.addr,
            &format!(
                "GET /v1/orgs/acme/config HTTP/1.1\r\nHost: i\r\nAuthorization: {scheme} {TOKEN}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{scheme}: {answer}");
    }
}

#[test]
fn a_body_that_stalls_longer_than_the_read_timeout_is_cut() {
    let (_tmp, run) = start(&["--http-read-timeout", "1s"]);
    let mut stream = TcpStream::connect(&run.addr).unwrap();
    let head = format!(
        "POST /v1/orgs/acme/enrollment/evaluate HTTP/1.1\r\nHost: idplane\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"user\":"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let sent = Instant::now();
    // The rest of the body never comes.
    let answer = read_until_closed(&mut stream, Duration::from_secs(8))
        .expect("the server gives up on the body and closes");
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "cut after {waited:?}, before the 1 s read timeout"
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body = body_json(&answer);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("paused longer than --http-read-timeout"),
        "{body}"
    );
}
