//! Housekeeping: once a second, ages the connection table, leaves the
//! replies of the `nat` connections it forgot to the kernel again, forgets
//! drained fullnat pools, expires persistence templates, writes the
//! connection journal; every two seconds, refreshes rates. Never per
//! packet.

use super::Control;
use crate::io::steer::Replies;
use crate::journal::Journal;
use crate::pipeline::conntrack::Conntrack;
use crate::pipeline::translate;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Runs until `shutdown`, looking at it more often than once a second.
pub fn run(
    ct: &Conntrack,
    replies: &Replies,
    control: &Control,
    mut journal: Option<Journal>,
    shutdown: &Arc<AtomicBool>,
    epoch: Instant,
) {
    let mut last = 0;
    while !shutdown.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let now = epoch.elapsed().as_secs() as u32;
        if now == last {
            continue;
        }
        last = now;
        ct.sweep(now);
        for k in ct.take_released_replies() {
            replies.remove(&translate::bpf_key(&k));
        }
        if let Some(j) = &mut journal {
            j.sync(ct);
        }
        control.drain_retired();
        control.sweep_templates(now);
        if now.is_multiple_of(2) {
            control.sample_rates(2.0);
            control.sample_shaping(2.0);
        }
    }
}
