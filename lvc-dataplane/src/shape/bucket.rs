//! The token bucket every rate in lvc's shaping is made of.
//!
//! Integer arithmetic only, with time passed in (nanoseconds): a token is
//! one nanobit, so `elapsed_ns × rate_bps` tokens arrive exactly and a
//! byte costs exactly 8·10⁹ — no rounding, so no drift however long it
//! runs. The balance may go negative (a class that borrowed owes), down
//! to minus one burst.

/// Tokens per byte.
const PER_BYTE: i64 = 8_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    /// Capacity in tokens (the burst).
    depth: i64,
    tokens: i64,
    /// When `tokens` was last brought up to date.
    last: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes filling at `rate_bps`.
    pub fn new(rate_bps: u64, burst: u64, now: u64) -> Self {
        let depth = (burst as i64).saturating_mul(PER_BYTE);
        Self {
            rate: rate_bps,
            depth,
            tokens: depth,
            last: now,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Adds what arrived since the last refill (time never goes back).
    #[inline]
    pub fn refill(&mut self, now: u64) {
        if now > self.last {
            let add = i128::from(now - self.last) * i128::from(self.rate);
            self.tokens = (i128::from(self.tokens) + add).min(i128::from(self.depth)) as i64;
            self.last = now;
        }
    }

    /// Not in debt: HTB's "may send" (the packet may then overdraw).
    #[inline]
    pub fn ready(&self) -> bool {
        self.tokens >= 0
    }

    /// Holds the whole cost of `bytes` (TBF, policers: exact).
    #[inline]
    pub fn covers(&self, bytes: u32) -> bool {
        self.tokens >= i64::from(bytes) * PER_BYTE
    }

    /// Pays for `bytes`; the debt is capped at one burst.
    #[inline]
    pub fn charge(&mut self, bytes: u32) {
        self.tokens = (self.tokens - i64::from(bytes) * PER_BYTE).max(-self.depth);
    }

    /// Refill, then pay for `bytes` if it is covered (a policer).
    #[inline]
    pub fn take(&mut self, bytes: u32, now: u64) -> bool {
        self.refill(now);
        let ok = self.covers(bytes);
        if ok {
            self.charge(bytes);
        }
        ok
    }

    /// Nanoseconds until `ready` (bytes = 0) or `covers(bytes)`.
    pub fn wait_ns(&self, bytes: u32) -> u64 {
        let need = i64::from(bytes) * PER_BYTE - self.tokens;
        if need <= 0 || self.rate == 0 {
            0
        } else {
            (need as u64).div_ceil(self.rate)
        }
    }

    /// Bytes' worth of tokens now (negative: debt).
    pub fn balance_bytes(&self) -> i64 {
        self.tokens / PER_BYTE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_and_refills_exactly() {
        let mut b = TokenBucket::new(8_000, 1000, 0); // 1000 B/s
        assert!(b.covers(1000));
        assert!(!b.covers(1001));
        b.charge(1000);
        assert_eq!(b.balance_bytes(), 0);
        b.refill(500_000_000); // half a second: 500 B
        assert_eq!(b.balance_bytes(), 500);
        assert_eq!(b.wait_ns(1000), 500_000_000);
        b.refill(10_000_000_000); // never above the burst
        assert_eq!(b.balance_bytes(), 1000);
        b.refill(5); // time going back changes nothing
        assert_eq!(b.balance_bytes(), 1000);
    }

    #[test]
    fn debt_is_capped_at_one_burst() {
        let mut b = TokenBucket::new(8_000, 1000, 0);
        for _ in 0..10 {
            b.charge(1500);
        }
        assert_eq!(b.balance_bytes(), -1000);
        assert!(!b.ready());
        assert_eq!(b.wait_ns(0), 1_000_000_000);
    }

    /// Three hours of simulated time at an awkward rate with irregular
    /// steps, sending whenever the bucket allows: the bytes sent are the
    /// rate times the time plus the initial burst, to the byte.
    #[test]
    fn no_drift_over_hours() {
        let rate = 70_000_007u64; // bit/s, not a round number
        let burst = 64_000u64; // more than the longest step brings
        let mut b = TokenBucket::new(rate, burst, 0);
        let (mut now, mut sent) = (0u64, 0u64);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let end = 3 * 3600 * 1_000_000_000u64;
        loop {
            let len = 64 + (x >> 32) as u32 % 1451;
            while b.covers(len) {
                b.charge(len);
                sent += u64::from(len);
            }
            if now >= end {
                break;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += 1 + x % 3_000_000; // up to 3 ms between wake-ups
            b.refill(now);
        }
        // tokens arrived = rate × now / 8e9 bytes, all but < one packet spent
        let arrived = u128::from(rate) * u128::from(now) / 8_000_000_000 + u128::from(burst);
        let left = arrived - u128::from(sent);
        assert!(left < 1515, "sent {sent}, arrived {arrived}");
    }

    #[test]
    fn policer_takes_only_what_is_covered() {
        let mut b = TokenBucket::new(8_000_000, 3000, 0); // 1 MB/s
        assert!(b.take(1500, 0));
        assert!(b.take(1500, 0));
        assert!(!b.take(1500, 0));
        assert!(!b.take(1500, 1_000_000)); // 1 ms: 1000 B
        assert!(b.take(1500, 1_500_000));
    }
}
