//! Human-readable output in ipvsadm's layout.

use lvc_proto::{Listing, Status};
use std::fmt::Write;

/// `ipvsadm -L -n` (and `--stats`) layout.
pub fn listing(l: &Listing, stats: bool) -> String {
    let mut s = String::new();
    if stats {
        s.push_str(
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
        );
        s.push_str("  -> RemoteAddress:Port\n");
    } else {
        s.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        s.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    }
    for svc in &l.services {
        let head = format!(
            "{}  {}",
            svc.service.proto.name().to_uppercase(),
            svc.service.addr
        );
        if stats {
            let c = &svc.stats;
            let _ = writeln!(
                s,
                "{head:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
                c.conns,
                c.packets_in,
                c.packets_out,
                human(c.bytes_in),
                human(c.bytes_out)
            );
        } else {
            let _ = writeln!(s, "{head} {}", svc.scheduler);
        }
        for r in &svc.servers {
            let addr = r.addr.to_string();
            if stats {
                let c = &r.stats;
                let _ = writeln!(
                    s,
                    "  -> {addr:<28} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    c.conns,
                    c.packets_in,
                    c.packets_out,
                    human(c.bytes_in),
                    human(c.bytes_out)
                );
            } else {
                let _ = writeln!(
                    s,
                    "  -> {addr:<28} {:<7} {:<6} {:<10} {}",
                    r.method.forward_label(),
                    r.weight,
                    r.active_conns,
                    r.inactive_conns
                );
            }
        }
    }
    s
}

/// ipvsadm's compact byte counts (K, M, G).
fn human(n: u64) -> String {
    match n {
        0..100_000 => n.to_string(),
        100_000..100_000_000 => format!("{}K", n / 1000),
        100_000_000..100_000_000_000 => format!("{}M", n / 1_000_000),
        _ => format!("{}G", n / 1_000_000_000),
    }
}

pub fn status(st: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "lvc-dataplane {}, up {}s", st.version, st.uptime_secs);
    for i in &st.interfaces {
        let _ = writeln!(
            s,
            "interface {} (ifindex {}): {} queue(s), XDP {} mode",
            i.name, i.ifindex, i.queues, i.xdp_mode
        );
    }
    let _ = writeln!(
        s,
        "workers {}, connections {}/{}",
        st.workers, st.flows, st.flow_capacity
    );
    for (name, v) in st.counters.iter().filter(|(_, v)| *v > 0) {
        let _ = writeln!(s, "  {name:<28} {v}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::{Counters, Method, Scheduler, ServerInfo, ServiceInfo};

    fn sample() -> Listing {
        Listing {
            services: vec![ServiceInfo {
                service: "tcp:10.0.0.10:80".parse().unwrap(),
                scheduler: Scheduler::Rr,
                stats: Counters {
                    conns: 3,
                    packets_in: 30,
                    packets_out: 20,
                    bytes_in: 2000,
                    bytes_out: 250_000,
                },
                servers: vec![
                    ServerInfo {
                        addr: "10.0.1.1:80".parse().unwrap(),
                        method: Method::Nat,
                        weight: 1,
                        active_conns: 2,
                        inactive_conns: 1,
                        stats: Counters::default(),
                    },
                    ServerInfo {
                        addr: "10.0.1.2:8080".parse().unwrap(),
                        method: Method::Dnat,
                        weight: 3,
                        active_conns: 0,
                        inactive_conns: 0,
                        stats: Counters::default(),
                    },
                ],
            }],
        }
    }

    #[test]
    fn golden_listing() {
        assert_eq!(
            listing(&sample(), false),
            "Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  10.0.0.10:80 rr
  -> 10.0.1.1:80                  Masq    1      2          1
  -> 10.0.1.2:8080                Dnat    3      0          0
"
        );
    }

    #[test]
    fn golden_stats() {
        assert_eq!(
            listing(&sample(), true),
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        3       30       20     2000     250K
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
"
        );
    }
}
