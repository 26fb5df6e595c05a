//! Incremental Internet checksum updates (RFC 1624, eqn. 3).
//!
//! `HC' = ~(~HC + ~m + m')`, computed in one's-complement arithmetic on
//! 16-bit words. All values here are the *wire* representation read as
//! big-endian numbers.

/// Folds a 32-bit one's-complement sum into 16 bits.
#[inline]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` for a 16-bit field changing from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

/// Updates checksum `check` for a 32-bit field (e.g. an IPv4 address).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    !fold(sum)
}

/// Updates checksum `check` for a field of whole 16-bit words (an IPv6
/// address) changing from `old` to `new` (same length).
#[inline]
pub fn update_words(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut sum = u32::from(!check);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    !fold(sum)
}

/// Full Internet checksum over several pieces, as if they were one (all
/// but the last of an even length: a pseudo-header, then a segment).
pub fn combine(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(u16::from_be_bytes([*last, 0]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Full Internet checksum of `data` (for tests and header construction).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(buf: &mut [u8], at: usize, v: u16) {
        buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // A 20-byte IPv4 header with a valid checksum.
        let mut h = [
            0x45, 0, 0, 0x54, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 10,
        ];
        let c = checksum(&h);
        put(&mut h, 10, c);
        assert_eq!(checksum(&h), 0);
        for new_dst in [0x0a00_0101u32, 0xffff_ffff, 0, 0xc0a8_0001, 0x0000_ffff] {
            let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
            let oldc = u16::from_be_bytes([h[10], h[11]]);
            h[16..20].copy_from_slice(&new_dst.to_be_bytes());
            put(&mut h, 10, update32(oldc, old, new_dst));
            assert_eq!(checksum(&h), 0, "dst {new_dst:#x}");
        }
        // TTL/protocol word.
        let oldc = u16::from_be_bytes([h[10], h[11]]);
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        put(&mut h, 10, update16(oldc, old, new));
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_length() {
        assert_eq!(checksum(&[0xff]), !0xff00);
    }
}
