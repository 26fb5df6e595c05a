//! One address type for both families.
//!
//! Flow keys, connections, pools and routes hold an [`Addr`]: 16 bytes in
//! network order, IPv4 as the IPv4-mapped IPv6 address `::ffff:a.b.c.d`
//! (RFC 4291 §2.5.5.2) — the layout of the XDP maps' keys, so a flow entry
//! can be mirrored into a BPF map as it is. A mapped address never comes
//! off the wire inside an IPv6 header (the parser drops such packets), so
//! the two families cannot collide in a table.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr(pub [u8; 16]);

const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl Addr {
    /// An IPv4 address from its wire bytes.
    #[inline]
    pub const fn v4_bytes(b: [u8; 4]) -> Self {
        Self([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, b[0], b[1], b[2], b[3],
        ])
    }

    /// An IPv4 address from its host-order number.
    #[inline]
    pub const fn v4(a: u32) -> Self {
        Self::v4_bytes(a.to_be_bytes())
    }

    /// True for IPv4 (mapped) addresses.
    #[inline]
    pub fn is_v4(&self) -> bool {
        self.0[..12] == MAPPED
    }

    /// True for an IPv6 address that is really a mapped IPv4 one (refused
    /// inside IPv6 headers).
    #[inline]
    pub fn is_mapped(b: &[u8; 16]) -> bool {
        b[..12] == MAPPED
    }

    /// The IPv4 wire bytes, if this is IPv4.
    #[inline]
    pub fn v4_octets(&self) -> Option<[u8; 4]> {
        self.is_v4()
            .then(|| [self.0[12], self.0[13], self.0[14], self.0[15]])
    }

    /// The bytes as they are written into a packet of this family: 4 for
    /// IPv4, 16 for IPv6.
    #[inline]
    pub fn wire(&self) -> &[u8] {
        if self.is_v4() { &self.0[12..] } else { &self.0 }
    }

    /// The address with only its first `bits` bits (of its own family's
    /// width) kept: client networks for persistence.
    pub fn masked(&self, bits: u8) -> Self {
        let total = if self.is_v4() {
            96 + u32::from(bits.min(32))
        } else {
            u32::from(bits.min(128))
        };
        let keep = u128::MAX.checked_shl(128 - total).unwrap_or(0);
        Self((u128::from_be_bytes(self.0) & keep).to_be_bytes())
    }

    pub fn ip(&self) -> IpAddr {
        match self.v4_octets() {
            Some(o) => IpAddr::V4(Ipv4Addr::from(o)),
            None => IpAddr::V6(Ipv6Addr::from(self.0)),
        }
    }
}

impl From<IpAddr> for Addr {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => a.into(),
            IpAddr::V6(a) => a.into(),
        }
    }
}

impl From<Ipv4Addr> for Addr {
    fn from(a: Ipv4Addr) -> Self {
        Self::v4_bytes(a.octets())
    }
}

impl From<Ipv6Addr> for Addr {
    fn from(a: Ipv6Addr) -> Self {
        Self(a.octets())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip().fmt(f)
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.ip().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_masks() {
        let a = Addr::from("10.1.2.3".parse::<IpAddr>().unwrap());
        assert!(a.is_v4());
        assert_eq!(a, Addr::v4(0x0a01_0203));
        assert_eq!(a.wire(), &[10, 1, 2, 3]);
        assert_eq!(a.to_string(), "10.1.2.3");
        assert_eq!(a.masked(24).to_string(), "10.1.2.0");
        assert_eq!(a.masked(32), a);
        assert_eq!(a.masked(0).to_string(), "0.0.0.0");
        let b = Addr::from("2001:db8::1:2".parse::<IpAddr>().unwrap());
        assert!(!b.is_v4());
        assert_eq!(b.wire().len(), 16);
        assert_eq!(b.masked(64).to_string(), "2001:db8::");
        assert_eq!(b.masked(128), b);
        assert!(Addr::is_mapped(&a.0) && !Addr::is_mapped(&b.0));
    }
}
