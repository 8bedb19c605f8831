//! Hook URLs and SMTP hosts written as addresses (or `localhost`) that the
//! default egress rule refuses (see [`crate::egress`]). `idplane validate`
//! warns about them: an installation may allow them (`--egress-allow`,
//! `--egress-private allow`), and without that idplane will not connect.
//! A warning, not an error: the object stays valid, and the operator and
//! `run` do not report it (they know their installation's rule).
//! Names other than `localhost` are not looked up: validation is offline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Checked, Finding, Rule, Severity, Typed};
use crate::egress::{EgressError, EgressRule, is_localhost, literal, url_literal};

/// Warnings for every hook URL and provider host the default rule refuses.
pub fn check(checked: &[Checked]) -> Vec<Finding> {
    let rule = EgressRule::default();
    checked
        .iter()
        .enumerate()
        .filter_map(|(input, c)| {
            let (field, refusal) = match c.typed.as_ref()? {
                Typed::TelephonyHook(h) => ("spec.url", url_refusal(&rule, &h.spec.url)?),
                Typed::EmailProvider(p) => ("spec.host", host_refusal(&rule, &p.spec.host)?),
                _ => return None,
            };
            Some(Finding {
                input,
                object: c.key.clone(),
                field: field.into(),
                message: format!(
                    "{refusal} (the default egress rule: idplane does not connect there unless the installation allows it)"
                ),
                severity: Severity::Warning,
                rule: Rule::Egress,
            })
        })
        .collect()
}

/// The refusal of a URL's host, read as the HTTP client reads it (so
/// `http://2130706433/` is 127.0.0.1).
pub fn url_refusal(rule: &EgressRule, url: &str) -> Option<EgressError> {
    let parsed = reqwest::Url::parse(url).ok()?;
    match url_literal(&parsed) {
        Some(ip) => refusal(rule, None, ip),
        None => localhost_refusal(rule, parsed.host_str()?),
    }
}

/// The refusal of an SMTP host, read as the connection reads it.
pub fn host_refusal(rule: &EgressRule, host: &str) -> Option<EgressError> {
    match literal(host) {
        Some(ip) => refusal(rule, (ip.to_string() != host).then_some(host), ip),
        None => localhost_refusal(rule, host),
    }
}

fn refusal(rule: &EgressRule, name: Option<&str>, ip: IpAddr) -> Option<EgressError> {
    rule.check_named(name, ip).err()
}

/// `localhost` names are loopback whatever DNS says (RFC 6761).
fn localhost_refusal(rule: &EgressRule, host: &str) -> Option<EgressError> {
    if !is_localhost(host) {
        return None;
    }
    [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
    .into_iter()
    .find_map(|ip| refusal(rule, Some(host), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts_the_default_refuses() {
        let rule = EgressRule::default();
        for url in [
            "http://127.0.0.1:8089/x",
            "http://localhost/x",
            "http://[::1]/x",
            "http://0.0.0.0/x",
            "http://2130706433/x",
            "http://0x7f000001/x",
            "http://127.1/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://169.254.169.254/latest/meta-data",
            "https://10.0.0.7/hook",
        ] {
            assert!(url_refusal(&rule, url).is_some(), "{url}");
        }
        for url in [
            "https://hooks.example.com/x",
            "https://8.8.8.8/",
            "nonsense",
        ] {
            assert!(url_refusal(&rule, url).is_none(), "{url}");
        }
        let e = url_refusal(&rule, "http://0x7f000001/x").unwrap();
        assert_eq!(
            e.to_string(),
            "egress refused: 127.0.0.1 is loopback, admitted only by --egress-allow"
        );
        for host in ["127.1", "::1", "localhost", "2130706433", "169.254.169.254"] {
            assert!(host_refusal(&rule, host).is_some(), "{host}");
        }
        assert_eq!(
            host_refusal(&rule, "2130706433").unwrap().to_string(),
            "egress refused: 127.0.0.1 (from 2130706433) is loopback, admitted only by --egress-allow"
        );
        assert!(host_refusal(&rule, "smtp.example.com").is_none());
    }
}
