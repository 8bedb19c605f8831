//! The egress rule: which addresses idplane may connect to where
//! configuration chooses the destination (hook calls and previews, SMTP
//! verification, delivery and test email). An org is a namespace, and
//! whoever may create a TelephonyHook or an EmailProvider in one aims
//! idplane's connections, secrets attached: without a rule that reaches
//! idplane's own loopback, the cloud metadata service and the cluster.
//!
//! The rule is checked on the address actually dialled: names are
//! resolved here, once, the resolved addresses are filtered, and only the
//! admitted ones are handed to the connector (a check followed by a second
//! resolution could be answered differently). Decisions are pure
//! ([`classify`], [`EgressRule::check`], [`admit`]); resolving is at the
//! edge ([`Egress::resolve`]).
//!
//! A leaf module: it knows addresses, names and URLs, not idplane's
//! resources.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// What kind of address an IP is, for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// 127.0.0.0/8, ::1: idplane itself and its sidecars.
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// Cloud metadata services (169.254.169.254, fd00:ec2::254,
    /// 100.100.100.200...): they hand out the node's credentials.
    Metadata,
    /// 0.0.0.0/8, ::: "this host" on Linux.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 240.0.0.0/4 (the broadcast address included), 100::/64.
    Reserved,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (shared), 198.18/15
    /// (benchmarking, used inside networks), fc00::/7, fec0::/10: where a
    /// cluster's pods, Services and nodes live.
    Private,
    Public,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
            Self::Metadata => "cloud metadata",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Reserved => "reserved",
            Self::Private => "private",
            Self::Public => "public",
        }
    }
}

/// Metadata endpoints of the clouds (AWS, GCP, Azure, OpenStack, Oracle:
/// 169.254.169.254; AWS ECS and EKS: 169.254.170.2 and .23; Alibaba:
/// 100.100.100.200; AWS over IPv6: fd00:ec2::254 and ::23).
const METADATA_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(169, 254, 170, 23),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23),
];

/// The IPv4 address an IPv6 one stands for, where the socket would reach
/// it: mapped (`::ffff:127.0.0.1`), IPv4-compatible (`::127.0.0.1`,
/// deprecated) and NAT64 (`64:ff9b::/96`). Classified as that address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::from(u128::from(v6) as u32);
    let compatible = s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1);
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 {
        IpAddr::V4(low)
    } else {
        ip
    }
}

/// The class of an address (after [`canonical`]).
pub fn classify(ip: IpAddr) -> Class {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Class {
    if METADATA_V4.contains(&ip) {
        return Class::Metadata;
    }
    match ip.octets() {
        [0, ..] => Class::Unspecified,
        [127, ..] => Class::Loopback,
        [169, 254, ..] => Class::LinkLocal,
        [224..=239, ..] => Class::Multicast,
        [240..=255, ..] => Class::Reserved,
        [10, ..]
        | [172, 16..=31, ..]
        | [192, 168, ..]
        | [100, 64..=127, ..]
        | [198, 18..=19, ..] => Class::Private,
        _ => Class::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Class {
    let first = ip.segments()[0];
    if METADATA_V6.contains(&ip) {
        Class::Metadata
    } else if ip.is_unspecified() {
        Class::Unspecified
    } else if ip.is_loopback() {
        Class::Loopback
    } else if first & 0xff00 == 0xff00 {
        Class::Multicast
    } else if first & 0xffc0 == 0xfe80 {
        Class::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        Class::Private
    } else if ip.segments()[..4] == [0x100, 0, 0, 0] {
        Class::Reserved
    } else {
        Class::Public
    }
}

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is one
/// address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn max(addr: IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
            }
            IpAddr::V6(a) => {
                let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
            }
        }
    }

    /// Whether `ip` (after [`canonical`]) is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && Self::mask(ip, self.prefix) == self.addr
    }

    /// The range holds one address.
    pub fn is_single(&self) -> bool {
        self.prefix == Self::max(self.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not an address range such as 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let addr = canonical(addr);
        let max = Self::max(addr);
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        let network = Self::mask(addr, prefix);
        if network != addr {
            return Err(format!(
                "{text} has bits set past its /{prefix}; the range is {network}/{prefix}"
            ));
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What `--egress-private` does with private addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PrivatePolicy {
    Allow,
    #[default]
    Deny,
}

/// The installation's rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    pub private: PrivatePolicy,
    /// Admitted whatever their class (cloud metadata only when a range
    /// names the address itself).
    pub allow: Vec<Cidr>,
    /// Refused whatever their class; wins over `allow`.
    pub deny: Vec<Cidr>,
}

/// Why the rule refuses an address: the rule's name in a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// A class refused unless `--egress-allow` admits the address.
    Class(Class),
    /// Private, with `--egress-private deny`.
    Private,
    /// In an `--egress-deny` range.
    Denied(Cidr),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Class(Class::Metadata) => f.write_str(
                "cloud metadata, admitted only by an --egress-allow naming the address itself",
            ),
            Self::Class(c) => write!(f, "{}, admitted only by --egress-allow", c.name()),
            Self::Private => f.write_str("private, refused by --egress-private deny"),
            Self::Denied(range) => write!(f, "in --egress-deny {range}"),
        }
    }
}

impl EgressRule {
    /// [`Self::check`] as the error a caller reports: the address, the name
    /// it came from (if any) and why it is refused.
    pub fn check_named(&self, name: Option<&str>, addr: IpAddr) -> Result<(), EgressError> {
        self.check(addr).map_err(|why| EgressError::Refused {
            name: name.map(str::to_string),
            addr,
            why,
        })
    }

    /// The rule's decision on one address: `--egress-deny` first, then
    /// `--egress-allow`, then the class (public admitted, private as
    /// `--egress-private` says, every other class refused).
    pub fn check(&self, ip: IpAddr) -> Result<(), Why> {
        if let Some(range) = self.deny.iter().find(|r| r.contains(ip)) {
            return Err(Why::Denied(*range));
        }
        let class = classify(ip);
        let allowed = self
            .allow
            .iter()
            .any(|r| r.contains(ip) && (class != Class::Metadata || r.is_single()));
        match class {
            _ if allowed => Ok(()),
            Class::Public => Ok(()),
            Class::Private if self.private == PrivatePolicy::Allow => Ok(()),
            Class::Private => Err(Why::Private),
            other => Err(Why::Class(other)),
        }
    }
}

/// Why no connection is made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    /// The rule refuses the address (the first refused one of a name).
    #[error("egress refused: {addr}{} is {why}", shown_name(.name))]
    Refused {
        /// The name that resolved to `addr` (`None` for a literal).
        name: Option<String>,
        addr: IpAddr,
        why: Why,
    },
    #[error("cannot resolve {host}: {message}")]
    Lookup { host: String, message: String },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("cannot set up the egress resolver: {0}")]
    Setup(String),
}

fn shown_name(name: &Option<String>) -> String {
    name.as_ref()
        .map(|n| format!(" (from {n})"))
        .unwrap_or_default()
}

impl EgressError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }
}

/// `host` as an address when it is written as one: IPv6 (bare or in
/// brackets), or IPv4 in any form a URL parser or `inet_aton` accepts
/// (`127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1`), as the address it
/// means.
pub fn literal(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    // Anything else that is an IPv4 address in disguise: the WHATWG URL
    // host parser reads these forms (as reqwest does, and as getaddrinfo
    // does through inet_aton).
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        return None;
    }
    url_literal(&reqwest::Url::parse(&format!("http://{host}/")).ok()?)
}

/// The host of a URL when it is an address (such hosts never reach a
/// resolver: the connector dials them as they are).
pub fn url_literal(url: &reqwest::Url) -> Option<IpAddr> {
    // The parser has turned every address form into its canonical text
    // (a name never reads as an address), IPv6 in brackets.
    let host = url.host_str()?;
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// Names that are loopback by definition (RFC 6761: `localhost` and
/// `*.localhost`), whatever a DNS server says.
pub fn is_localhost(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// The addresses of `host` that `rule` admits, in order. None admitted:
/// the refusal of the first one.
pub fn admit(
    rule: &EgressRule,
    host: &str,
    addrs: Vec<SocketAddr>,
) -> Result<Vec<SocketAddr>, EgressError> {
    let mut refused = None;
    let admitted: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match rule.check(a.ip()) {
            Ok(()) => true,
            Err(why) => {
                refused.get_or_insert((a.ip(), why));
                false
            }
        })
        .collect();
    if !admitted.is_empty() {
        return Ok(admitted);
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match refused {
        Some((addr, why)) => Err(EgressError::Refused {
            // The host as written, unless it is the address's own text.
            name: (bare != addr.to_string()).then(|| host.to_string()),
            addr,
            why,
        }),
        None => Err(EgressError::NoAddress {
            host: host.to_string(),
        }),
    }
}

/// Replaces a URL's userinfo (`user:password@`) with `<redacted>@`: it is
/// a credential (sent as Basic authentication), shown nowhere.
pub fn redact_userinfo(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}<redacted>{}", &url[..start], &rest[at..])),
        None => Cow::Borrowed(url),
    }
}

/// Serializes a URL with its userinfo redacted (`serialize_with`).
pub fn serialize_redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_userinfo(url))
}

/// Command-line settings of the rule (flattened into `run`, `operator`,
/// `preview` and `test-email`).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Egress (connections that configuration aims)")]
pub struct EgressSettings {
    /// Private addresses (10/8, 172.16/12, 192.168/16, 100.64/10,
    /// 198.18/15, fc00::/7) as hook and SMTP destinations: allow or deny.
    /// Loopback, link-local, cloud metadata, unspecified, multicast and
    /// reserved addresses are refused either way.
    #[arg(
        long = "egress-private",
        env = "IDPLANE_EGRESS_PRIVATE",
        value_enum,
        default_value_t = PrivatePolicy::Deny
    )]
    pub egress_private: PrivatePolicy,
    /// Address ranges admitted whatever their class, comma-separated
    /// (`127.0.0.0/8` for a sidecar, `10.96.0.0/12` for the cluster's
    /// Services). Cloud metadata only when a range names its address.
    #[arg(
        long = "egress-allow",
        env = "IDPLANE_EGRESS_ALLOW",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<Cidr>,
    /// Address ranges refused whatever their class; wins over --egress-allow.
    #[arg(
        long = "egress-deny",
        env = "IDPLANE_EGRESS_DENY",
        value_delimiter = ','
    )]
    pub egress_deny: Vec<Cidr>,
    /// DNS servers (IP:PORT, comma-separated) for the host names of hooks
    /// and SMTP servers; the system's resolver when empty.
    #[arg(
        long = "egress-nameserver",
        env = "IDPLANE_EGRESS_NAMESERVER",
        value_delimiter = ','
    )]
    pub egress_nameservers: Vec<SocketAddr>,
}

impl EgressSettings {
    pub fn rule(&self) -> EgressRule {
        EgressRule {
            private: self.egress_private,
            allow: self.egress_allow.clone(),
            deny: self.egress_deny.clone(),
        }
    }
}

/// How names become addresses.
enum Resolver {
    /// getaddrinfo: /etc/hosts, resolv.conf with its search domains (a
    /// cluster's `svc.cluster.local`).
    System,
    Servers(Box<TokioResolver>),
}

/// The rule with its resolver: what every connection that configuration
/// aims goes through.
pub struct Egress {
    rule: EgressRule,
    resolver: Resolver,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").field("rule", &self.rule).finish()
    }
}

impl Egress {
    pub fn new(settings: &EgressSettings) -> Result<Self, EgressError> {
        let resolver = if settings.egress_nameservers.is_empty() {
            Resolver::System
        } else {
            Resolver::Servers(Box::new(servers(&settings.egress_nameservers)?))
        };
        Ok(Self {
            rule: settings.rule(),
            resolver,
        })
    }

    pub fn rule(&self) -> &EgressRule {
        &self.rule
    }

    /// Checks an address about to be dialled as it is (a literal host, or
    /// the peer a connection reached); `name` is what it came from.
    pub fn check(&self, name: Option<&str>, addr: IpAddr) -> Result<(), EgressError> {
        self.rule.check_named(name, addr)
    }

    /// The addresses of `host` (a name or a literal) that the rule admits,
    /// with `port`: the only ones to dial.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let found = self.lookup(host, port).await?;
        admit(&self.rule, host, found)
    }

    /// The addresses of `host`, unchecked (the installation's own default
    /// SMTP provider, which no org aims).
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        if let Some(ip) = literal(host) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let failed = |message: String| EgressError::Lookup {
            host: host.to_string(),
            message,
        };
        match &self.resolver {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|found| found.collect())
                .map_err(|e| failed(e.to_string())),
            Resolver::Servers(r) => r
                .lookup_ip(host)
                .await
                .map(|found| found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
                .map_err(|e| failed(e.to_string())),
        }
    }

    /// The HTTP client builder of hook calls: every name it resolves goes
    /// through the rule, and it ignores `HTTP(S)_PROXY` (through a proxy
    /// the address dialled would be the proxy's, and the destination's
    /// would not be checked). Literal hosts bypass any resolver: check
    /// them with [`url_literal`] and [`Self::check`].
    pub fn http_client(self: &Arc<Self>) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(HttpResolver(self.clone())))
            .no_proxy()
    }
}

fn servers(nameservers: &[SocketAddr]) -> Result<TokioResolver, EgressError> {
    let mut options = ResolverOpts::default();
    options.timeout = Duration::from_secs(5);
    options.attempts = 1;
    TokioResolver::builder_with_config(
        name_server_config(nameservers),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .map_err(|e| EgressError::Setup(e.to_string()))
}

/// A resolver configuration that asks exactly these servers, over UDP and
/// TCP at each one's port (the tests' dnsmasq listens on a high port).
pub fn name_server_config(nameservers: &[SocketAddr]) -> ResolverConfig {
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// reqwest's resolver: the rule's admitted addresses of a name.
struct HttpResolver(Arc<Egress>);

impl reqwest::dns::Resolve for HttpResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port in.
            let admitted = egress.resolve(&host, 0).await?;
            Ok(Box::new(admitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The egress error behind an error (a reqwest one, through its sources).
pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<EgressError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        literal(text).unwrap_or_else(|| panic!("{text} is no literal"))
    }

    #[test]
    fn literals_in_every_disguise_are_the_address_they_mean() {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for text in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "127.1",
            "0177.0.0.1",
        ] {
            assert_eq!(literal(text), Some(loopback), "{text}");
        }
        assert_eq!(literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(
            literal("[::ffff:127.0.0.1]"),
            Some("::ffff:127.0.0.1".parse().unwrap())
        );
        assert_eq!(literal("0.0.0.0"), Some("0.0.0.0".parse().unwrap()));
        for name in ["localhost", "smtp.example.com", "a1b2", "", "x/y"] {
            assert_eq!(literal(name), None, "{name}");
        }
    }

    #[test]
    fn classes() {
        let cases = [
            ("127.0.0.1", Class::Loopback),
            ("127.255.0.9", Class::Loopback),
            ("::1", Class::Loopback),
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::127.0.0.1", Class::Loopback),
            ("64:ff9b::7f00:1", Class::Loopback),
            ("0.0.0.0", Class::Unspecified),
            ("0.1.2.3", Class::Unspecified),
            ("::", Class::Unspecified),
            ("169.254.169.254", Class::Metadata),
            ("::ffff:169.254.169.254", Class::Metadata),
            ("fd00:ec2::254", Class::Metadata),
            ("100.100.100.200", Class::Metadata),
            ("169.254.1.1", Class::LinkLocal),
            ("fe80::1", Class::LinkLocal),
            ("224.0.0.1", Class::Multicast),
            ("ff02::1", Class::Multicast),
            ("255.255.255.255", Class::Reserved),
            ("240.0.0.1", Class::Reserved),
            ("10.96.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("192.168.1.1", Class::Private),
            ("100.64.0.1", Class::Private),
            ("fd12:3456::1", Class::Private),
            ("172.32.0.1", Class::Public),
            ("8.8.8.8", Class::Public),
            ("2606:4700::1111", Class::Public),
            ("64:ff9b::808:808", Class::Public),
        ];
        for (text, class) in cases {
            assert_eq!(classify(ip(text)), class, "{text}");
        }
    }

    #[test]
    fn the_default_rule() {
        let rule = EgressRule::default();
        for refused in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "169.254.169.254",
            "::ffff:127.0.0.1",
            "2130706433",
            "224.0.0.1",
            "10.0.0.1",
            "fd00::1",
        ] {
            assert!(rule.check(ip(refused)).is_err(), "{refused}");
        }
        assert_eq!(rule.check(ip("10.0.0.1")), Err(Why::Private));
        assert_eq!(
            rule.check(ip("127.0.0.1")),
            Err(Why::Class(Class::Loopback))
        );
        for admitted in ["8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(rule.check(ip(admitted)), Ok(()), "{admitted}");
        }
    }

    #[test]
    fn allow_deny_and_private() {
        let cidr = |t: &str| t.parse::<Cidr>().unwrap();
        let rule = EgressRule {
            private: PrivatePolicy::Allow,
            allow: vec![cidr("127.0.0.0/8"), cidr("169.254.0.0/16")],
            deny: vec![cidr("10.1.0.0/16"), cidr("127.0.0.2")],
        };
        assert_eq!(rule.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(rule.check(ip("::ffff:127.0.0.1")), Ok(()), "mapped");
        assert_eq!(rule.check(ip("::1")), Err(Why::Class(Class::Loopback)));
        assert_eq!(
            rule.check(ip("127.0.0.2")),
            Err(Why::Denied(cidr("127.0.0.2/32")))
        );
        assert_eq!(rule.check(ip("10.2.0.1")), Ok(()), "private allowed");
        assert_eq!(
            rule.check(ip("10.1.2.3")),
            Err(Why::Denied(cidr("10.1.0.0/16")))
        );
        assert_eq!(rule.check(ip("169.254.1.1")), Ok(()));
        // A broad range does not open the metadata service; its address does.
        assert_eq!(
            rule.check(ip("169.254.169.254")),
            Err(Why::Class(Class::Metadata))
        );
        let exact = EgressRule {
            allow: vec![cidr("169.254.169.254/32")],
            ..Default::default()
        };
        assert_eq!(exact.check(ip("169.254.169.254")), Ok(()));
    }

    #[test]
    fn ranges_parse_strictly() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn admit_keeps_admitted_addresses_and_names_the_refused_one() {
        let rule = EgressRule::default();
        let at = |t: &str| SocketAddr::new(ip(t), 25);
        assert_eq!(
            admit(&rule, "mixed.example", vec![at("127.0.0.1"), at("8.8.8.8")]),
            Ok(vec![at("8.8.8.8")])
        );
        let refused = admit(&rule, "loop.example", vec![at("127.0.0.1")]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "egress refused: 127.0.0.1 (from loop.example) is loopback, admitted only by --egress-allow"
        );
        let literal = admit(&rule, "[::1]", vec![at("::1")]).unwrap_err();
        assert_eq!(
            literal.to_string(),
            "egress refused: ::1 is loopback, admitted only by --egress-allow"
        );
        assert_eq!(
            admit(&rule, "none.example", Vec::new()),
            Err(EgressError::NoAddress {
                host: "none.example".into()
            })
        );
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_userinfo("https://user:pw@hooks.example/x?a=b@c"),
            "https://<redacted>@hooks.example/x?a=b@c"
        );
        assert_eq!(
            redact_userinfo("http://a@b@h:8080/p"),
            "http://<redacted>@h:8080/p"
        );
        assert_eq!(
            redact_userinfo("https://hooks.example/p@q"),
            "https://hooks.example/p@q"
        );
        assert_eq!(redact_userinfo("not a url"), "not a url");
    }

    #[test]
    fn flags_parse_and_defaults_match() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            egress: EgressSettings,
        }
        let parsed = Cli::try_parse_from(["x"]).unwrap().egress;
        assert_eq!(parsed.rule(), EgressRule::default());
        assert_eq!(parsed.rule().private, PrivatePolicy::Deny);
        let cli = Cli::try_parse_from([
            "x",
            "--egress-private",
            "allow",
            "--egress-allow",
            "127.0.0.0/8,::1",
            "--egress-allow",
            "10.96.0.0/12",
            "--egress-deny",
            "10.1.0.0/16",
            "--egress-nameserver",
            "127.0.0.1:5353",
        ])
        .unwrap()
        .egress;
        assert_eq!(cli.rule().allow.len(), 3);
        assert_eq!(cli.rule().deny, vec!["10.1.0.0/16".parse().unwrap()]);
        assert_eq!(cli.egress_nameservers.len(), 1);
        assert!(Cli::try_parse_from(["x", "--egress-private", "maybe"]).is_err());
    }

    #[test]
    fn localhost_names() {
        assert!(is_localhost("localhost") && is_localhost("api.LOCALHOST."));
        assert!(!is_localhost("localhost.example.com"));
    }
}
