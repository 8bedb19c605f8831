//! Where an SMTP server is and how to reach it: host, port, TLS mode and
//! the credentials to use there. Pooled connections are keyed by the whole
//! endpoint, so a new host or port never runs with credentials that were
//! not read with it. The password is a [`Secret`]: `Debug` shows the
//! server and the user, and [`redact`] takes the password out of any text
//! a server echoes.

use crate::resources::TlsMode;
use crate::secret::Secret;

/// How to reach an SMTP server, with the credentials to use there.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Username and password; `None` sends no AUTH.
    pub credentials: Option<(String, Secret)>,
    /// The installation's own default provider: aimed by idplane's flags,
    /// which also set the egress rule, not by an org, so not under it.
    pub trusted: bool,
}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.host.hash(state);
        self.port.hash(state);
        tls_name(self.tls).hash(state);
        self.credentials.hash(state);
        self.trusted.hash(state);
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} ({}), user {}",
            self.host,
            self.port,
            tls_name(self.tls),
            self.credentials.as_ref().map_or("<none>", |c| c.0.as_str())
        )
    }
}

pub fn tls_name(tls: TlsMode) -> &'static str {
    match tls {
        TlsMode::Starttls => "starttls",
        TlsMode::Implicit => "implicit TLS",
        TlsMode::None => "no TLS",
    }
}

/// Removes the endpoint's password from a text, should a server echo it.
pub fn redact(text: &str, endpoint: &Endpoint) -> String {
    match &endpoint.credentials {
        Some((_, secret)) if secret.len() >= 3 => text.replace(&secret.as_text(), "<redacted>"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_debug_hides_it() {
        let endpoint = Endpoint {
            host: "smtp.example.com".into(),
            port: 587,
            tls: TlsMode::Starttls,
            credentials: Some(("user".into(), Secret::new("hunter22"))),
            trusted: false,
        };
        assert_eq!(
            redact("535 bad password hunter22", &endpoint),
            "535 bad password <redacted>"
        );
        let debug = format!("{endpoint:?}");
        assert!(!debug.contains("hunter22"), "{debug}");
        assert!(debug.contains("smtp.example.com:587"));
    }

    #[test]
    fn endpoints_differ_by_password() {
        let a = Endpoint {
            host: "h".into(),
            port: 25,
            tls: TlsMode::None,
            credentials: Some(("u".into(), Secret::new("one"))),
            trusted: false,
        };
        let mut b = a.clone();
        b.credentials = Some(("u".into(), Secret::new("two")));
        assert_ne!(a, b);
    }
}
