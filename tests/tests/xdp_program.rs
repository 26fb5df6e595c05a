//! The XDP steering program, run through BPF_PROG_TEST_RUN on crafted
//! frames (privileged: loads BPF, binds an AF_XDP socket in a namespace).

use lvc_dataplane::io::steer::Steering;
use lvc_dataplane::io::xsk::{IoConfig, WorkerIo};
use lvc_ebpf::{EndpointKey, Stat};
use lvc_tests::{Lab, netns, privileged};
use std::collections::HashSet;
use std::net::IpAddr;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// What the program should do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// XDP_REDIRECT into lvc's socket.
    Redirect,
    /// XDP_PASS to the kernel.
    Pass,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Redirect => XDP_REDIRECT,
            Verdict::Pass => XDP_PASS,
        }
    }
}

/// One frame run through the program on an rx queue, and the verdict it
/// must get.
struct Case {
    name: String,
    frame: Vec<u8>,
    queue: u32,
    expect: Verdict,
}

/// A case on queue 0 (where lvc's socket is bound).
fn case(expect: Verdict, name: impl Into<String>, frame: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        frame,
        queue: 0,
        expect,
    }
}

fn redirect(name: impl Into<String>, frame: Vec<u8>) -> Case {
    case(Verdict::Redirect, name, frame)
}

fn pass(name: impl Into<String>, frame: Vec<u8>) -> Case {
    case(Verdict::Pass, name, frame)
}

/// Every prefix of `f` of a length in `lens`, each to be passed.
fn truncations(what: &str, f: &[u8], lens: std::ops::Range<usize>) -> impl Iterator<Item = Case> {
    lens.map(move |n| pass(format!("{what} truncated to {n} bytes"), f[..n].to_vec()))
}

/// `f` with `bytes` written at `at`.
fn with(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

const VIP: [u8; 4] = [10, 20, 0, 10];
const RIP: [u8; 4] = [10, 20, 1, 11];
const CLIENT: [u8; 4] = [10, 20, 2, 2];
const LOCAL: [u8; 4] = [10, 20, 1, 1];
const POOL: [u8; 4] = [10, 20, 1, 100];

/// The `vips` entries of these service endpoints (service id 0, no lists).
fn vips(
    keys: impl IntoIterator<Item = EndpointKey>,
) -> std::collections::HashMap<EndpointKey, lvc_ebpf::ServiceValue> {
    keys.into_iter().map(|k| (k, Default::default())).collect()
}

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// Ethernet + IPv4 + TCP/UDP (checksums irrelevant to the program).
fn frame(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let l4 = if proto == 6 { 20 } else { 8 };
    let mut f = vec![0u8; 14 + 20 + l4 + 4];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + l4 + 4) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    if proto == 6 {
        f[46] = 5 << 4;
    }
    f
}

const VIP6: &str = "fd00:20::10";
const RIP6: &str = "fd00:21::11";
const CLIENT6: &str = "fd00:22::2";

/// Ethernet + IPv6 + TCP/UDP (or another next header).
fn frame6(next: u8, src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    let l4 = if next == 6 { 20 } else { 8 };
    let mut f = vec![0u8; 14 + 40 + l4 + 4];
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&((l4 + 4) as u16).to_be_bytes());
    f[20] = next;
    f[21] = 64;
    let a = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    f[22..38].copy_from_slice(&a(src));
    f[38..54].copy_from_slice(&a(dst));
    f[54..56].copy_from_slice(&sport.to_be_bytes());
    f[56..58].copy_from_slice(&dport.to_be_bytes());
    if next == 6 {
        f[66] = 5 << 4;
    }
    f
}

/// `f` (from [`frame6`]) as a fragment: a fragment header with this
/// offset (bytes) and more-fragments flag before its L4 bytes.
fn frag6(f: &[u8], offset: u16, more: bool) -> Vec<u8> {
    let mut g = f[..54].to_vec();
    g[20] = 44;
    g.extend_from_slice(&[f[20], 0]);
    g.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    g.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    g.extend_from_slice(&f[54..]);
    let pl = (g.len() - 54) as u16;
    g[18..20].copy_from_slice(&pl.to_be_bytes());
    g
}

/// An ICMPv6 message of `kind`/`code` from `src` to `dst` quoting the IPv6
/// packet of `quoted` (a frame).
fn icmp6(kind: u8, code: u8, src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let mut f = frame6(58, src, dst, 0, 0);
    f.truncate(54);
    f.extend_from_slice(&[kind, code, 0, 0, 0, 0, 5, 120]);
    f.extend_from_slice(&quoted[14..]);
    let pl = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&pl.to_be_bytes());
    f
}

/// An ICMP destination unreachable (fragmentation needed) from `src` to
/// `dst` quoting the first 28 bytes of the IPv4 packet of `quoted`.
fn icmp4(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let mut f = frame(17, src, dst, 0, 0);
    f.truncate(34);
    f[23] = 1;
    f.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 220]);
    f.extend_from_slice(&quoted[14..14 + 28]);
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f
}

/// Sets the IPv4 flags + fragment offset field.
fn fragment(f: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    with(f, 20, &flags_offset.to_be_bytes())
}

/// Traffic for lvc: services (ports and port ranges), replies of nat real
/// servers, fullnat replies to the SNAT pool.
fn to_lvc() -> Vec<Case> {
    let mut c = vec![
        redirect("VIP TCP", frame(6, CLIENT, VIP, 40000, 80)),
        redirect("VIP UDP", frame(17, CLIENT, VIP, 40000, 53)),
        redirect("port-0 VIP", frame(6, CLIENT, [10, 20, 0, 99], 1, 4444)),
        redirect(
            "nat reply from a real server",
            frame(6, RIP, CLIENT, 8080, 40000),
        ),
        redirect("IPv6 VIP TCP", frame6(6, CLIENT6, VIP6, 40000, 80)),
        redirect(
            "nat reply from an IPv6 real server",
            frame6(6, RIP6, CLIENT6, 8080, 40000),
        ),
    ];
    c.extend([1000, 1500, 2000, 3001].map(|port| {
        redirect(
            format!("VIP port range, port {port}"),
            frame(6, CLIENT, VIP, 40000, port),
        )
    }));
    c.push(redirect(
        "fullnat reply to a local pool address (though it is a local address)",
        frame(17, RIP, POOL, 53, 2000),
    ));
    c
}

/// ICMP errors about tracked flows are lvc's; the rest of ICMP is the
/// kernel's.
fn icmp_errors() -> Vec<Case> {
    let reply6 = frame6(6, VIP6, CLIENT6, 80, 40000);
    let ptb = icmp6(2, 0, "fd00:22::fe", VIP6, &reply6);
    let mut c = vec![
        redirect(
            "frag needed about a reply from a VIP",
            icmp4([10, 1, 1, 1], VIP, &frame(6, VIP, CLIENT, 80, 40000)),
        ),
        redirect(
            "port unreachable from a nat real server",
            icmp4(RIP, CLIENT, &frame(6, CLIENT, RIP, 40000, 8080)),
        ),
        pass(
            "real server erroring to the director itself",
            icmp4(RIP, LOCAL, &frame(6, LOCAL, RIP, 40000, 8080)),
        ),
        pass(
            "error about another flow",
            icmp4(RIP, CLIENT, &frame(6, CLIENT, RIP, 40000, 22)),
        ),
        pass(
            "echo request to a VIP",
            with(
                icmp4(CLIENT, VIP, &frame(6, VIP, CLIENT, 80, 40000)),
                34,
                &[8],
            ),
        ),
        redirect("packet too big about a reply from an IPv6 VIP", ptb.clone()),
        redirect(
            "port unreachable from an IPv6 nat real server",
            icmp6(1, 4, RIP6, CLIENT6, &frame6(6, CLIENT6, RIP6, 40000, 8080)),
        ),
        pass(
            "ICMPv6 error about another flow",
            icmp6(1, 4, RIP6, CLIENT6, &frame6(6, CLIENT6, RIP6, 40000, 22)),
        ),
    ];
    c.extend(
        [(128, "echo request"), (135, "neighbour solicitation")].map(|(kind, what)| {
            pass(
                format!("ICMPv6 {what} to a VIP"),
                icmp6(kind, 0, CLIENT6, VIP6, &reply6),
            )
        }),
    );
    c.extend(truncations("ICMPv6 error", &ptb, 54..(54 + 8 + 40 + 4)));
    c
}

/// IPv6 fragments to a VIP address (this protocol) are lvc's.
fn ipv6_fragments() -> Vec<Case> {
    let whole6 = frame6(6, CLIENT6, VIP6, 40000, 80);
    let mut c = vec![
        redirect("first IPv6 fragment to a VIP", frag6(&whole6, 0, true)),
        redirect("later IPv6 fragment to a VIP", frag6(&whole6, 1448, false)),
        redirect(
            "first IPv6 fragment of a nat reply",
            frag6(&frame6(6, RIP6, CLIENT6, 8080, 40000), 0, true),
        ),
        redirect(
            "later IPv6 fragment of that nat reply",
            frag6(&frame6(6, RIP6, CLIENT6, 8080, 40000), 1448, false),
        ),
        pass(
            "first IPv6 fragment of a nat server's own datagram",
            frag6(&frame6(6, RIP6, CLIENT6, 8080, 40001), 0, true),
        ),
        pass(
            "IPv6 fragment to another address",
            frag6(&frame6(6, CLIENT6, "fd00:20::11", 40000, 80), 8, false),
        ),
        pass(
            "IPv6 fragment to a VIP, other protocol",
            frag6(&frame6(17, CLIENT6, VIP6, 40000, 80), 8, false),
        ),
    ];
    c.extend(truncations(
        "IPv6 fragment header",
        &frag6(&whole6, 0, true),
        54..62,
    ));
    c
}

/// What is not lvc's goes to the kernel.
fn to_kernel() -> Vec<Case> {
    let mut c = vec![
        pass("VIP, other port", frame(6, CLIENT, VIP, 40000, 81)),
        pass(
            "VIP port, other protocol",
            frame(17, CLIENT, VIP, 40000, 80),
        ),
    ];
    c.extend([999, 2001, 2999, 3002].map(|port| {
        pass(
            format!("VIP, port {port} outside its ranges"),
            frame(6, CLIENT, VIP, 40000, port),
        )
    }));
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    c.extend([
        pass(
            "VIP port range, other protocol",
            frame(17, CLIENT, VIP, 40000, 1500),
        ),
        pass("not a VIP", frame(6, CLIENT, [10, 20, 0, 11], 40000, 80)),
        pass(
            "real server answering the director itself",
            frame(6, RIP, LOCAL, 8080, 40000),
        ),
        pass(
            "real server, other port",
            frame(6, RIP, CLIENT, 8081, 40000),
        ),
        pass(
            "nat real server's own traffic from its service port",
            frame(6, RIP, CLIENT, 8080, 40001),
        ),
        pass(
            "nat real server's own UDP from its service port",
            frame(17, RIP, [10, 20, 2, 53], 8080, 40000),
        ),
        pass("ARP", arp),
        pass(
            "VLAN-tagged",
            with(frame(6, CLIENT, VIP, 40000, 80), 12, &[0x81, 0x00]),
        ),
        pass(
            "IPv4 header behind an IPv6 ethertype",
            with(frame(6, CLIENT, VIP, 40000, 80), 12, &[0x86, 0xdd]),
        ),
        pass("IPv6 VIP, other port", frame6(6, CLIENT6, VIP6, 40000, 81)),
        pass(
            "IPv6 VIP, other protocol",
            frame6(17, CLIENT6, VIP6, 40000, 80),
        ),
        pass(
            "IPv6, not a VIP",
            frame6(6, CLIENT6, "fd00:20::11", 40000, 80),
        ),
        pass(
            "ICMPv6 (neighbour discovery) to a VIP",
            frame6(58, CLIENT6, VIP6, 0, 0),
        ),
        pass(
            "IPv6 fragment header followed by neither TCP nor UDP",
            frame6(44, CLIENT6, VIP6, 0, 0),
        ),
        pass(
            "IPv6 real server, other port",
            frame6(6, RIP6, CLIENT6, 8081, 40000),
        ),
        pass(
            "IPv6 nat real server's own traffic from its service port",
            frame6(6, RIP6, CLIENT6, 8080, 40001),
        ),
    ]);
    c.extend(truncations(
        "IPv6",
        &frame6(6, CLIENT6, VIP6, 40000, 80),
        14..(14 + 40 + 20),
    ));
    c.push(pass(
        "ICMP to a VIP",
        with(frame(6, CLIENT, VIP, 40000, 80), 23, &[1]),
    ));
    c
}

/// IPv4 fragments to a VIP address (any port, this protocol) are lvc's,
/// and so are a tracked nat reply's (the later ones follow the first); any
/// other goes to the kernel.
fn ipv4_fragments() -> Vec<Case> {
    let reply = frame(17, RIP, CLIENT, 8080, 40000);
    let other_id = |f: Vec<u8>| with(f, 18, &[0x12, 0x34]);
    vec![
        redirect(
            "later fragment to a VIP",
            fragment(frame(17, CLIENT, VIP, 40000, 53), 0x0010),
        ),
        redirect(
            "first fragment to a VIP",
            fragment(frame(17, CLIENT, VIP, 40000, 53), 0x2000),
        ),
        pass(
            "fragment to another address",
            fragment(frame(17, CLIENT, [10, 20, 0, 11], 40000, 53), 0x0010),
        ),
        redirect(
            "first fragment of a nat reply",
            fragment(reply.clone(), 0x2000),
        ),
        redirect(
            "later fragment of that nat reply",
            fragment(reply.clone(), 0x0010),
        ),
        pass(
            "later fragment of another datagram from the nat server",
            other_id(fragment(reply, 0x0010)),
        ),
        pass(
            "first fragment of a nat server's own datagram",
            other_id(fragment(frame(17, RIP, CLIENT, 8080, 40001), 0x2000)),
        ),
    ]
}

/// Headers that are not all there go to the kernel. (The kernel refuses
/// test frames shorter than an Ethernet header.)
fn malformed() -> Vec<Case> {
    let mut c = vec![pass(
        "IP total length shorter than its headers",
        with(frame(6, CLIENT, VIP, 40000, 80), 16, &30u16.to_be_bytes()),
    )];
    for (proto, what, port, l4_min) in [(6, "TCP", 80, 20), (17, "UDP", 53, 8)] {
        c.extend(truncations(
            &format!("{what} to a VIP"),
            &frame(proto, CLIENT, VIP, 40000, port),
            14..(14 + 20 + l4_min),
        ));
    }
    c
}

/// A queue without a socket: pass, never drop.
fn no_socket() -> Vec<Case> {
    vec![Case {
        queue: 1,
        ..pass("no socket on queue", frame(6, CLIENT, VIP, 40000, 80))
    }]
}

fn cases() -> Vec<Case> {
    [
        to_lvc(),
        icmp_errors(),
        ipv6_fragments(),
        to_kernel(),
        ipv4_fragments(),
        malformed(),
        no_socket(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[test]
fn xdp_program_steers_exactly_lvc_traffic() {
    if !privileged("xdp_program_steers_exactly_lvc_traffic") {
        return;
    }
    let cases = cases();
    let mut names = HashSet::new();
    for c in &cases {
        assert!(names.insert(&c.name), "two cases named `{}`", c.name);
    }
    let mut lab = Lab::new("xdp");
    lab.add_ns("a");
    lab.add_ns("b");
    lab.veth(("a", "v0"), ("b", "v1"), 2);
    let ns = lab.ns("a");
    // BPF objects, sockets and ifindexes are per namespace: do it all on a
    // thread that lives in the lab's namespace.
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter namespace");
        // (/sys still shows the original namespace: ask rtnetlink.)
        let (routes, _) = lvc_dataplane::net::route::RouteMonitor::start().expect("rtnetlink");
        let ifindex = routes.table.load().link_by_name("v0").expect("v0").ifindex;
        let mut st = Steering::load().expect("program loads and passes the verifier");
        let io = WorkerIo::open(&["v0".to_owned()], 0, IoConfig::default())
            .expect("AF_XDP socket on v0 queue 0");
        st.set_slot(ifindex, 0).unwrap();
        st.set_socket(0, 0, io.socket_fd(0)).unwrap();
        let ip6 = |s: &str| s.parse::<IpAddr>().unwrap();
        st.sync_vips(&vips([
            EndpointKey::new(ip6(VIP6), 6, 80),
            EndpointKey::new(ip(VIP), 6, 80),
            EndpointKey::new(ip(VIP), 17, 53),
            EndpointKey::new(ip([10, 20, 0, 99]), 6, 0),
        ]))
        .unwrap();
        // Port ranges of VIP/tcp (two services: 1000-2000 and 3000-3001).
        st.sync_vipranges(&std::collections::HashMap::from([(
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 6),
            lvc_ebpf::PortRanges::new(&[
                ((1000, 2000), Default::default()),
                ((3000, 3001), Default::default()),
            ])
            .unwrap(),
        )]))
        .unwrap();
        st.sync_fragvips(&HashSet::from([
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 6),
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 17),
            lvc_ebpf::AddrKey::with_proto(ip6(VIP6), 6),
        ]))
        .unwrap();
        // The replies of three tracked nat connections.
        let replies = st.replies();
        for (proto, rip, client) in [
            (6, ip(RIP), ip(CLIENT)),
            (17, ip(RIP), ip(CLIENT)),
            (6, ip6(RIP6), ip6(CLIENT6)),
        ] {
            replies
                .add(lvc_ebpf::FlowKey::new(proto, (rip, 8080), (client, 40000)))
                .unwrap();
        }
        st.sync_snat(&[ip(POOL)]).unwrap();

        let before = st.counters();
        let mut wrong = Vec::new();
        for c in &cases {
            match st.test_run(&c.frame, ifindex, c.queue) {
                Ok(v) if v == c.expect.code() => {}
                Ok(v) => {
                    let got = match v {
                        XDP_REDIRECT => "Redirect".to_owned(),
                        XDP_PASS => "Pass".to_owned(),
                        v => format!("XDP action {v}"),
                    };
                    wrong.push(format!("{}: expected {:?}, got {got}", c.name, c.expect));
                }
                Err(e) => wrong.push(format!("{}: test run failed: {e}", c.name)),
            }
        }
        let redirects = cases
            .iter()
            .filter(|c| c.expect == Verdict::Redirect)
            .count();
        eprintln!(
            "{} cases: {redirects} to lvc, {} to the kernel",
            cases.len(),
            cases.len() - redirects
        );

        let after = st.counters();
        let delta = |s: Stat| {
            after.iter().find(|(k, _)| *k == s).unwrap().1
                - before.iter().find(|(k, _)| *k == s).unwrap().1
        };
        for (stat, want) in [
            (Stat::RedirectVip, 14),
            (Stat::RedirectReal, 9),
            (Stat::PassNoSocket, 1),
            (Stat::PassFragment, 6),
        ] {
            if delta(stat) != want {
                wrong.push(format!(
                    "counter {stat:?}: expected +{want}, got +{}",
                    delta(stat)
                ));
            }
        }
        if delta(Stat::PassMalformed) < 2 * 20 {
            wrong.push(format!(
                "counter PassMalformed: expected at least +40, got +{}",
                delta(Stat::PassMalformed)
            ));
        }
        assert!(
            wrong.is_empty(),
            "{} wrong (of {} cases, and the counters):\n  {}",
            wrong.len(),
            cases.len(),
            wrong.join("\n  ")
        );
        // The dataplane dies (its socket closes; the kernel takes it out
        // of the XSKMAP): a queue it served drops VIP traffic instead of
        // passing it to the kernel, until the next process binds again.
        drop(io);
        let vip = frame(6, CLIENT, VIP, 40000, 80);
        let before = st.counters();
        assert_eq!(st.test_run(&vip, ifindex, 0).unwrap(), XDP_DROP);
        // (A queue never served still passes.)
        assert_eq!(st.test_run(&vip, ifindex, 1).unwrap(), XDP_PASS);
        let after = st.counters();
        let n = |c: &[(Stat, u64)]| {
            c.iter()
                .find(|(k, _)| *k == Stat::DropNoDataplane)
                .unwrap()
                .1
        };
        assert_eq!(n(&after) - n(&before), 1);
    })
    .join()
    .expect("test thread");
}

/// More nat connections than the shared reply table has slots: the keys
/// that find their window full go to the `replies` hash map, and XDP finds
/// every one of them either way (and none once removed).
#[test]
fn every_steered_reply_is_found_in_the_table_or_its_overflow() {
    if !privileged("every_steered_reply_is_found_in_the_table_or_its_overflow") {
        return;
    }
    let mut lab = Lab::new("xdprep");
    lab.add_ns("a");
    lab.add_ns("b");
    lab.veth(("a", "v0"), ("b", "v1"), 1);
    let ns = lab.ns("a");
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter namespace");
        let (routes, _) = lvc_dataplane::net::route::RouteMonitor::start().expect("rtnetlink");
        let ifindex = routes.table.load().link_by_name("v0").expect("v0").ifindex;
        // The smallest table: 2048 slots.
        let mut st = Steering::load_for(1024).expect("program loads");
        let io = WorkerIo::open(&["v0".to_owned()], 0, IoConfig::default()).expect("socket");
        st.set_slot(ifindex, 0).unwrap();
        st.set_socket(0, 0, io.socket_fd(0)).unwrap();
        let replies = st.replies();
        let client = |i: u32| [10, 20, 2 + (i >> 8) as u8, i as u8];
        let n = 2500;
        for i in 0..n {
            replies
                .add(lvc_ebpf::FlowKey::new(
                    17,
                    (ip(RIP), 8080),
                    (ip(client(i)), 40000),
                ))
                .unwrap();
        }
        let verdict = |st: &mut Steering, i: u32| {
            st.test_run(&frame(17, RIP, client(i), 8080, 40000), ifindex, 0)
                .unwrap()
        };
        let missed: Vec<u32> = (0..n)
            .filter(|&i| verdict(&mut st, i) != XDP_REDIRECT)
            .collect();
        assert!(missed.is_empty(), "replies not steered: {missed:?}");
        for i in 0..n {
            replies.remove(&lvc_ebpf::FlowKey::new(
                17,
                (ip(RIP), 8080),
                (ip(client(i)), 40000),
            ));
        }
        let kept: Vec<u32> = (0..n)
            .filter(|&i| verdict(&mut st, i) != XDP_PASS)
            .collect();
        assert!(kept.is_empty(), "replies still steered: {kept:?}");
        drop(io);
    })
    .join()
    .expect("test thread");
}

/// An offloaded connection's RSTs and FINs reach lvc (which ends the
/// connection) only near where its sender's stream is: a blind attacker's
/// guessed one is forwarded as it is (its endpoint judges it too) and
/// counted, or dropped if XDP cannot forward it; the stream's position
/// follows the segments XDP forwards. IPv4 and IPv6.
#[test]
fn offloaded_flows_keep_blind_resets_from_lvc() {
    if !privileged("offloaded_flows_keep_blind_resets_from_lvc") {
        return;
    }
    const XDP_TX: u32 = 3;
    let mut lab = Lab::new("xdpseq");
    lab.add_ns("a");
    lab.add_ns("b");
    lab.veth(("a", "v0"), ("b", "v1"), 1);
    let ns = lab.ns("a");
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter namespace");
        let (routes, _) = lvc_dataplane::net::route::RouteMonitor::start().expect("rtnetlink");
        let ifindex = routes.table.load().link_by_name("v0").expect("v0").ifindex;
        let mut st = Steering::load().expect("program loads and passes the verifier");
        let io = WorkerIo::open(&["v0".to_owned()], 0, IoConfig::default())
            .expect("AF_XDP socket on v0 queue 0");
        st.set_slot(ifindex, 0).unwrap();
        st.set_socket(0, 0, io.socket_fd(0)).unwrap();
        st.set_egress(0, ifindex).unwrap();
        let mut flows = st.take_flows().expect("the flow map");
        let ip6 = |s: &str| s.parse::<IpAddr>().unwrap();
        st.sync_vips(&vips([
            EndpointKey::new(ip6(VIP6), 6, 80),
            EndpointKey::new(ip(VIP), 6, 80),
        ]))
        .unwrap();
        let v4 = lvc_ebpf::FlowKey::new(6, (ip(CLIENT), 40000), (ip(VIP), 80));
        let v6 = lvc_ebpf::FlowKey::new(6, (ip6(CLIENT6), 40000), (ip6(VIP6), 80));
        let unknown = lvc_ebpf::FlowKey::new(6, (ip(CLIENT), 40001), (ip(VIP), 80));
        let value = |seq_next| lvc_ebpf::FlowValue {
            egress_ifindex: ifindex,
            mtu: 1500,
            seq_next,
            ..Default::default()
        };
        flows.insert(v4, value(1000)).unwrap();
        flows.insert(v6, value(1000)).unwrap();
        flows.insert(unknown, value(0)).unwrap();
        // (seq at `at`, flags at `at + 9`; 4 bytes of payload.)
        let seg = |f: Vec<u8>, at: usize, seq: u32, flags: u8| {
            let mut f = with(f, at, &seq.to_be_bytes());
            f[at + 9] = flags;
            f
        };
        let seg4 = |seq, flags| seg(frame(6, CLIENT, VIP, 40000, 80), 38, seq, flags);
        let seg6 = |seq, flags| seg(frame6(6, CLIENT6, VIP6, 40000, 80), 58, seq, flags);
        const ACK: u8 = 0x10;
        const RST: u8 = 0x04;
        const FIN_ACK: u8 = 0x11;
        let far = 1004u32.wrapping_add(3 << 20);
        let before = st.counters();
        let mut wrong = Vec::new();
        for (name, f, want) in [
            ("data in the window", seg4(1000, ACK), XDP_TX),
            ("a RST far ahead", seg4(far, RST), XDP_TX),
            (
                "a RST far behind",
                seg4(1004u32.wrapping_sub(1 << 17), RST),
                XDP_TX,
            ),
            ("a FIN far ahead", seg4(far, FIN_ACK), XDP_TX),
            ("data far ahead (not learned)", seg4(far, ACK), XDP_TX),
            (
                "a RST far ahead with IP options",
                {
                    // Four NOP options after the fixed header.
                    let mut f = seg4(far, RST);
                    f.splice(34..34, [1u8; 4]);
                    f[14] = 0x46;
                    f[17] += 4;
                    f
                },
                XDP_DROP,
            ),
            ("a RST where the stream is", seg4(1004, RST), XDP_REDIRECT),
            (
                "a FIN a little ahead",
                seg4(1004 + 3000, FIN_ACK),
                XDP_REDIRECT,
            ),
            ("IPv6 data", seg6(1000, ACK), XDP_TX),
            ("an IPv6 RST far ahead", seg6(far, RST), XDP_TX),
            (
                "an IPv6 RST where the stream is",
                seg6(1004, RST),
                XDP_REDIRECT,
            ),
            (
                "a RST of a stream XDP does not know yet",
                seg(frame(6, CLIENT, VIP, 40001, 80), 38, far, RST),
                XDP_REDIRECT,
            ),
        ] {
            match st.test_run(&f, ifindex, 0) {
                Ok(v) if v == want => {}
                other => wrong.push(format!("{name}: expected action {want}, got {other:?}")),
            }
        }
        let after = st.counters();
        let delta = |s: Stat| {
            after.iter().find(|(k, _)| *k == s).unwrap().1
                - before.iter().find(|(k, _)| *k == s).unwrap().1
        };
        if delta(Stat::FlowOutOfWindow) != 5 {
            wrong.push(format!(
                "counter FlowOutOfWindow: expected +5, got +{}",
                delta(Stat::FlowOutOfWindow)
            ));
        }
        let learned = flows.get(&v4).unwrap().seq_next;
        if learned != 1004 {
            wrong.push(format!("IPv4 stream at {learned}, expected 1004"));
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        drop(io);
    })
    .join()
    .expect("test thread");
}

/// Packet torture through the XDP program: each frame goes to lvc (which
/// forwards it or drops it, counted) or to the kernel — never anything
/// else, and the program's counters account for every one.
#[test]
fn xdp_program_survives_torture() {
    if !privileged("xdp_program_survives_torture") {
        return;
    }
    let mut cases: Vec<Case> = Vec::new();
    // Every TCP flag combination to a VIP: lvc's (it judges the flags).
    for flags in 0..=255u8 {
        let mut f = frame(6, CLIENT, VIP, 40000, 80);
        f[47] = flags;
        cases.push(redirect(format!("TCP flags {flags:#04x} to a VIP"), f));
    }
    let udp = |payload: usize| {
        let mut f = frame(17, CLIENT, VIP, 40000, 53);
        f.truncate(14 + 20 + 8 + payload);
        let ip_len = (20 + 8 + payload) as u16;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[38..40].copy_from_slice(&(8 + payload as u16).to_be_bytes());
        f
    };
    let options = {
        let mut f = frame(6, CLIENT, VIP, 40000, 80);
        f.splice(34..34, [1u8, 1, 1, 0]);
        f[14] = 0x46;
        f[17] += 4;
        f
    };
    let v6_next = |next: u8| {
        let mut f = frame6(17, CLIENT6, VIP6, 40000, 53);
        f[20] = next;
        f
    };
    cases.extend([
        redirect("zero-length UDP to a VIP", udp(0)),
        redirect("UDP checksum 0 to a VIP", with(udp(4), 40, &[0, 0])),
        redirect("IP options, TCP to a VIP", options),
        redirect(
            "TTL 0 to a VIP",
            with(frame(6, CLIENT, VIP, 40000, 80), 22, &[0]),
        ),
        redirect(
            "TTL 1 to a VIP",
            with(frame(6, CLIENT, VIP, 40000, 80), 22, &[1]),
        ),
        // (lvc reads the lengths itself and drops it, counted.)
        redirect(
            "IP total length beyond the frame",
            with(frame(6, CLIENT, VIP, 40000, 80), 16, &1400u16.to_be_bytes()),
        ),
        pass("IHL 0", with(frame(6, CLIENT, VIP, 40000, 80), 14, &[0x40])),
        pass("IHL 4", with(frame(6, CLIENT, VIP, 40000, 80), 14, &[0x44])),
        pass(
            "IHL 15 past the frame",
            with(frame(6, CLIENT, VIP, 40000, 80), 14, &[0x4f]),
        ),
        pass(
            "IP version 6 in an IPv4 frame",
            with(frame(6, CLIENT, VIP, 40000, 80), 14, &[0x65]),
        ),
        pass(
            "QinQ-tagged",
            with(frame(6, CLIENT, VIP, 40000, 80), 12, &[0x88, 0xa8]),
        ),
        pass("IPv6 hop-by-hop options to a VIP", v6_next(0)),
        pass("IPv6 routing header to a VIP", v6_next(43)),
        pass("IPv6 destination options to a VIP", v6_next(60)),
        pass("IPv6 no next header to a VIP", v6_next(59)),
        redirect(
            "an out-of-order later fragment to a VIP",
            fragment(frame(17, CLIENT, VIP, 40000, 53), 0x0003),
        ),
        redirect(
            "an overlapping later fragment to a VIP",
            fragment(frame(17, CLIENT, VIP, 40000, 53), 0x2001),
        ),
        pass(
            "a first fragment too short for its ports",
            fragment(frame(17, CLIENT, VIP, 40000, 53), 0x2000)[..14 + 20 + 2].to_vec(),
        ),
        pass("ICMP error quoting a truncated header", {
            // (Only the quoted IP header and 2 bytes of its ports.)
            let mut e = icmp4(RIP, CLIENT, &frame(6, CLIENT, VIP, 40000, 80));
            e.truncate(14 + 20 + 8 + 20 + 2);
            let ip_len = (e.len() - 14) as u16;
            e[16..18].copy_from_slice(&ip_len.to_be_bytes());
            e
        }),
        pass(
            "ICMP error quoting an untracked flow",
            icmp4(RIP, CLIENT, &frame(6, CLIENT, RIP, 40001, 8080)),
        ),
    ]);
    for n in 14..(14 + 40 + 8) {
        cases.push(pass(
            format!("IPv6 UDP truncated to {n} bytes"),
            frame6(17, CLIENT6, VIP6, 40000, 53)[..n].to_vec(),
        ));
    }
    let mut lab = Lab::new("xdptort");
    lab.add_ns("a");
    lab.add_ns("b");
    lab.veth(("a", "v0"), ("b", "v1"), 1);
    let ns = lab.ns("a");
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter namespace");
        let (routes, _) = lvc_dataplane::net::route::RouteMonitor::start().expect("rtnetlink");
        let ifindex = routes.table.load().link_by_name("v0").expect("v0").ifindex;
        let mut st = Steering::load().expect("program loads and passes the verifier");
        let io = WorkerIo::open(&["v0".to_owned()], 0, IoConfig::default())
            .expect("AF_XDP socket on v0 queue 0");
        st.set_slot(ifindex, 0).unwrap();
        st.set_socket(0, 0, io.socket_fd(0)).unwrap();
        let ip6 = |s: &str| s.parse::<IpAddr>().unwrap();
        st.sync_vips(&vips([
            EndpointKey::new(ip6(VIP6), 6, 80),
            EndpointKey::new(ip6(VIP6), 17, 53),
            EndpointKey::new(ip(VIP), 6, 80),
            EndpointKey::new(ip(VIP), 17, 53),
        ]))
        .unwrap();
        st.sync_fragvips(&HashSet::from([lvc_ebpf::AddrKey::with_proto(ip(VIP), 17)]))
            .unwrap();
        let before = st.counters();
        let mut wrong = Vec::new();
        for c in &cases {
            match st.test_run(&c.frame, ifindex, 0) {
                Ok(v) if v == c.expect.code() => {}
                other => wrong.push(format!(
                    "{}: expected {:?}, got {other:?}",
                    c.name, c.expect
                )),
            }
        }
        let after = st.counters();
        let total = |c: &[(Stat, u64)], which: &dyn Fn(Stat) -> bool| -> u64 {
            c.iter().filter(|(k, _)| which(*k)).map(|(_, v)| v).sum()
        };
        let rx = total(&after, &|s| s == Stat::Rx) - total(&before, &|s| s == Stat::Rx);
        let decided = total(&after, &|s| s != Stat::Rx) - total(&before, &|s| s != Stat::Rx);
        if rx != cases.len() as u64 || decided != rx {
            wrong.push(format!(
                "counters: {} frames, rx +{rx}, decisions +{decided}",
                cases.len()
            ));
        }
        assert!(
            wrong.is_empty(),
            "{} wrong:\n  {}",
            wrong.len(),
            wrong.join("\n  ")
        );
        drop(io);
    })
    .join()
    .expect("test thread");
}

/// The filter in the XDP program: global rules in their order (first match
/// decides; an accept rule ends the walk; a `--real` rule leaves the
/// decision to lvc), their protocol, port and interface fields, rules on
/// ICMP and later fragments to a VIP address, a service's allow/deny lists
/// (longest prefix decides, the allow list shuts everyone else out), both
/// families, offloaded flows included; traffic not to a VIP is never
/// filtered. Every drop is counted by rule, by service and by reason.
#[test]
fn xdp_filter_drops_what_its_rules_match() {
    use lvc_ebpf::{
        ACL_ALLOW, ACL_DENY, ACL_SCOPE_SERVICE, ACL_SCOPE_SRC, AclData, FR_ACCEPT, FR_DPORT,
        FR_DROP, FR_IFACE, FR_PROTO, FR_USERSPACE, FilterOrder, FilterRuleValue, SVC_ACL,
        SVC_ALLOWLIST, ServiceValue,
    };
    if !privileged("xdp_filter_drops_what_its_rules_match") {
        return;
    }
    let mut lab = Lab::new("xdpflt");
    lab.add_ns("a");
    lab.add_ns("b");
    lab.veth(("a", "v0"), ("b", "v1"), 1);
    let ns = lab.ns("a");
    std::thread::spawn(move || {
        netns::enter(&ns).expect("enter namespace");
        let (routes, _) = lvc_dataplane::net::route::RouteMonitor::start().expect("rtnetlink");
        let ifindex = routes.table.load().link_by_name("v0").expect("v0").ifindex;
        let mut st = Steering::load().expect("program loads and passes the verifier");
        let io = WorkerIo::open(&["v0".to_owned()], 0, IoConfig::default()).expect("socket");
        st.set_slot(ifindex, 0).unwrap();
        st.set_socket(0, 0, io.socket_fd(0)).unwrap();
        st.set_egress(0, ifindex).unwrap();
        let ip6 = |s: &str| s.parse::<IpAddr>().unwrap();
        // Services: VIP:80/tcp (id 1), VIP:53/udp (id 2), VIP:8080/tcp
        // with lists (id 7), VIP6:80/tcp (id 3).
        let acl_svc = ServiceValue {
            id: 7,
            flags: SVC_ACL | SVC_ALLOWLIST,
        };
        st.sync_vips(&std::collections::HashMap::from([
            (EndpointKey::new(ip(VIP), 6, 80), ServiceValue { id: 1, flags: 0 }),
            (EndpointKey::new(ip(VIP), 17, 53), ServiceValue { id: 2, flags: 0 }),
            (EndpointKey::new(ip(VIP), 6, 8080), acl_svc),
            (EndpointKey::new(ip6(VIP6), 6, 80), ServiceValue { id: 3, flags: 0 }),
        ]))
        .unwrap();
        st.sync_fragvips(&HashSet::from([
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 6),
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 17),
        ]))
        .unwrap();
        // Rules, in order (slot: what):
        //  3: accept from 198.51.100.0/24
        //  4: lvc decides (--real) for 203.0.113.0/24
        //  0: drop from 192.0.2.0/24, tcp port 80-81
        //  1: drop from 198.51.0.0/16 (and fd00:66::/32), any protocol
        //  5: drop from 203.0.113.0/24 on another interface
        //  2: drop from 203.0.113.0/24
        let mut acl = std::collections::HashMap::new();
        let mut put = |scope: u32, a: &str, len: u8, v: u64| {
            let (d, plen) = AclData::prefix(scope, ip6(a), len);
            acl.insert((d.scope, d.addr, plen), v);
        };
        put(ACL_SCOPE_SRC, "192.0.2.0", 24, 1 << 0);
        put(ACL_SCOPE_SRC, "198.51.0.0", 16, 1 << 1);
        put(ACL_SCOPE_SRC, "198.51.100.0", 24, (1 << 1) | (1 << 3));
        put(ACL_SCOPE_SRC, "fd00:66::", 32, 1 << 1);
        // An IPv6 bogon list's ::/8 (and the mapped range) must not hold
        // IPv4 clients.
        put(ACL_SCOPE_SRC, "::", 8, 1 << 1);
        put(ACL_SCOPE_SRC, "::ffff:0:0", 96, 1 << 1);
        put(ACL_SCOPE_SRC, "203.0.113.0", 24, (1 << 2) | (1 << 4) | (1 << 5));
        // Service 7: allow 10.20.2.0/24 but not its upper half.
        put(ACL_SCOPE_SERVICE + 7, "10.20.2.0", 24, ACL_ALLOW);
        put(ACL_SCOPE_SERVICE + 7, "10.20.2.128", 25, ACL_DENY);
        st.sync_acl(|_| true, &acl).unwrap();
        let rule = |action, flags, proto, ports: (u16, u16), ifindex| FilterRuleValue {
            action,
            proto,
            flags,
            pad: 0,
            dport_lo: ports.0,
            dport_hi: ports.1,
            ifindex,
        };
        st.set_rule(0, rule(FR_DROP, FR_PROTO | FR_DPORT, 6, (80, 81), 0))
            .unwrap();
        st.set_rule(1, rule(FR_DROP, 0, 0, (0, 0), 0)).unwrap();
        st.set_rule(2, rule(FR_DROP, 0, 0, (0, 0), 0)).unwrap();
        st.set_rule(3, rule(FR_ACCEPT, 0, 0, (0, 0), 0)).unwrap();
        st.set_rule(4, rule(FR_USERSPACE, FR_PROTO, 17, (0, 0), 0))
            .unwrap();
        st.set_rule(5, rule(FR_DROP, FR_IFACE, 0, (0, 0), ifindex + 100))
            .unwrap();
        for s in 0..6 {
            st.zero_rule_stats(s).unwrap();
        }
        let mut order = FilterOrder {
            n: 6,
            ..Default::default()
        };
        order.slot[..6].copy_from_slice(&[3, 4, 0, 1, 5, 2]);
        // No rule names a destination: all match every VIP.
        order.dst_any4 = 0x3f;
        order.dst_any6 = 0x3f;
        st.set_order(&order).unwrap();
        st.set_acl_services(1).unwrap();
        // An offloaded flow of a client that rule 0 now drops.
        let mut flows = st.take_flows().expect("the flow map");
        let offloaded = lvc_ebpf::FlowKey::new(6, (ip([192, 0, 2, 9]), 40000), (ip(VIP), 80));
        flows
            .insert(
                offloaded,
                lvc_ebpf::FlowValue {
                    egress_ifindex: ifindex,
                    mtu: 1500,
                    ..Default::default()
                },
            )
            .unwrap();

        const B: [u8; 4] = [192, 0, 2, 5];
        let later = fragment(frame(17, [198, 51, 7, 7], VIP, 0, 0), 0x0010);
        let later_b = fragment(frame(6, B, VIP, 0, 0), 0x0010);
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            ("tcp 80 from a dropped /24", frame(6, B, VIP, 1000, 80), XDP_DROP),
            ("the offloaded flow of a dropped client", frame(6, [192, 0, 2, 9], VIP, 40000, 80), XDP_DROP),
            ("udp 53 from it: the rule names tcp 80-81", frame(17, B, VIP, 1000, 53), XDP_REDIRECT),
            ("tcp 8080 from it: out of the port range (and the list)", frame(6, B, VIP, 1000, 8080), XDP_DROP),
            ("its later fragment: port rules match it (its first decided)", later_b, XDP_DROP),
            ("from a dropped /16", frame(17, [198, 51, 7, 7], VIP, 1, 53), XDP_DROP),
            ("a later fragment from it", later, XDP_DROP),
            ("ICMP from it: only rules naming ICMP look at it", icmp4([198, 51, 7, 7], VIP, &frame(6, VIP, [198, 51, 7, 7], 80, 1)), XDP_REDIRECT),
            ("from it but not to a VIP", frame(6, [198, 51, 7, 7], RIP, 1, 80), XDP_PASS),
            ("from the accepted /24 inside it", frame(17, [198, 51, 100, 1], VIP, 1, 53), XDP_REDIRECT),
            ("udp from the --real /24: lvc decides", frame(17, [203, 0, 113, 1], VIP, 1, 53), XDP_REDIRECT),
            ("tcp from it: the --real rule names udp; the interface rule does not match; the last drops", frame(6, [203, 0, 113, 1], VIP, 1, 80), XDP_DROP),
            ("IPv6 from a dropped /32", frame6(6, "fd00:66::1", VIP6, 1, 80), XDP_DROP),
            ("IPv6 from elsewhere", frame6(6, CLIENT6, VIP6, 1, 80), XDP_REDIRECT),
            ("allowed by the service's list", frame(6, [10, 20, 2, 5], VIP, 1, 8080), XDP_REDIRECT),
            ("denied by its longer prefix", frame(6, [10, 20, 2, 200], VIP, 1, 8080), XDP_DROP),
            ("in no prefix of its allow list", frame(6, [10, 30, 0, 1], VIP, 1, 8080), XDP_DROP),
            ("the same client to another service", frame(6, [10, 30, 0, 1], VIP, 1, 80), XDP_REDIRECT),
        ];
        let before = st.counters();
        let mut wrong = Vec::new();
        for (name, f, want) in &cases {
            match st.test_run(f, ifindex, 0) {
                Ok(v) if v == *want => {}
                Ok(v) => wrong.push(format!("{name}: expected action {want}, got {v}")),
                Err(e) => wrong.push(format!("{name}: {e}")),
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let after = st.counters();
        let grew = |s: Stat| {
            let get = |v: &[(Stat, u64)]| v.iter().find(|(x, _)| *x == s).unwrap().1;
            get(&after) - get(&before)
        };
        assert_eq!(grew(Stat::DropFilter), 7, "drops by global rules");
        assert_eq!(grew(Stat::DropServiceAcl), 3, "drops by the service's lists");
        let packets = |slot| st.rule_stats(slot).packets;
        assert_eq!(
            [0, 1, 2, 3, 4, 5].map(packets),
            [3, 3, 1, 1, 0, 0],
            "matches per slot (accepts counted, --real left to lvc)"
        );
        assert!(st.rule_stats(0).bytes > 0);
        assert_eq!(st.service_drops(1).packets, 3, "VIP:80 lost 3");
        assert_eq!(st.service_drops(7).packets, 3, "VIP:8080 lost 3");
        assert_eq!(st.service_drops(2).packets, 1, "VIP:53 lost 1");
        assert_eq!(st.service_drops(3).packets, 1, "VIP6:80 lost 1");
        // Rules gone: nothing is filtered.
        st.set_order(&FilterOrder::default()).unwrap();
        st.set_acl_services(0).unwrap();
        assert_eq!(
            st.test_run(&frame(6, B, VIP, 1000, 80), ifindex, 0).unwrap(),
            XDP_REDIRECT
        );
        drop(io);
    })
    .join()
    .expect("test thread");
}
