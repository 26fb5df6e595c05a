//! Human-readable output in ipvsadm's layout.

use lvc_proto::{ConnListing, Counters, Listing, Rates, Status};
use std::fmt::Write;

/// `ipvsadm -L -n` layout (and its `--stats` and `--rate` variants).
pub fn listing(l: &Listing, stats: bool, rate: bool) -> String {
    let mut s = String::new();
    if stats {
        s.push_str(
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
        );
        s.push_str("  -> RemoteAddress:Port\n");
    } else if rate {
        s.push_str(
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n",
        );
        s.push_str("  -> RemoteAddress:Port\n");
    } else {
        s.push_str("Prot LocalAddress:Port Scheduler Flags\n");
        s.push_str("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n");
    }
    let row = |s: &mut String, head: &str, v: [u64; 5]| {
        let _ = writeln!(
            s,
            "{head:<33} {:>8} {:>8} {:>8} {:>8} {:>8}",
            v[0],
            v[1],
            v[2],
            human(v[3]),
            human(v[4])
        );
    };
    let counters = |c: &Counters| {
        [
            c.conns,
            c.packets_in,
            c.packets_out,
            c.bytes_in,
            c.bytes_out,
        ]
    };
    let rates = |r: &Rates| {
        [
            r.conns,
            r.packets_in,
            r.packets_out,
            r.bytes_in,
            r.bytes_out,
        ]
    };
    for svc in &l.services {
        let head = format!(
            "{}  {}",
            svc.service.proto.name().to_uppercase(),
            svc.service.endpoint()
        );
        if stats {
            row(&mut s, &head, counters(&svc.stats));
        } else if rate {
            row(&mut s, &head, rates(&svc.rates));
        } else {
            let mut flags = String::new();
            if let Some(p) = svc.persistent {
                let _ = write!(flags, " persistent {p}");
            }
            if let Some(m) = svc.netmask {
                let _ = write!(flags, " mask {m}");
            }
            let _ = writeln!(s, "{head} {}{flags}", svc.scheduler);
        }
        for r in &svc.servers {
            let head = format!("  -> {}", r.addr);
            if stats {
                row(&mut s, &head, counters(&r.stats));
            } else if rate {
                row(&mut s, &head, rates(&r.rates));
            } else {
                let _ = writeln!(
                    s,
                    "{head:<33} {:<7} {:<6} {:<10} {}",
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

/// `ipvsadm -L -c -n` layout.
pub fn conns(c: &ConnListing) -> String {
    let mut s = String::from(
        "pro expire state       source                 virtual                destination\n",
    );
    for e in &c.conns {
        let _ = writeln!(
            s,
            "{:<3} {:02}:{:02}  {:<11} {:<22} {:<22} {}",
            e.proto.name().to_uppercase(),
            e.expires_in / 60,
            e.expires_in % 60,
            e.state,
            e.client.to_string(),
            e.vip.to_string(),
            e.real
        );
    }
    if c.truncated {
        s.push_str("(list truncated: use --limit or filters)\n");
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
    let t = &st.timeouts;
    let _ = writeln!(
        s,
        "timeouts tcp {} tcpfin {} udp {}",
        t.tcp, t.tcpfin, t.udp
    );
    if !st.local_pool.is_empty() {
        let pool: Vec<String> = st.local_pool.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "fullnat local pool {} ({} ports in use)",
            pool.join(", "),
            st.local_ports_in_use
        );
    }
    for (name, v) in st.counters.iter().filter(|(_, v)| *v > 0) {
        let _ = writeln!(s, "  {name:<28} {v}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::{ConnInfo, Method, Protocol, Scheduler, ServerInfo, ServiceInfo};

    fn sample() -> Listing {
        Listing {
            services: vec![ServiceInfo {
                service: "tcp:10.0.0.10:80".parse().unwrap(),
                scheduler: Scheduler::Rr,
                persistent: None,
                netmask: None,
                stats: Counters {
                    conns: 3,
                    packets_in: 30,
                    packets_out: 20,
                    bytes_in: 2000,
                    bytes_out: 250_000,
                },
                rates: Rates {
                    conns: 1,
                    packets_in: 10,
                    packets_out: 7,
                    bytes_in: 700,
                    bytes_out: 125_000,
                },
                servers: vec![
                    ServerInfo {
                        addr: "10.0.1.1:80".parse().unwrap(),
                        method: Method::Nat,
                        weight: 1,
                        active_conns: 2,
                        inactive_conns: 1,
                        stats: Counters::default(),
                        rates: Rates::default(),
                    },
                    ServerInfo {
                        addr: "10.0.1.2:8080".parse().unwrap(),
                        method: Method::Dnat,
                        weight: 3,
                        active_conns: 0,
                        inactive_conns: 0,
                        stats: Counters::default(),
                        rates: Rates::default(),
                    },
                ],
            }],
        }
    }

    #[test]
    fn golden_listing() {
        assert_eq!(
            listing(&sample(), false, false),
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
            listing(&sample(), true, false),
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        3       30       20     2000     250K
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
"
        );
    }

    #[test]
    fn golden_rate() {
        assert_eq!(
            listing(&sample(), false, true),
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS
  -> RemoteAddress:Port
TCP  10.0.0.10:80                        1       10        7      700     125K
  -> 10.0.1.1:80                         0        0        0        0        0
  -> 10.0.1.2:8080                       0        0        0        0        0
"
        );
    }

    #[test]
    fn golden_conns() {
        let c = ConnListing {
            conns: vec![ConnInfo {
                proto: Protocol::Tcp,
                client: "10.1.0.2:40000".parse().unwrap(),
                vip: "10.0.0.10:80".parse().unwrap(),
                real: "10.0.1.1:80".parse().unwrap(),
                method: Method::Nat,
                state: "ESTABLISHED".into(),
                expires_in: 899,
            }],
            truncated: false,
        };
        assert_eq!(
            conns(&c),
            "pro expire state       source                 virtual                destination
TCP 14:59  ESTABLISHED 10.1.0.2:40000         10.0.0.10:80           10.0.1.1:80
"
        );
    }
}
