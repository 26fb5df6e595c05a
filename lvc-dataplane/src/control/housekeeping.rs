//! Housekeeping: once a second, ages the connection table, leaves the
//! replies of the `nat` connections it forgot to the kernel again, forgets
//! drained fullnat pools, expires persistence templates; every 200 ms,
//! writes the connection journal and tells the peer directors (sync);
//! every two seconds, refreshes rates. Never per packet.

use super::Control;
use crate::io::steer::Replies;
use crate::journal::Journal;
use crate::pipeline::conntrack::Conntrack;
use crate::pipeline::translate;
use crate::sync::ConnSync;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Runs until `shutdown`, looking at it more often than once a second.
pub fn run(
    ct: &Conntrack,
    replies: &Replies,
    control: &Control,
    mut journal: Option<Journal>,
    sync: Option<&ConnSync>,
    shutdown: &Arc<AtomicBool>,
    epoch: Instant,
) {
    let mut last = 0;
    // New and gone connections for the journal and the peer directors:
    // every 200 ms (a failover loses what is younger).
    let record = |journal: &mut Option<Journal>| {
        if journal.is_none() && sync.is_none() {
            return;
        }
        let (new, gone) = ct.take_journal();
        if let Some(j) = journal {
            j.apply(&new, &gone);
        }
        if let Some(s) = sync {
            s.offer(&new, &gone);
        }
    };
    while !shutdown.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        record(&mut journal);
        let now = epoch.elapsed().as_secs() as u32;
        if now == last {
            continue;
        }
        last = now;
        ct.sweep(now);
        for k in ct.take_released_replies() {
            replies.remove(&translate::bpf_key(&k));
        }
        control.drain_retired();
        control.drain_services();
        control.sweep_templates(now);
        if now.is_multiple_of(2) {
            control.sample_rates(2.0);
            control.sample_shaping(2.0);
        }
    }
    // A clean stop leaves the journal complete for the next process.
    record(&mut journal);
}
