//! The BPF programs of `lvc-bench` (the load-test harness) and the Rust
//! mirror of their map layouts (`src/bpf/bench_xdp.c`). lvc itself never
//! loads these.

/// The compiled harness object (ELF), aligned for aya's loader.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_xdp.o"));

/// Program names inside [`OBJECT`].
pub mod programs {
    /// Live-frames UDP generator (BPF_PROG_TEST_RUN).
    pub const GEN: &str = "lvc_bench_gen";
    /// Counting, latency-recording sink at the real servers.
    pub const SINK: &str = "lvc_bench_sink";
    /// Minimal kernel XDP load balancer (the `xdp-redirect` kind).
    pub const FWD: &str = "lvc_bench_fwd";
    /// Steers every IPv4 UDP frame to AF_XDP (the `afxdp-raw` kind).
    pub const XSK: &str = "lvc_bench_xsk";
    /// XDP_PASS.
    pub const PASS: &str = "lvc_bench_pass";
}

/// Destination addresses the sink counts separately (then "other").
pub const SINK_SLOTS: u32 = 17;
/// Buckets of the sink's latency histogram.
pub const HIST_BUCKETS: u32 = 1024;
/// Most real servers of the `xdp-redirect` kind.
pub const FWD_MAX_RIPS: usize = 16;

/// `gen_cfg`: what the generator sends. Addresses and ports host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenCfg {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub saddr: u32,
    pub daddr: u32,
    pub daddr_count: u32,
    /// Distinct flows cycled through; 0 = every packet a new flow.
    pub flows: u32,
    pub sport_base: u16,
    pub dport: u16,
    /// Pacing: ns between packets; 0 = as fast as possible.
    pub interval_ns: u64,
    /// Pacing: most packets sent back to back to catch up after a pause.
    pub burst: u64,
}

/// `gen_state`: what the generator did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GenState {
    pub sent: u64,
    pub paced_out: u64,
    pub next_ns: u64,
    pub pad: u64,
}

/// `sink_cfg`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCfg {
    /// First destination address counted separately (host order).
    pub base: u32,
    pub dport: u16,
    pub pad: u16,
}

/// One `sink_counts` slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkCount {
    pub packets: u64,
    pub bytes: u64,
}

/// `fwd_cfg`: the `xdp-redirect` kind's service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FwdCfg {
    pub vip: u32,
    pub dport: u16,
    pub nrips: u16,
    pub rips: [u32; FWD_MAX_RIPS],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

// SAFETY: plain `#[repr(C)]` structs of integers with no padding bytes
// (checked by the size assertions below), valid for every bit pattern.
unsafe impl aya::Pod for GenCfg {}
// SAFETY: as above.
unsafe impl aya::Pod for GenState {}
// SAFETY: as above.
unsafe impl aya::Pod for SinkCfg {}
// SAFETY: as above.
unsafe impl aya::Pod for SinkCount {}
// SAFETY: as above.
unsafe impl aya::Pod for FwdCfg {}

const _: () = assert!(size_of::<GenCfg>() == 48);
const _: () = assert!(size_of::<GenState>() == 32);
const _: () = assert!(size_of::<SinkCfg>() == 8);
const _: () = assert!(size_of::<SinkCount>() == 16);
const _: () = assert!(size_of::<FwdCfg>() == 84);

/// The latency (ns) a `sink_hist` bucket stands for: its midpoint. The
/// inverse of `hist_bucket` in bench_xdp.c: exact below 64 ns, then 32
/// buckets per power of two.
pub fn hist_value(bucket: u32) -> u64 {
    if bucket < 64 {
        return bucket as u64;
    }
    let msb = 6 + (bucket - 64) / 32;
    let sub = ((bucket - 64) % 32) as u64;
    let width = 1u64 << (msb - 5);
    ((32 + sub) << (msb - 5)) + width / 2
}

/// `hist_bucket` of bench_xdp.c, for tests.
pub fn hist_bucket(v: u64) -> u32 {
    if v < 64 {
        return v as u32;
    }
    let msb = 63 - v.leading_zeros();
    let idx = 64 + (msb - 6) * 32 + ((v >> (msb - 5)) & 31) as u32;
    idx.min(HIST_BUCKETS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_within_3_percent() {
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            12_345,
            1_000_000,
            3_000_000_000,
        ] {
            let mid = hist_value(hist_bucket(v));
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / 32.0, "{v} -> {mid}");
        }
        let mut last = 0;
        for b in 0..HIST_BUCKETS {
            assert!(b == 0 || hist_value(b) > last, "bucket {b} not increasing");
            last = hist_value(b);
            assert_eq!(hist_bucket(hist_value(b)), b);
        }
    }

    #[test]
    fn object_is_a_bpf_elf() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
    }
}
