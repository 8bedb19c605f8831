//! The webhook's own CA and serving certificate, without the apiserver:
//! what a Secret holds, read back ([`Held`]); the one decision of what to
//! do next ([`decide`], pure); and the issuing of new certificates
//! ([`create`], [`renew_ca`], [`renew_serving`]). `self_managed.rs` reads
//! and writes the Secret and the webhook configuration.
//!
//! The rotation never breaks a handshake: a new CA first joins the bundle
//! beside the old one, and the serving certificate moves to it only once
//! the webhook configuration has trusted it for a while ([`Observed::trusted_since`]).
//! The old CA leaves the bundle once it has expired.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The Secret's keys: cert-manager's, plus the CA's private key, which
/// idplane needs to sign the next serving certificate.
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Errors issuing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// rcgen's messages name what failed, never a key.
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("the Secret's CA cannot sign (its certificate or ca.key is missing or unreadable)")]
    NoSigningCa,
    #[error("{0:?} is neither a DNS name nor an IP address")]
    Name(String),
}

/// The Secret's four PEM texts. Its `Debug` leaves the keys out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Material {
    /// The bundle of CAs that clients trust: the signing CA first, then
    /// older CAs not yet expired.
    pub ca_crt: String,
    pub ca_key: String,
    pub tls_crt: String,
    pub tls_key: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("ca_crt", &self.ca_crt)
            .field("ca_key", &"<redacted>")
            .field("tls_crt", &self.tls_crt)
            .field("tls_key", &"<redacted>")
            .finish()
    }
}

/// How long new certificates are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub ca: Duration,
    pub serving: Duration,
}

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Span {
    fn contains(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// From when less than a third of the validity is left.
    pub fn renew_at(&self) -> OffsetDateTime {
        self.not_after - (self.not_after - self.not_before) / 3
    }

    fn of(cert: &X509Certificate<'_>) -> Span {
        Span {
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        }
    }
}

/// The names a serving certificate is for, as its SANs read: DNS names,
/// and IP addresses in their canonical text.
pub type Names = BTreeSet<String>;

/// The DNS names of a Service: NAME, NAME.NS, NAME.NS.svc and
/// NAME.NS.svc.cluster.local.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// `names` as SANs (an IP address where one parses, else a DNS name), and
/// in their canonical text.
pub fn names(names: &[String]) -> Result<(Vec<SanType>, Names), CertificateError> {
    let mut sans = Vec::new();
    let mut set = Names::new();
    for name in names {
        let name = name.trim().trim_end_matches('.');
        match name.parse::<IpAddr>() {
            Ok(ip) => {
                sans.push(SanType::IpAddress(ip));
                set.insert(ip.to_string());
            }
            Err(_) => {
                let dns = name.to_ascii_lowercase();
                let valid = !dns.is_empty()
                    && dns.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                    });
                if !valid {
                    return Err(CertificateError::Name(name.to_string()));
                }
                let san = dns
                    .clone()
                    .try_into()
                    .map_err(|_| CertificateError::Name(dns.clone()))?;
                sans.push(SanType::DnsName(san));
                set.insert(dns);
            }
        }
    }
    Ok((sans, set))
}

/// One CA of the bundle.
#[derive(Clone, Debug)]
struct Anchor {
    der: Vec<u8>,
    span: Span,
}

/// The serving certificate as read back.
#[derive(Clone, Debug)]
struct ServingCert {
    /// The serial number in hex, to tell certificates apart in logs.
    serial: String,
    span: Span,
    names: Names,
    issued_by_ca: bool,
}

/// What a Secret holds, read back and checked.
#[derive(Clone, Debug)]
pub struct Held {
    material: Material,
    bundle: Vec<Anchor>,
    /// The first CA of the bundle, when it is a CA and ca.key is its key.
    signing_ca: Option<Span>,
    /// tls.crt, when it parses and tls.key is its key.
    serving: Option<ServingCert>,
}

impl Held {
    /// Reads the Secret's PEM texts; what does not parse or does not fit
    /// together counts as absent.
    pub fn parse(material: Material) -> Held {
        let bundle: Vec<Anchor> = CertificateDer::pem_slice_iter(material.ca_crt.as_bytes())
            .map_while(Result::ok)
            .filter_map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
                let span = Span::of(&cert);
                Some(Anchor {
                    der: der.to_vec(),
                    span,
                })
            })
            .collect();
        let first = bundle
            .first()
            .and_then(|a| x509_parser::parse_x509_certificate(&a.der).ok())
            .map(|(_, cert)| cert);
        let signing_ca = first
            .as_ref()
            .filter(|ca| ca.is_ca() && key_fits(&material.ca_key, ca))
            .map(Span::of);
        let serving = serving_cert(&material, first.as_ref().filter(|_| signing_ca.is_some()));
        Held {
            material,
            bundle,
            signing_ca,
            serving,
        }
    }

    pub fn material(&self) -> &Material {
        &self.material
    }

    /// The signing CA's certificate (DER), when there is one.
    pub fn signing_ca_der(&self) -> Option<&[u8]> {
        self.signing_ca
            .and(self.bundle.first())
            .map(|a| a.der.as_slice())
    }

    /// The serving certificate's serial number (hex), when it is usable.
    pub fn serving_serial(&self) -> Option<&str> {
        self.serving.as_ref().map(|s| s.serial.as_str())
    }

    /// What [`decide`] needs to know, for a certificate wanted for `names`.
    pub fn summary(&self, names: &Names) -> Summary {
        Summary {
            ca: self.signing_ca,
            serving: self.serving.as_ref().map(|s| Serving {
                span: s.span,
                names_match: &s.names == names,
                issued_by_ca: s.issued_by_ca,
            }),
        }
    }

    /// The bundle's CAs that have not expired, in order, as PEM.
    fn unexpired_bundle(&self, now: OffsetDateTime) -> String {
        self.bundle
            .iter()
            .filter(|a| now < a.span.not_after)
            .map(|a| pem_certificate(&a.der))
            .collect()
    }
}

/// Whether `key_pem` is the private key of `cert`.
fn key_fits(key_pem: &str, cert: &X509Certificate<'_>) -> bool {
    KeyPair::from_pem(key_pem)
        .is_ok_and(|key| key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref())
}

/// tls.crt read back, when it parses and tls.key is its key; whether
/// `ca` signed it.
fn serving_cert(material: &Material, ca: Option<&X509Certificate<'_>>) -> Option<ServingCert> {
    super::tls::certified_key(material.tls_crt.as_bytes(), material.tls_key.as_bytes()).ok()?;
    let der = CertificateDer::pem_slice_iter(material.tls_crt.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let mut names = Names::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes).map(IpAddr::from).ok(),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let issued_by_ca = ca.is_some_and(|ca| cert.verify_signature(Some(ca.public_key())).is_ok());
    Some(ServingCert {
        serial: cert.raw_serial_as_string().replace(':', ""),
        span: Span::of(&cert),
        names,
        issued_by_ca,
    })
}

/// A certificate (DER) as PEM.
fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What the decision knows of a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The signing CA's validity, when the CA can sign.
    pub ca: Option<Span>,
    /// The serving certificate, when it is usable with its key.
    pub serving: Option<Serving>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    pub span: Span,
    /// Its names are exactly the ones wanted.
    pub names_match: bool,
    /// The signing CA signed it (else an older CA did).
    pub issued_by_ca: bool,
}

/// Where the webhook configuration's `caBundle`s stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bundle {
    /// No configuration to write to (`--webhook-configuration` not given).
    NotConfigured,
    /// The configuration does not exist (yet).
    Missing,
    /// Every webhook carries the Secret's ca.crt.
    Current,
    /// Some webhook carries something else.
    Stale,
}

/// What [`decide`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// None: there is no Secret.
    pub secret: Option<Summary>,
    pub bundle: Bundle,
    /// Since when the clients have trusted the signing CA, as far as this
    /// replica saw: the configuration's bundle has held it (or, with no
    /// configuration, the Secret has); None while they do not.
    pub trusted_since: Option<OffsetDateTime>,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new CA and serving certificate, replacing whatever the Secret held.
    Create,
    /// A new CA first in the bundle; the serving certificate stays until
    /// the new CA is trusted.
    RenewCa,
    /// A new serving certificate from the signing CA.
    RenewServing,
    /// Write the Secret's ca.crt into every webhook of the configuration.
    PatchBundle,
    /// Nothing until a change, or `until` at the latest.
    Wait { until: OffsetDateTime },
}

/// The decision and why (for the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: &'static str,
}

const fn decision(action: Action, reason: &'static str) -> Decision {
    Decision { action, reason }
}

/// What to do now. `settle`: how long the clients must have trusted a new
/// CA before the serving certificate moves to it (the apiservers pick up
/// a changed webhook configuration within moments, each on its own).
pub fn decide(now: OffsetDateTime, observed: &Observed, settle: Duration) -> Decision {
    let Some(secret) = observed.secret else {
        return decision(Action::Create, "no Secret yet");
    };
    let serving = secret.serving.filter(|s| s.span.contains(now));
    let Some(ca) = secret.ca else {
        return match serving {
            Some(_) => decision(
                Action::RenewCa,
                "the CA cannot sign (its certificate or key is missing or unreadable)",
            ),
            None => decision(
                Action::Create,
                "neither the CA nor the serving certificate is usable",
            ),
        };
    };
    if now >= ca.renew_at() {
        return decision(
            Action::RenewCa,
            "the CA has less than a third of its validity left",
        );
    }
    if observed.bundle == Bundle::Stale {
        return decision(
            Action::PatchBundle,
            "the webhook configuration's caBundle differs from the Secret's ca.crt",
        );
    }
    let Some(serving) = serving else {
        return decision(
            Action::RenewServing,
            "the serving certificate is missing, unreadable, expired or not its key's",
        );
    };
    if !serving.issued_by_ca {
        let ready = observed.trusted_since.map(|since| since + settle);
        return match ready {
            Some(ready) if now >= ready => decision(
                Action::RenewServing,
                "the new CA is trusted: the serving certificate moves to it",
            ),
            _ => decision(
                Action::Wait {
                    until: ready.unwrap_or(serving.span.not_after).min(ca.renew_at()),
                },
                "waiting until the new CA is trusted before the serving certificate moves to it",
            ),
        };
    }
    if !serving.names_match {
        return decision(
            Action::RenewServing,
            "the serving certificate's names are not the ones wanted",
        );
    }
    if now >= serving.span.renew_at() {
        return decision(
            Action::RenewServing,
            "the serving certificate has less than a third of its validity left",
        );
    }
    decision(
        Action::Wait {
            until: serving.span.renew_at().min(ca.renew_at()),
        },
        "certificates current",
    )
}

/// How far back a new certificate's validity starts, so that a client
/// whose clock is a little behind already accepts it: a tenth of the
/// validity, at most five minutes.
fn backdate(validity: Duration) -> Duration {
    (validity / 10).min(Duration::from_secs(300))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants it.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA: its certificate and key as PEM.
fn issue_ca(now: OffsetDateTime, validity: Duration) -> Result<(String, String), CertificateError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    // The issue time in the name tells the CAs of a bundle apart.
    name.push(
        DnType::CommonName,
        format!("idplane-webhook-ca@{}", now.unix_timestamp()),
    );
    name.push(DnType::OrganizationName, "idplane");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = now - backdate(validity);
    params.not_after = now + validity;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new serving certificate for `names`, signed by the CA `ca_crt`
/// (PEM, first block) with `ca_key`, ending no later than the CA.
fn issue_serving(
    now: OffsetDateTime,
    validity: Duration,
    names: &[String],
    ca_crt: &str,
    ca_key: &str,
    ca_not_after: OffsetDateTime,
) -> Result<(String, String), CertificateError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::from_ca_cert_pem(ca_crt, ca_key)?;
    let (sans, _) = self::names(names)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        names.first().map_or("idplane-webhook", String::as_str),
    );
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = now - backdate(validity);
    params.not_after = (now + validity).min(ca_not_after);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new CA and a serving certificate for `names` signed by it.
pub fn create(
    now: OffsetDateTime,
    validity: Validity,
    names: &[String],
) -> Result<Material, CertificateError> {
    let (ca_crt, ca_key) = issue_ca(now, validity.ca)?;
    let ca_not_after = now + validity.ca;
    let (tls_crt, tls_key) =
        issue_serving(now, validity.serving, names, &ca_crt, &ca_key, ca_not_after)?;
    Ok(Material {
        ca_crt,
        ca_key,
        tls_crt,
        tls_key,
    })
}

/// A new CA first in the bundle, the CAs of `held` not yet expired after
/// it; the serving certificate unchanged.
pub fn renew_ca(
    held: &Held,
    now: OffsetDateTime,
    validity: Validity,
) -> Result<Material, CertificateError> {
    let (ca_crt, ca_key) = issue_ca(now, validity.ca)?;
    let old = held.material();
    Ok(Material {
        ca_crt: ca_crt + &held.unexpired_bundle(now),
        ca_key,
        tls_crt: old.tls_crt.clone(),
        tls_key: old.tls_key.clone(),
    })
}

/// A new serving certificate for `names` from the signing CA of `held`;
/// the bundle without its expired CAs.
pub fn renew_serving(
    held: &Held,
    now: OffsetDateTime,
    validity: Validity,
    names: &[String],
) -> Result<Material, CertificateError> {
    let (Some(ca), Some(ca_der)) = (held.signing_ca, held.signing_ca_der()) else {
        return Err(CertificateError::NoSigningCa);
    };
    let old = held.material();
    let (tls_crt, tls_key) = issue_serving(
        now,
        validity.serving,
        names,
        &pem_certificate(ca_der),
        &old.ca_key,
        ca.not_after,
    )?;
    Ok(Material {
        ca_crt: held.unexpired_bundle(now),
        ca_key: old.ca_key.clone(),
        tls_crt,
        tls_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(days: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(days)
    }

    /// Valid from day `from` to day `to`.
    fn span(from: i64, to: i64) -> Span {
        Span {
            not_before: at(from),
            not_after: at(to),
        }
    }

    fn serving(from: i64, to: i64) -> Serving {
        Serving {
            span: span(from, to),
            names_match: true,
            issued_by_ca: true,
        }
    }

    /// A CA valid for days 0 to 300 and a serving certificate for days 0
    /// to 90, both current and trusted since day 0.
    fn healthy() -> Observed {
        Observed {
            secret: Some(Summary {
                ca: Some(span(0, 300)),
                serving: Some(serving(0, 90)),
            }),
            bundle: Bundle::Current,
            trusted_since: Some(at(0)),
        }
    }

    /// [`healthy`] with another serving certificate (None: unusable).
    fn serving_is(serving: Option<Serving>) -> Observed {
        let mut o = healthy();
        o.secret.as_mut().unwrap().serving = serving;
        o
    }

    /// [`healthy`] with no usable CA.
    fn ca_lost() -> Observed {
        let mut o = healthy();
        o.secret.as_mut().unwrap().ca = None;
        o
    }

    /// A serving certificate signed by the CA before the current one,
    /// the current one trusted since `day` (None: not trusted).
    fn from_old_ca(trusted_since: Option<i64>) -> Observed {
        let mut old = serving(0, 90);
        old.issued_by_ca = false;
        let mut o = serving_is(Some(old));
        o.trusted_since = trusted_since.map(at);
        o
    }

    fn bundle(bundle: Bundle, trusted_since: Option<i64>) -> Observed {
        let mut o = healthy();
        o.bundle = bundle;
        o.trusted_since = trusted_since.map(at);
        o
    }

    #[test]
    fn decisions() {
        let settle = Duration::from_secs(30);
        let renamed = Serving {
            names_match: false,
            ..serving(0, 90)
        };
        let nothing = Observed {
            secret: Some(Summary {
                ca: None,
                serving: None,
            }),
            ..healthy()
        };
        let no_secret = Observed {
            secret: None,
            ..healthy()
        };
        let cases: Vec<(&str, i64, Observed, Action)> = vec![
            ("no Secret", 10, no_secret, Action::Create),
            ("nothing usable", 10, nothing, Action::Create),
            (
                "the CA key is lost but the serving certificate still serves",
                10,
                ca_lost(),
                Action::RenewCa,
            ),
            (
                "the CA key is lost and the serving certificate expired",
                95,
                ca_lost(),
                Action::Create,
            ),
            (
                "healthy: wait for the serving certificate's renewal (day 60)",
                10,
                healthy(),
                Action::Wait { until: at(60) },
            ),
            (
                "a third of the serving validity left",
                60,
                healthy(),
                Action::RenewServing,
            ),
            (
                "serving certificate expired",
                91,
                healthy(),
                Action::RenewServing,
            ),
            (
                "serving certificate not yet valid here",
                10,
                serving_is(Some(serving(20, 110))),
                Action::RenewServing,
            ),
            (
                "serving certificate unusable",
                10,
                serving_is(None),
                Action::RenewServing,
            ),
            (
                "names changed",
                10,
                serving_is(Some(renamed)),
                Action::RenewServing,
            ),
            (
                "a third of the CA validity left, before the serving one",
                200,
                serving_is(Some(serving(190, 280))),
                Action::RenewCa,
            ),
            ("the CA expired", 400, healthy(), Action::RenewCa),
            (
                "the configuration's bundle is stale",
                10,
                bundle(Bundle::Stale, Some(0)),
                Action::PatchBundle,
            ),
            (
                "CA renewal comes before the bundle",
                250,
                bundle(Bundle::Stale, Some(0)),
                Action::RenewCa,
            ),
            (
                "a configuration that does not exist is not waited for when all is current",
                10,
                bundle(Bundle::Missing, None),
                Action::Wait { until: at(60) },
            ),
            (
                "new CA not yet trusted: the old serving certificate stays until it expires",
                10,
                from_old_ca(None),
                Action::Wait { until: at(90) },
            ),
            (
                "new CA trusted, but not for long enough",
                10,
                from_old_ca(Some(10)),
                Action::Wait {
                    until: at(10) + settle,
                },
            ),
            (
                "new CA trusted for long enough",
                11,
                from_old_ca(Some(10)),
                Action::RenewServing,
            ),
            (
                "new CA never trusted: the expired serving certificate is renewed anyway",
                91,
                from_old_ca(None),
                Action::RenewServing,
            ),
        ];
        for (name, day, observed, want) in cases {
            assert_eq!(decide(at(day), &observed, settle).action, want, "{name}");
        }
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_validity() {
        assert_eq!(span(0, 90).renew_at(), at(60));
        assert_eq!(span(-3, 87).renew_at(), at(57));
    }

    fn validity() -> Validity {
        Validity {
            ca: 300 * DAY,
            serving: 90 * DAY,
        }
    }

    fn wanted() -> Vec<String> {
        let mut names = service_names("idplane", "ops");
        names.push("127.0.0.1".into());
        names
    }

    fn summary_at(material: &Material, names: &[String]) -> Summary {
        let (_, set) = self::names(names).unwrap();
        Held::parse(material.clone()).summary(&set)
    }

    #[test]
    fn a_created_pair_reads_back_current_for_its_names() {
        let now = OffsetDateTime::now_utc();
        let material = create(now, validity(), &wanted()).unwrap();
        let summary = summary_at(&material, &wanted());
        let ca = summary.ca.expect("the CA signs");
        assert_eq!(
            ca.not_after,
            (now + 300 * DAY).replace_nanosecond(0).unwrap()
        );
        let serving = summary.serving.expect("the serving certificate");
        assert!(serving.names_match && serving.issued_by_ca, "{serving:?}");
        assert_eq!(
            serving.span.not_before,
            (now - Duration::from_secs(300))
                .replace_nanosecond(0)
                .unwrap(),
            "backdated five minutes"
        );
        let observed = Observed {
            secret: Some(summary),
            bundle: Bundle::Current,
            trusted_since: Some(now),
        };
        assert!(matches!(
            decide(now, &observed, Duration::ZERO).action,
            Action::Wait { .. }
        ));
        // Other names: the certificate is not theirs.
        let other = summary_at(&material, &service_names("idplane", "elsewhere"));
        assert!(!other.serving.unwrap().names_match);
        // The pair serves: rustls takes it.
        super::super::tls::certified_key(material.tls_crt.as_bytes(), material.tls_key.as_bytes())
            .unwrap();
    }

    #[test]
    fn keys_that_do_not_fit_count_as_absent() {
        let now = OffsetDateTime::now_utc();
        let a = create(now, validity(), &wanted()).unwrap();
        let b = create(now, validity(), &wanted()).unwrap();
        let mut crossed = a.clone();
        crossed.ca_key = b.ca_key.clone();
        let summary = summary_at(&crossed, &wanted());
        assert_eq!(summary.ca, None, "ca.key is another CA's");
        crossed = a.clone();
        crossed.tls_key = b.tls_key.clone();
        assert_eq!(summary_at(&crossed, &wanted()).serving, None);
        crossed = a.clone();
        crossed.tls_crt = b.tls_crt.clone();
        crossed.tls_key = b.tls_key.clone();
        let serving = summary_at(&crossed, &wanted()).serving.unwrap();
        assert!(!serving.issued_by_ca, "another CA signed it");
        assert_eq!(
            summary_at(&Material::default(), &wanted()),
            Summary {
                ca: None,
                serving: None
            }
        );
    }

    #[test]
    fn a_ca_renewal_keeps_the_old_ca_and_the_serving_certificate_until_the_move() {
        let start = OffsetDateTime::now_utc() - 200 * DAY;
        let first = create(start, validity(), &wanted()).unwrap();
        let held = Held::parse(first.clone());
        // At two thirds of the CA's validity.
        let now = OffsetDateTime::now_utc();
        let renewed = renew_ca(&held, now, validity()).unwrap();
        assert_eq!(renewed.tls_crt, first.tls_crt);
        assert!(
            renewed.ca_crt.ends_with(&first.ca_crt),
            "the old CA stays in the bundle, after the new one"
        );
        assert_eq!(renewed.ca_crt.matches("BEGIN CERTIFICATE").count(), 2);
        let summary = summary_at(&renewed, &wanted());
        assert!(summary.ca.is_some());
        assert!(!summary.serving.unwrap().issued_by_ca);
        // The move: a serving certificate from the new CA; both CAs stay
        // until the old one expires.
        let moved =
            renew_serving(&Held::parse(renewed.clone()), now, validity(), &wanted()).unwrap();
        assert_eq!(moved.ca_crt, renewed.ca_crt);
        assert!(summary_at(&moved, &wanted()).serving.unwrap().issued_by_ca);
        // Once the old CA has expired it leaves the bundle.
        let later = start + 301 * DAY;
        let pruned = renew_serving(&Held::parse(moved), later, validity(), &wanted()).unwrap();
        assert_eq!(pruned.ca_crt.matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn a_serving_certificate_ends_with_its_ca() {
        let now = OffsetDateTime::now_utc();
        let short = Validity {
            ca: 30 * DAY,
            serving: 90 * DAY,
        };
        let material = create(now, short, &wanted()).unwrap();
        let summary = summary_at(&material, &wanted());
        assert_eq!(
            summary.serving.unwrap().span.not_after,
            summary.ca.unwrap().not_after
        );
    }

    #[test]
    fn names_are_dns_names_or_ip_addresses() {
        let (_, set) =
            names(&["Idplane.ops.svc.".into(), "::1".into(), "10.0.0.1".into()]).unwrap();
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            ["10.0.0.1", "::1", "idplane.ops.svc"]
        );
        for bad in ["", "a..b", "under_score", "sp ace"] {
            assert!(names(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_leaves_the_keys_out() {
        let material = create(OffsetDateTime::now_utc(), validity(), &wanted()).unwrap();
        let text = format!("{material:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("BEGIN CERTIFICATE"));
    }
}
