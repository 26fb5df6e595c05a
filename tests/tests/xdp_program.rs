//! The XDP steering program, run through BPF_PROG_TEST_RUN on crafted
//! frames (privileged: loads BPF, binds an AF_XDP socket in a namespace).

use lvc_dataplane::io::steer::Steering;
use lvc_dataplane::io::xsk::{IoConfig, WorkerIo};
use lvc_ebpf::{EndpointKey, Stat};
use lvc_tests::{Lab, netns, privileged};
use std::collections::HashSet;
use std::net::IpAddr;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: [u8; 4] = [10, 20, 0, 10];
const RIP: [u8; 4] = [10, 20, 1, 11];
const CLIENT: [u8; 4] = [10, 20, 2, 2];
const LOCAL: [u8; 4] = [10, 20, 1, 1];
const POOL: [u8; 4] = [10, 20, 1, 100];

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

#[test]
fn xdp_program_steers_exactly_lvc_traffic() {
    if !privileged("xdp_program_steers_exactly_lvc_traffic") {
        return;
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
        st.sync_vips(&HashSet::from([
            EndpointKey::new(ip6(VIP6), 6, 80),
            EndpointKey::new(ip(VIP), 6, 80),
            EndpointKey::new(ip(VIP), 17, 53),
            EndpointKey::new(ip([10, 20, 0, 99]), 6, 0),
        ]))
        .unwrap();
        // Port ranges of VIP/tcp (two services: 1000-2000 and 3000-3001).
        st.sync_vipranges(&std::collections::HashMap::from([(
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 6),
            lvc_ebpf::PortRanges::new(&[(1000, 2000), (3000, 3001)]).unwrap(),
        )]))
        .unwrap();
        st.sync_fragvips(&HashSet::from([
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 6),
            lvc_ebpf::AddrKey::with_proto(ip(VIP), 17),
            lvc_ebpf::AddrKey::with_proto(ip6(VIP6), 6),
        ]))
        .unwrap();
        st.sync_reals(&HashSet::from([
            EndpointKey::new(ip(RIP), 6, 8080),
            EndpointKey::new(ip6(RIP6), 6, 8080),
        ]))
        .unwrap();
        st.sync_locals(&[ip(LOCAL), ip(POOL)]).unwrap();
        st.sync_snat(&[ip(POOL)]).unwrap();

        let run =
            |st: &mut Steering, f: &[u8], q: u32| st.test_run(f, ifindex, q).expect("test run");
        let before = st.counters();

        // To lvc.
        assert_eq!(
            run(&mut st, &frame(6, CLIENT, VIP, 40000, 80), 0),
            XDP_REDIRECT,
            "VIP TCP"
        );
        assert_eq!(
            run(&mut st, &frame(17, CLIENT, VIP, 40000, 53), 0),
            XDP_REDIRECT,
            "VIP UDP"
        );
        assert_eq!(
            run(&mut st, &frame(6, CLIENT, [10, 20, 0, 99], 1, 4444), 0),
            XDP_REDIRECT,
            "port-0 VIP"
        );
        assert_eq!(
            run(&mut st, &frame(6, RIP, CLIENT, 8080, 40000), 0),
            XDP_REDIRECT,
            "nat reply from a real server"
        );
        assert_eq!(
            run(&mut st, &frame6(6, CLIENT6, VIP6, 40000, 80), 0),
            XDP_REDIRECT,
            "IPv6 VIP TCP"
        );
        assert_eq!(
            run(&mut st, &frame6(6, RIP6, CLIENT6, 8080, 40000), 0),
            XDP_REDIRECT,
            "nat reply from an IPv6 real server"
        );
        for port in [1000, 1500, 2000, 3001] {
            assert_eq!(
                run(&mut st, &frame(6, CLIENT, VIP, 40000, port), 0),
                XDP_REDIRECT,
                "VIP port range, port {port}"
            );
        }

        assert_eq!(
            run(&mut st, &frame(17, RIP, POOL, 53, 2000), 0),
            XDP_REDIRECT,
            "fullnat reply to a local pool address (though it is a local address)"
        );

        let pass =
            |st: &mut Steering, f: &[u8], what: &str| assert_eq!(run(st, f, 0), XDP_PASS, "{what}");
        // ICMP errors about tracked flows.
        let icmp = |outer_src: [u8; 4], outer_dst: [u8; 4], quoted: Vec<u8>| {
            let mut f = frame(17, outer_src, outer_dst, 0, 0);
            f.truncate(34);
            f[23] = 1;
            f.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 220]);
            f.extend_from_slice(&quoted[14..14 + 28]);
            let ip_len = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&ip_len.to_be_bytes());
            f
        };
        assert_eq!(
            run(
                &mut st,
                &icmp([10, 1, 1, 1], VIP, frame(6, VIP, CLIENT, 80, 40000)),
                0
            ),
            XDP_REDIRECT,
            "frag needed about a reply from a VIP"
        );
        assert_eq!(
            run(
                &mut st,
                &icmp(RIP, CLIENT, frame(6, CLIENT, RIP, 40000, 8080)),
                0
            ),
            XDP_REDIRECT,
            "port unreachable from a nat real server"
        );
        pass(
            &mut st,
            &icmp(RIP, LOCAL, frame(6, LOCAL, RIP, 40000, 8080)),
            "real server erroring to the director itself",
        );
        pass(
            &mut st,
            &icmp(RIP, CLIENT, frame(6, CLIENT, RIP, 40000, 22)),
            "error about another flow",
        );
        let mut echo = icmp(CLIENT, VIP, frame(6, VIP, CLIENT, 80, 40000));
        echo[34] = 8;
        pass(&mut st, &echo, "echo request to a VIP");
        // ICMPv6 errors about tracked flows; the rest of ICMPv6 is the
        // kernel's.
        let reply6 = frame6(6, VIP6, CLIENT6, 80, 40000);
        assert_eq!(
            run(&mut st, &icmp6(2, 0, "fd00:22::fe", VIP6, &reply6), 0),
            XDP_REDIRECT,
            "packet too big about a reply from an IPv6 VIP"
        );
        let request6 = frame6(6, CLIENT6, RIP6, 40000, 8080);
        assert_eq!(
            run(&mut st, &icmp6(1, 4, RIP6, CLIENT6, &request6), 0),
            XDP_REDIRECT,
            "port unreachable from an IPv6 nat real server"
        );
        pass(
            &mut st,
            &icmp6(1, 4, RIP6, CLIENT6, &frame6(6, CLIENT6, RIP6, 40000, 22)),
            "ICMPv6 error about another flow",
        );
        for (kind, what) in [(128, "echo request"), (135, "neighbour solicitation")] {
            pass(
                &mut st,
                &icmp6(kind, 0, CLIENT6, VIP6, &reply6),
                &format!("ICMPv6 {what} to a VIP"),
            );
        }
        let ptb = icmp6(2, 0, "fd00:22::fe", VIP6, &reply6);
        for n in 54..(54 + 8 + 40 + 4) {
            pass(
                &mut st,
                &ptb[..n],
                &format!("ICMPv6 error truncated to {n} bytes"),
            );
        }
        // IPv6 fragments: to a VIP address (this protocol) → lvc.
        let whole6 = frame6(6, CLIENT6, VIP6, 40000, 80);
        assert_eq!(
            run(&mut st, &frag6(&whole6, 0, true), 0),
            XDP_REDIRECT,
            "first IPv6 fragment to a VIP"
        );
        assert_eq!(
            run(&mut st, &frag6(&whole6, 1448, false), 0),
            XDP_REDIRECT,
            "later IPv6 fragment to a VIP"
        );
        pass(
            &mut st,
            &frag6(&frame6(6, CLIENT6, "fd00:20::11", 40000, 80), 8, false),
            "IPv6 fragment to another address",
        );
        pass(
            &mut st,
            &frag6(&frame6(17, CLIENT6, VIP6, 40000, 80), 8, false),
            "IPv6 fragment to a VIP, other protocol",
        );
        let f6 = frag6(&whole6, 0, true);
        for n in 54..62 {
            pass(
                &mut st,
                &f6[..n],
                &format!("IPv6 fragment header truncated to {n} bytes"),
            );
        }

        // To the kernel.
        pass(
            &mut st,
            &frame(6, CLIENT, VIP, 40000, 81),
            "VIP, other port",
        );
        pass(
            &mut st,
            &frame(17, CLIENT, VIP, 40000, 80),
            "VIP port, other protocol",
        );
        for port in [999, 2001, 2999, 3002] {
            pass(
                &mut st,
                &frame(6, CLIENT, VIP, 40000, port),
                &format!("VIP, port {port} outside its ranges"),
            );
        }
        pass(
            &mut st,
            &frame(17, CLIENT, VIP, 40000, 1500),
            "VIP port range, other protocol",
        );
        pass(
            &mut st,
            &frame(6, CLIENT, [10, 20, 0, 11], 40000, 80),
            "not a VIP",
        );
        pass(
            &mut st,
            &frame(6, RIP, LOCAL, 8080, 40000),
            "real server answering the director itself",
        );
        pass(
            &mut st,
            &frame(6, RIP, CLIENT, 8081, 40000),
            "real server, other port",
        );
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        pass(&mut st, &arp, "ARP");
        let mut vlan = frame(6, CLIENT, VIP, 40000, 80);
        vlan[12..14].copy_from_slice(&[0x81, 0x00]);
        pass(&mut st, &vlan, "VLAN-tagged");
        let mut v6 = frame(6, CLIENT, VIP, 40000, 80);
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        pass(&mut st, &v6, "IPv4 header behind an IPv6 ethertype");
        pass(
            &mut st,
            &frame6(6, CLIENT6, VIP6, 40000, 81),
            "IPv6 VIP, other port",
        );
        pass(
            &mut st,
            &frame6(17, CLIENT6, VIP6, 40000, 80),
            "IPv6 VIP, other protocol",
        );
        pass(
            &mut st,
            &frame6(6, CLIENT6, "fd00:20::11", 40000, 80),
            "IPv6, not a VIP",
        );
        pass(
            &mut st,
            &frame6(58, CLIENT6, VIP6, 0, 0),
            "ICMPv6 (neighbour discovery) to a VIP",
        );
        pass(
            &mut st,
            &frame6(44, CLIENT6, VIP6, 0, 0),
            "IPv6 fragment header followed by neither TCP nor UDP",
        );
        pass(
            &mut st,
            &frame6(6, RIP6, CLIENT6, 8081, 40000),
            "IPv6 real server, other port",
        );
        for n in 14..(14 + 40 + 20) {
            pass(
                &mut st,
                &frame6(6, CLIENT6, VIP6, 40000, 80)[..n],
                &format!("IPv6 truncated to {n} bytes"),
            );
        }
        let mut icmp = frame(6, CLIENT, VIP, 40000, 80);
        icmp[23] = 1;
        pass(&mut st, &icmp, "ICMP to a VIP");
        // Fragments: to a VIP address (any port, this protocol) → lvc;
        // any other → kernel.
        let mut frag = frame(17, CLIENT, VIP, 40000, 53);
        frag[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
        assert_eq!(
            run(&mut st, &frag, 0),
            XDP_REDIRECT,
            "later fragment to a VIP"
        );
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        assert_eq!(
            run(&mut st, &frag, 0),
            XDP_REDIRECT,
            "first fragment to a VIP"
        );
        let mut other = frame(17, CLIENT, [10, 20, 0, 11], 40000, 53);
        other[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
        pass(&mut st, &other, "fragment to another address");
        let mut from_real = frame(17, RIP, CLIENT, 8080, 40000);
        from_real[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        pass(&mut st, &from_real, "fragmented reply of a nat server");
        let mut lying = frame(6, CLIENT, VIP, 40000, 80);
        lying[16..18].copy_from_slice(&30u16.to_be_bytes());
        pass(&mut st, &lying, "IP total length shorter than its headers");
        for proto in [6, 17] {
            let f = frame(proto, CLIENT, VIP, 40000, if proto == 6 { 80 } else { 53 });
            let l4_min = if proto == 6 { 20 } else { 8 };
            // The kernel refuses test frames shorter than an Ethernet header.
            for n in 14..(14 + 20 + l4_min) {
                pass(&mut st, &f[..n], &format!("truncated to {n} bytes"));
            }
        }
        // No socket bound on queue 1: pass, never drop.
        assert_eq!(
            run(&mut st, &frame(6, CLIENT, VIP, 40000, 80), 1),
            XDP_PASS,
            "no socket on queue"
        );

        let after = st.counters();
        let delta = |s: Stat| {
            after.iter().find(|(k, _)| *k == s).unwrap().1
                - before.iter().find(|(k, _)| *k == s).unwrap().1
        };
        assert_eq!(delta(Stat::RedirectVip), 14);
        assert_eq!(delta(Stat::RedirectReal), 5);
        assert_eq!(delta(Stat::PassNoSocket), 1);
        assert_eq!(delta(Stat::PassFragment), 4);
        assert!(delta(Stat::PassMalformed) >= 2 * 20);
        drop(io);
    })
    .join()
    .expect("test thread");
}
