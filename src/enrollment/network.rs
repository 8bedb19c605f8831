//! CIDR blocks of rules' network zones, parsed once when the engine is
//! built, and the test of a client address against them. std::net only.

use std::net::IpAddr;

/// An IPv4 or IPv6 network, stored masked so that a match is one AND and
/// one compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cidr {
    V4 { network: u32, mask: u32 },
    V6 { network: u128, mask: u128 },
}

impl Cidr {
    /// Parses `address/prefix` (`10.0.0.0/8`, `2001:db8::/32`). Host bits
    /// are allowed and ignored (`10.1.2.3/8` is `10.0.0.0/8`). A bare
    /// address is refused, as the CRD's `isCIDR` refuses it.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = text.split_once('/')?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix: u32 = prefix.parse().ok()?;
        match address.parse::<IpAddr>().ok()? {
            IpAddr::V4(v4) if prefix <= 32 => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                Some(Self::V4 {
                    network: u32::from(v4) & mask,
                    mask,
                })
            }
            IpAddr::V6(v6) if prefix <= 128 => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                Some(Self::V6 {
                    network: u128::from(v6) & mask,
                    mask,
                })
            }
            _ => None,
        }
    }

    /// Whether `ip` is in the network. IPv4 addresses only match IPv4
    /// networks and IPv6 addresses IPv6 networks; callers canonicalize
    /// IPv4-mapped IPv6 addresses first (see [`client_address`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::V4 { network, mask }, IpAddr::V4(v4)) => u32::from(v4) & mask == *network,
            (Self::V6 { network, mask }, IpAddr::V6(v6)) => u128::from(v6) & mask == *network,
            _ => false,
        }
    }
}

/// Parses a client address as sent in a request: an IPv4 or IPv6 address
/// without a port. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`) is
/// treated as the IPv4 address it carries.
pub fn client_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        client_address(text).unwrap()
    }

    #[test]
    fn cidr_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.20.0.0/16", "10.20.255.255", true),
            ("10.20.0.0/16", "10.21.0.0", false),
            ("10.1.2.3/8", "10.9.9.9", true),
            ("192.0.2.7/32", "192.0.2.7", true),
            ("192.0.2.7/32", "192.0.2.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::/32", "10.0.0.1", false),
            ("::/0", "2001:db8::1", true),
            ("::/0", "10.0.0.1", false),
            ("2001:db8::1/128", "2001:db8::1", true),
            ("2001:db8::1/128", "2001:db8::2", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("fe80::/10", "fe80::1", true),
            ("fe80::/10", "fec0::1", false),
        ];
        for (cidr, address, expected) in cases {
            let parsed = Cidr::parse(cidr).unwrap_or_else(|| panic!("{cidr} should parse"));
            assert_eq!(
                parsed.contains(ip(address)),
                *expected,
                "{cidr} contains {address}"
            );
        }
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for text in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "zone/8",
            "",
            "/8",
        ] {
            assert_eq!(Cidr::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn client_addresses() {
        assert_eq!(client_address("not-an-ip"), None);
        assert_eq!(client_address("10.0.0.1:443"), None);
        assert_eq!(client_address("::ffff:10.1.2.3"), Some(ip("10.1.2.3")));
        assert_eq!(client_address(" 10.0.0.1"), None);
        assert!(client_address("2001:db8::1").is_some());
    }
}
