//! The SMTP client: pooled connections for delivery (one pool per
//! [`Endpoint`], idle connections dropped after a while), and single fresh
//! connections for verification and test emails (connect, TLS, AUTH, QUIT)
//! that say which step failed. Every connection to an org's server dials
//! only addresses the egress rule admitted (see [`crate::egress`]): the
//! host is resolved and filtered here, and lettre is handed those
//! addresses, never the name.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;

use super::endpoint::{Endpoint, redact, tls_name};
use super::failure::{Failure, Step, StepError, classify, describe};
use super::protocol::{
    ChainEnd, Chained, Refused, chainable, close, offers_pipelining, reply_text, transmit,
    transmit_chain, within,
};
use crate::egress::Egress;
use crate::email::retry::AttemptResult;
use crate::resources::TlsMode;

/// Settings shared by every connection.
#[derive(Clone)]
pub struct SmtpOptions {
    /// Each network step (connect, a command, a reply) at most.
    pub timeout: Duration,
    /// Idle connections kept per server.
    pub pool_size: u32,
    /// Certificate authorities trusted besides the public ones.
    pub extra_roots: Vec<Certificate>,
    /// Where connections to org servers may go, and the resolver.
    pub egress: Arc<Egress>,
}

/// Idle connections are not reused after this long (servers drop them).
const MAX_IDLE: Duration = Duration::from_secs(50);

/// Pooled connections by endpoint, and fresh connections.
pub struct SmtpClient {
    options: SmtpOptions,
    idle: Mutex<HashMap<Endpoint, Vec<(Connection, Instant)>>>,
}

/// An open connection and whether its server offers PIPELINING.
pub struct Connection {
    pub inner: AsyncSmtpConnection,
    pub pipelining: bool,
}

impl SmtpClient {
    pub fn new(options: SmtpOptions) -> Self {
        Self {
            options,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn tls_parameters(&self, host: &str) -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(host.to_string());
        for cert in &self.options.extra_roots {
            builder = builder.add_root_certificate(cert.clone());
        }
        builder
            .build_rustls()
            .map_err(|e| format!("cannot set up TLS: {e}"))
    }

    /// Drops the pooled connections of endpoints no longer in use.
    pub fn retain(&self, live: &HashSet<Endpoint>) {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }

    fn take_idle(&self, endpoint: &Endpoint) -> Option<Connection> {
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.get_mut(endpoint)?;
        list.retain(|(_, since)| since.elapsed() < MAX_IDLE);
        list.pop().map(|(c, _)| c)
    }

    fn give_back(&self, endpoint: &Endpoint, conn: Connection) {
        if conn.inner.has_broken() {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(endpoint.clone()).or_default();
        if list.len() < self.options.pool_size.max(1) as usize {
            list.push((conn, Instant::now()));
        }
    }

    /// Delivers one message over a pooled connection (a fresh one when none
    /// is idle, or when a reused one turns out to be closed).
    pub async fn deliver(&self, endpoint: &Endpoint, message: &lettre::Message) -> AttemptResult {
        for reuse in [true, false] {
            let pooled = if reuse {
                self.take_idle(endpoint)
            } else {
                None
            };
            let reused = pooled.is_some();
            if reuse && !reused {
                continue;
            }
            let mut conn = match pooled {
                Some(c) => c,
                None => match self.open(endpoint).await {
                    Ok((c, _)) => c,
                    Err(e) if e.permanent => return AttemptResult::Permanent(e.message),
                    Err(e) => return AttemptResult::Transient(e.message),
                },
            };
            let limit = self.options.timeout;
            match transmit(&mut conn.inner, message, conn.pipelining, limit).await {
                Ok(response) => {
                    self.give_back(endpoint, conn);
                    return AttemptResult::Delivered(reply_text(&response));
                }
                Err(e) => {
                    close(conn.inner, e.silent, limit);
                    if reused && e.stale_connection() {
                        continue;
                    }
                    return classify(&e.failure, endpoint);
                }
            }
        }
        AttemptResult::Transient("no connection".into())
    }

    /// Delivers messages to one endpoint, in order: the single-recipient
    /// ones chained on a pooled pipelining connection (see
    /// [`transmit_chain`]), the others, and those after a failure in a
    /// chain, one at a time through [`Self::deliver`]. Each outcome goes to
    /// `done` with the message's index as soon as it is known. Before each
    /// chain or message, `go_on` decides whether to start it: when it says
    /// no (a stop), the rest get no outcome and are not sent.
    pub async fn deliver_all(
        &self,
        endpoint: &Endpoint,
        messages: &[lettre::Message],
        go_on: &(dyn Fn() -> bool + Sync),
        done: &mut (dyn FnMut(usize, AttemptResult) + Send),
    ) {
        let mut next = 0;
        while next < messages.len() && go_on() {
            let rest = &messages[next..];
            let chained = self
                .deliver_chain(endpoint, rest, go_on, &mut |k, r| done(next + k, r))
                .await;
            if chained == 0 {
                done(next, self.deliver(endpoint, &rest[0]).await);
                next += 1;
            } else {
                next += chained;
            }
        }
    }

    /// The leading single-recipient messages chained on an idle connection
    /// that pipelines; how many got an outcome (up to and including the
    /// first failure). 0 when there are fewer than two such messages, no
    /// such connection, or the pooled connection turns out closed before
    /// its first reply (then [`Self::deliver`] tries again on a fresh one).
    async fn deliver_chain(
        &self,
        endpoint: &Endpoint,
        messages: &[lettre::Message],
        go_on: &(dyn Fn() -> bool + Sync),
        done: &mut (dyn FnMut(usize, AttemptResult) + Send),
    ) -> usize {
        if messages.len() < 2 {
            return 0;
        }
        let Some(mut conn) = self.take_idle(endpoint) else {
            return 0;
        };
        let chain: Vec<Chained> = if conn.pipelining {
            messages.iter().map_while(chainable).collect()
        } else {
            Vec::new()
        };
        if chain.len() < 2 {
            self.give_back(endpoint, conn);
            return 0;
        }
        // A pooled connection the server closed meanwhile fails at its
        // first reply: that first message is left to `deliver`.
        let mut stale = false;
        let limit = self.options.timeout;
        let mut outcome = |k: usize, r: Result<Response, Refused>| match r {
            Ok(response) => done(k, AttemptResult::Delivered(reply_text(&response))),
            Err(e) if k == 0 && e.stale_connection() => stale = true,
            Err(e) => done(k, classify(&e.failure, endpoint)),
        };
        let (count, end) =
            transmit_chain(&mut conn.inner, &chain, limit, go_on, &mut outcome).await;
        match end {
            ChainEnd::InStep => self.give_back(endpoint, conn),
            ChainEnd::Failed => close(conn.inner, false, limit),
            ChainEnd::Cut => close(conn.inner, true, limit),
        }
        if stale { 0 } else { count }
    }

    /// Opens a fresh connection: connect, TLS as configured, AUTH.
    async fn open(&self, endpoint: &Endpoint) -> Result<(Connection, String), StepError> {
        let fail = |step: Step, message: String, permanent: bool| StepError {
            step,
            message: redact(&message, endpoint),
            permanent,
        };
        // A command on the open connection failed: `HOST:PORT: WHAT failed: REASON`.
        let refused = |step: Step, what: &str, e: &Failure| {
            fail(
                step,
                format!(
                    "{}:{}: {what} failed: {}",
                    endpoint.host,
                    endpoint.port,
                    describe(e, endpoint)
                ),
                e.is_permanent(),
            )
        };
        let hello = ClientId::default();
        let implicit = match endpoint.tls {
            TlsMode::Implicit => Some(
                self.tls_parameters(&endpoint.host)
                    .map_err(|m| fail(Step::Tls, m, false))?,
            ),
            _ => None,
        };
        let limit = self.options.timeout;
        let addresses = self.addresses(endpoint, limit).await?;
        // The TCP connect, implicit TLS, the greeting and EHLO, together
        // (lettre bounds only the connect).
        let connect = AsyncSmtpConnection::connect_tokio1(
            addresses.as_slice(),
            Some(limit),
            &hello,
            implicit,
            None,
        );
        let mut conn = within(limit, connect).await.map_err(|e| {
            let step = match &e {
                Failure::Smtp(e) if e.is_tls() => Step::Tls,
                _ => Step::Connect,
            };
            fail(
                step,
                format!(
                    "cannot connect to {}:{}: {}",
                    endpoint.host,
                    endpoint.port,
                    describe(&e, endpoint)
                ),
                e.is_permanent(),
            )
        })?;
        let mut how = tls_name(endpoint.tls).to_string();
        if endpoint.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                close(conn, false, limit);
                return Err(fail(
                    Step::Tls,
                    format!(
                        "{}:{} does not offer STARTTLS",
                        endpoint.host, endpoint.port
                    ),
                    false,
                ));
            }
            let params = self
                .tls_parameters(&endpoint.host)
                .map_err(|m| fail(Step::Tls, m, false))?;
            if let Err(e) = within(limit, conn.starttls(params, &hello)).await {
                close(conn, e.is_silent(), limit);
                return Err(refused(Step::Tls, "STARTTLS", &e));
            }
            how = "STARTTLS".into();
        }
        // lettre keeps no record of PIPELINING: ask again (EHLO may be
        // repeated; before AUTH, which a repeated EHLO must not follow).
        let pipelining = match within(limit, conn.command(Ehlo::new(hello.clone()))).await {
            Ok(reply) => offers_pipelining(&reply),
            Err(e) => {
                close(conn, e.is_silent(), limit);
                return Err(refused(Step::Connect, "EHLO", &e));
            }
        };
        let mut summary = format!("connected to {}:{} ({how})", endpoint.host, endpoint.port);
        if let Some((user, secret)) = &endpoint.credentials {
            let creds = Credentials::new(user.clone(), secret.as_text());
            match within(
                limit,
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await
            {
                Ok(r) => {
                    summary.push_str(&format!(", authenticated as {user}: {}", reply_text(&r)));
                }
                Err(e) => {
                    close(conn, e.is_silent(), limit);
                    return Err(refused(
                        Step::Auth,
                        &format!("authentication as {user}"),
                        &e,
                    ));
                }
            }
        }
        Ok((
            Connection {
                inner: conn,
                pipelining,
            },
            summary,
        ))
    }

    /// The addresses to dial for `endpoint`: those of its host that the
    /// egress rule admits (all of them for the trusted default provider).
    /// A refusal is [`Step::Egress`]; a name that does not resolve, a
    /// connection failure as before.
    async fn addresses(
        &self,
        endpoint: &Endpoint,
        limit: Duration,
    ) -> Result<Vec<std::net::SocketAddr>, StepError> {
        let egress = &self.options.egress;
        let (host, port) = (endpoint.host.as_str(), endpoint.port);
        let found = if endpoint.trusted {
            tokio::time::timeout(limit, egress.lookup(host, port)).await
        } else {
            tokio::time::timeout(limit, egress.resolve(host, port)).await
        };
        let failed = |step: Step, why: String| StepError {
            step,
            message: format!("cannot connect to {host}:{port}: {why}"),
            permanent: false,
        };
        match found {
            Ok(Ok(addresses)) => Ok(addresses),
            Ok(Err(e)) if e.is_refusal() => Err(failed(Step::Egress, e.to_string())),
            Ok(Err(e)) => Err(failed(Step::Connect, e.to_string())),
            Err(_) => Err(failed(
                Step::Connect,
                format!("no address within {limit:?} (--smtp-timeout)"),
            )),
        }
    }

    /// Connects, negotiates TLS, authenticates and quits; the summary on
    /// success.
    pub async fn verify(&self, endpoint: &Endpoint) -> Result<String, StepError> {
        // Every step is bounded by the timeout: no overall cap, which
        // would cut off a slow server that answers each step in time.
        let (conn, summary) = self.open(endpoint).await?;
        close(conn.inner, false, self.options.timeout);
        Ok(summary)
    }

    /// Sends one message over a fresh connection (test emails); the
    /// server's reply to the message. Each step is bounded by the timeout;
    /// no overall cap, which could report as failed a message the server
    /// took (and a user would send again).
    pub async fn send_once(
        &self,
        endpoint: &Endpoint,
        message: &lettre::Message,
    ) -> Result<String, StepError> {
        let (mut conn, _) = self.open(endpoint).await?;
        let limit = self.options.timeout;
        let sent = transmit(&mut conn.inner, message, conn.pipelining, limit).await;
        let silent = sent.as_ref().is_err_and(|e| e.silent);
        close(conn.inner, silent, limit);
        match sent {
            Ok(r) => Ok(reply_text(&r)),
            Err(e) => Err(StepError {
                step: Step::Send,
                message: describe(&e.failure, endpoint),
                permanent: e.failure.is_permanent(),
            }),
        }
    }
}

/// Reads the certificate authorities of a PEM file.
pub fn load_roots(path: &std::path::Path) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cert = Certificate::from_pem(&pem)
        .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
    Ok(vec![cert])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        egress: crate::egress::EgressSettings,
    }

    /// The egress rule of these flags.
    fn egress(flags: &[&str]) -> Arc<Egress> {
        let parsed = Flags::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
            .unwrap()
            .egress;
        Arc::new(Egress::new(&parsed).unwrap())
    }

    /// A listener that greets like an SMTP server and counts connections.
    async fn greeter() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.write_all(b"220 internal-relay ESMTP\r\n").await;
            }
        });
        (port, count)
    }

    /// An org's server on loopback is refused before any connection, and
    /// the refusal names the rule and the address, not the server; the
    /// trusted default provider at the same address is dialled.
    #[tokio::test]
    async fn org_servers_go_through_the_egress_rule() {
        let (port, count) = greeter().await;
        let client = SmtpClient::new(SmtpOptions {
            timeout: Duration::from_millis(500),
            pool_size: 1,
            extra_roots: Vec::new(),
            egress: egress(&[]),
        });
        let mut endpoint = Endpoint {
            host: "2130706433".into(),
            port,
            tls: TlsMode::None,
            credentials: Some(("user".into(), Secret::new("hunter22"))),
            trusted: false,
        };
        let e = client.verify(&endpoint).await.unwrap_err();
        assert_eq!(e.step, Step::Egress);
        assert_eq!(
            e.message,
            format!(
                "cannot connect to 2130706433:{port}: egress refused: 127.0.0.1 (from 2130706433) is loopback, admitted only by --egress-allow"
            )
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
        endpoint.trusted = true;
        let e = client.verify(&endpoint).await.unwrap_err();
        assert_ne!(e.step, Step::Egress, "{e:?}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A server written here only for a failure no real server gives on
    /// demand: it accepts MAIL, refuses the recipient, and then never
    /// answers DATA (nor a QUIT). Lines it read go to `seen`.
    async fn refuses_then_goes_silent() -> (u16, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lines = seen.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let (read, mut write) = socket.into_split();
            let mut read = BufReader::new(read);
            write.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut line = String::new();
            while read.read_line(&mut line).await.unwrap_or(0) > 0 {
                let command = line.trim_end().to_ascii_uppercase();
                lines.lock().unwrap().push(command.clone());
                let reply: &[u8] = if command.starts_with("EHLO") {
                    b"250-fake\r\n250 PIPELINING\r\n"
                } else if command.starts_with("MAIL") {
                    b"250 ok\r\n"
                } else if command.starts_with("RCPT") {
                    b"550 5.1.1 no such user\r\n"
                } else {
                    b""
                };
                write.write_all(reply).await.unwrap();
                line.clear();
            }
        });
        (port, seen)
    }

    /// The refusal decides the outcome, the silence after it how the
    /// connection ends: without a QUIT, and without waiting for one.
    #[tokio::test]
    async fn a_refusal_then_silence_closes_without_quit() {
        let (port, seen) = refuses_then_goes_silent().await;
        let client = SmtpClient::new(SmtpOptions {
            timeout: Duration::from_millis(300),
            pool_size: 1,
            extra_roots: Vec::new(),
            egress: egress(&["--egress-allow", "127.0.0.0/8"]),
        });
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
            credentials: None,
            trusted: false,
        };
        let message = lettre::Message::builder()
            .from("a@example.com".parse().unwrap())
            .to("b@example.com".parse().unwrap())
            .subject("s")
            .body(String::from("t"))
            .unwrap();
        let result = client.deliver(&endpoint, &message).await;
        let AttemptResult::Permanent(reply) = &result else {
            panic!("{result:?}");
        };
        assert!(reply.starts_with("550 5.1.1"), "{reply}");
        // Long enough for a QUIT, were one sent, to arrive.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lines = seen.lock().unwrap().clone();
        assert!(!lines.iter().any(|l| l == "QUIT"), "{lines:?}");
    }
}
