//! Schedule: pick a real server for a new connection.

use crate::services::{Server, Service};
use lvc_proto::Scheduler;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Chooses the real server for a new connection to `svc`, or `None` when no
/// server accepts new connections (none configured, or all weight 0).
#[inline]
pub fn pick(svc: &Service) -> Option<&Arc<Server>> {
    match svc.scheduler {
        Scheduler::Rr => round_robin(svc),
    }
}

/// Plain round robin over servers with weight > 0 (weight 0 = quiescent:
/// existing connections continue, no new ones), as IPVS's `rr`.
fn round_robin(svc: &Service) -> Option<&Arc<Server>> {
    let n = svc.servers.len();
    if n == 0 {
        return None;
    }
    let start = svc.rr.fetch_add(1, Relaxed);
    (0..n)
        .map(|i| &svc.servers[(start.wrapping_add(i)) % n])
        .find(|s| s.weight > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::TrafficStats;
    use lvc_proto::Method;
    use std::sync::atomic::AtomicUsize;

    fn svc(weights: &[u32]) -> Service {
        Service {
            key: "tcp:10.0.0.10:80".parse().unwrap(),
            scheduler: Scheduler::Rr,
            servers: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| {
                    Arc::new(Server {
                        addr: [10, 0, 1, i as u8 + 1].into(),
                        port: 80,
                        weight: w,
                        method: Method::Nat,
                        stats: Arc::new(TrafficStats::default()),
                    })
                })
                .collect(),
            rr: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(TrafficStats::default()),
        }
    }

    #[test]
    fn rr_alternates() {
        let s = svc(&[1, 1, 1]);
        let picks: Vec<u8> = (0..6).map(|_| pick(&s).unwrap().addr.octets()[3]).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn weight_zero_is_quiescent() {
        let s = svc(&[1, 0, 1]);
        assert!((0..10).all(|_| pick(&s).unwrap().addr.octets()[3] != 2));
        assert!(pick(&svc(&[0, 0])).is_none());
        assert!(pick(&svc(&[])).is_none());
    }
}
