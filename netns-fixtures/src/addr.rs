//! A minimal IPv4 prefix type for the underlay subnets (no dependency needed for this).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// The only range fixtures may use for underlays: 198.18.0.0/15 (RFC 2544 benchmarking).
pub(crate) const ALLOWED: Ipv4Net = Ipv4Net {
    network: Ipv4Addr::new(198, 18, 0, 0),
    prefix: 15,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ipv4Net {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/p`. The host bits must be zero.
    pub(crate) fn parse(s: &str) -> io::Result<Ipv4Net> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("subnet {s:?}: {why} (expected e.g. \"198.18.1.0/24\")"),
            )
        };
        let (ip, prefix) = s.split_once('/').ok_or_else(|| invalid("no /prefix"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| invalid("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid("bad prefix length"))?;
        if prefix > 32 {
            return Err(invalid("prefix length above 32"));
        }
        let net = Ipv4Net {
            network: ip,
            prefix,
        };
        if u32::from(ip) & !net.mask() != 0 {
            return Err(invalid("host bits are set"));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub(crate) fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub(crate) fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the prefix (2^(32-prefix)).
    pub(crate) fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub(crate) fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// True if `self` lies entirely inside `outer`.
    pub(crate) fn within(&self, outer: &Ipv4Net) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.network)
    }

    pub(crate) fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.within(other) || other.within(self)
    }

    /// The address `offset` above the network address (no bounds check beyond u32).
    pub(crate) fn at(&self, offset: u64) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(offset as u32))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let n = Ipv4Net::parse("198.18.1.0/24").unwrap();
        assert_eq!(n.to_string(), "198.18.1.0/24");
        assert_eq!(n.size(), 256);
        assert_eq!(n.at(254), Ipv4Addr::new(198, 18, 1, 254));
        assert!(n.contains(Ipv4Addr::new(198, 18, 1, 7)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 2, 7)));
        assert!(n.within(&ALLOWED));
        assert!(Ipv4Net::parse("198.19.255.0/24").unwrap().within(&ALLOWED));
        assert!(!Ipv4Net::parse("10.0.0.0/24").unwrap().within(&ALLOWED));
        assert!(!Ipv4Net::parse("198.16.0.0/14").unwrap().within(&ALLOWED));
        let b = Ipv4Net::parse("198.18.0.0/16").unwrap();
        assert!(b.overlaps(&n) && n.overlaps(&b));
        assert!(!n.overlaps(&Ipv4Net::parse("198.18.2.0/24").unwrap()));
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "198.18.1.0",
            "198.18.1.1/24",
            "198.18.1.0/33",
            "x/24",
            "198.18.1.0/x",
        ] {
            assert!(Ipv4Net::parse(bad).is_err(), "{bad}");
        }
    }
}
