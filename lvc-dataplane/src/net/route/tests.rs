use super::*;

fn ip(s: &str) -> Addr {
    s.parse::<IpAddr>().unwrap().into()
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            dst: ip("0.0.0.0"),
            prefix: 96,
            gateway: Some(ip("10.0.0.1")),
            oif: 2,
            metric: 0,
            reject: None,
        },
        Route {
            dst: ip("10.0.0.0"),
            prefix: 96 + 24,
            gateway: None,
            oif: 2,
            metric: 0,
            reject: None,
        },
        Route {
            dst: ip("10.1.0.0"),
            prefix: 96 + 16,
            gateway: None,
            oif: 3,
            metric: 100,
            reject: None,
        },
        Route {
            dst: ip("10.1.0.0"),
            prefix: 96 + 16,
            gateway: None,
            oif: 2,
            metric: 10,
            reject: None,
        },
        Route {
            dst: ip("fd00:2::"),
            prefix: 64,
            gateway: None,
            oif: 3,
            metric: 256,
            reject: None,
        },
        Route {
            dst: ip("::"),
            prefix: 0,
            gateway: Some(ip("fe80::1")),
            oif: 2,
            metric: 1024,
            reject: None,
        },
    ]
}

/// The reference: the first route covering `ip` once sorted longest
/// prefix first, then lowest metric (stable: the first given wins ties).
fn scan(routes: &[Route], ip: Addr) -> Option<Route> {
    let mut sorted = routes.to_vec();
    sorted.sort_by(|a, b| b.prefix.cmp(&a.prefix).then(a.metric.cmp(&b.metric)));
    sorted.into_iter().find(|r| r.covers(ip))
}

fn table() -> RouteTable {
    let routes = routes();
    let mut neigh = HashMap::new();
    neigh.insert((2, ip("10.0.0.1")), [1; 6]);
    neigh.insert((2, ip("10.0.0.7")), [7; 6]);
    neigh.insert((3, ip("fd00:2::11")), [0x11; 6]);
    let links = vec![
        Link {
            ifindex: 2,
            name: "a".into(),
            mac: [0xa; 6],
            mtu: 1500,
        },
        Link {
            ifindex: 3,
            name: "b".into(),
            mac: [0xb; 6],
            mtu: 1500,
        },
    ];
    RouteTable::new(routes, neigh, links, vec!["10.0.0.2".parse().unwrap()])
}

#[test]
fn longest_prefix_then_metric() {
    let t = table();
    assert_eq!(
        t.next_hop(ip("10.0.0.7")),
        NextHop::Ready(L2 {
            ifindex: 2,
            src_mac: [0xa; 6],
            dst_mac: [7; 6],
            mtu: 1500,
            src_ip: Addr::default(),
        })
    );
    // Default route: via the gateway's MAC.
    assert_eq!(
        t.next_hop(ip("192.0.2.1")),
        NextHop::Ready(L2 {
            ifindex: 2,
            src_mac: [0xa; 6],
            dst_mac: [1; 6],
            mtu: 1500,
            src_ip: Addr::default(),
        })
    );
    // Lower metric wins among equal prefixes; unresolved → a request.
    assert_eq!(
        t.next_hop(ip("10.1.2.3")),
        NextHop::Unresolved(NeighRequest {
            ifindex: 2,
            ip: ip("10.1.2.3")
        })
    );
    assert_eq!(t.next_hop(ip("10.0.0.2")), NextHop::None);
}

#[test]
fn ipv6_routes_and_neighbours() {
    let t = table();
    assert_eq!(
        t.next_hop(ip("fd00:2::11")),
        NextHop::Ready(L2 {
            ifindex: 3,
            src_mac: [0xb; 6],
            dst_mac: [0x11; 6],
            mtu: 1500,
            src_ip: Addr::default(),
        })
    );
    // The IPv6 default route, via a link-local gateway to resolve.
    assert_eq!(
        t.next_hop(ip("2001:db8::1")),
        NextHop::Unresolved(NeighRequest {
            ifindex: 2,
            ip: ip("fe80::1")
        })
    );
    // It covers no IPv4 destination, and the IPv4 one no IPv6.
    let only6 = RouteTable::new(routes()[4..].to_vec(), HashMap::new(), vec![], vec![]);
    assert_eq!(only6.next_hop(ip("192.0.2.1")), NextHop::None);
    let only4 = RouteTable::new(
        routes().into_iter().filter(|r| r.dst.is_v4()).collect(),
        HashMap::new(),
        vec![],
        vec![],
    );
    assert_eq!(only4.next_hop(ip("2001:db8::1")), NextHop::None);
}

/// The longest-prefix match agrees with a scan of the sorted routes
/// (the first that covers the address) over many routes and addresses.
#[test]
fn lpm_agrees_with_a_scan() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut routes = Vec::new();
    for i in 0..2000 {
        let v4 = i % 3 != 0;
        let (dst, prefix) = if v4 {
            let a = std::net::Ipv4Addr::from((next() as u32) & 0x0aff_ffff);
            (Addr::from(IpAddr::V4(a)), 96 + (next() % 33) as u8)
        } else {
            let a = std::net::Ipv6Addr::from(u128::from(next()) << 64);
            (Addr::from(IpAddr::V6(a)), (next() % 65) as u8)
        };
        let mask = prefix_mask(prefix);
        routes.push(Route {
            dst: Addr(
                (u128::from_be_bytes(dst.0) & mask | if v4 { 0xffff << 32 } else { 0 })
                    .to_be_bytes(),
            ),
            prefix,
            gateway: None,
            oif: i,
            metric: (next() % 4) as u32,
            // Some reject routes among them: matched like any other.
            reject: [None, None, None, Some(RejectKind::Blackhole)][(next() % 4) as usize],
        });
    }
    let t = RouteTable::new(routes.clone(), HashMap::new(), vec![], vec![]);
    for _ in 0..20_000 {
        let v4 = next() % 2 == 0;
        let ip = if v4 {
            Addr::from(IpAddr::V4(((next() as u32) & 0x0aff_ffff).into()))
        } else {
            Addr::from(IpAddr::V6(
                (u128::from(next()) << 64 | u128::from(next())).into(),
            ))
        };
        assert_eq!(t.route(ip).copied(), scan(&routes, ip), "{ip:?}");
    }
}

/// A deterministic xorshift generator.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// `r` as the kernel announces it, through the bytes and the decoder the
/// route thread uses.
fn notification(r: &Route, add: bool) -> Rt {
    let v4 = r.dst.is_v4();
    let mut m = RouteMessage::default();
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = r.prefix - if v4 { 96 } else { 0 };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.kind = match r.reject {
        None => RouteType::Unicast,
        Some(RejectKind::Blackhole) => RouteType::BlackHole,
        Some(RejectKind::Unreachable) => RouteType::Unreachable,
        Some(RejectKind::Prohibit) => RouteType::Prohibit,
    };
    let ra = |a: Addr| match a.ip() {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    };
    if m.header.destination_prefix_length > 0 {
        m.attributes.push(RouteAttribute::Destination(ra(r.dst)));
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(ra(g)));
    }
    if r.oif != 0 {
        m.attributes.push(RouteAttribute::Oif(r.oif));
    }
    m.attributes.push(RouteAttribute::Priority(r.metric));
    let msg = if add {
        Rt::NewRoute(m)
    } else {
        Rt::DelRoute(m)
    };
    decode(msg)
}

fn decode(msg: Rt) -> Rt {
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    nl.finalize();
    let mut buf = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut buf);
    match split_datagram(&buf).pop() {
        Some(Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(m),
            ..
        })) => m,
        other => panic!("undecodable: {other:?}"),
    }
}

fn neigh_notification(ifindex: u32, ip: Addr, mac: Option<[u8; 6]>, del: bool) -> Rt {
    let mut m = NeighbourMessage::default();
    m.header.family = if ip.is_v4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = ifindex;
    m.header.state = if mac.is_some() {
        NeighbourState::Reachable
    } else {
        NeighbourState::Failed
    };
    m.attributes
        .push(NeighbourAttribute::Destination(match ip.ip() {
            IpAddr::V4(v) => NeighbourAddress::Inet(v),
            IpAddr::V6(v) => NeighbourAddress::Inet6(v),
        }));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    decode(if del {
        Rt::DelNeighbour(m)
    } else {
        Rt::NewNeighbour(m)
    })
}

/// A random route of a small space (so that adds replace, deletes hit and
/// prefixes nest): IPv4 under 10.0.0.0/14 or IPv6 under fd00::/30.
fn random_route(next: &mut impl FnMut() -> u64) -> Route {
    let v4 = next().is_multiple_of(2);
    let (bits, prefix) = if v4 {
        let a = 0x0a00_0000 | (next() as u32 & 0x0003_ffff);
        (
            u128::from_be_bytes(Addr::v4(a).0),
            96 + [8, 14, 16, 20, 24, 24, 24, 32][(next() % 8) as usize],
        )
    } else {
        let a = (0xfd00u128 << 112) | (u128::from(next() as u32 & 0x3) << 96);
        (a, [0, 30, 32, 48, 64][(next() % 5) as usize])
    };
    let reject = match next() % 6 {
        0 => Some(RejectKind::Blackhole),
        1 => Some(RejectKind::Unreachable),
        2 => Some(RejectKind::Prohibit),
        _ => None,
    };
    Route {
        dst: Addr((bits & prefix_mask(prefix)).to_be_bytes()),
        prefix,
        gateway: None,
        oif: if reject.is_some() {
            0
        } else {
            1 + (next() % 3) as u32
        },
        metric: (next() % 3) as u32 * 100,
        reject,
    }
}

/// Random adds, replaces and deletes of routes and neighbours, applied as
/// notifications one by one, leave the same table as a snapshot of the
/// end state; and lookups agree with the reference scan all along.
#[test]
fn incremental_updates_match_a_snapshot() {
    let mut next = rng(0x2545_f491_4f6c_dd1d);
    // The kernel's table: one route per prefix and metric.
    let mut kernel: HashMap<(u8, u128, u32), Route> = HashMap::new();
    let mut neigh: HashMap<(u32, Addr), [u8; 6]> = HashMap::new();
    let mut model = Model::default();
    for step in 0..6000 {
        match next() % 10 {
            0..=4 => {
                let r = random_route(&mut next);
                kernel.insert((r.prefix, r.key(), r.metric), r);
                assert_ne!(model.apply(&notification(&r, true)), Effect::Resync);
            }
            5..=7 if !kernel.is_empty() => {
                let k = *kernel
                    .keys()
                    .nth((next() % kernel.len() as u64) as usize)
                    .unwrap();
                let r = kernel.remove(&k).unwrap();
                assert_ne!(model.apply(&notification(&r, false)), Effect::Resync);
            }
            _ => {
                let r = random_route(&mut next);
                let ip = Addr((u128::from_be_bytes(r.dst.0) | 1).to_be_bytes());
                let ifindex = 1 + (next() % 3) as u32;
                let mac = (!next().is_multiple_of(3)).then(|| [next() as u8; 6]);
                let del = next().is_multiple_of(4);
                match mac.filter(|_| !del) {
                    Some(m) => neigh.insert((ifindex, ip), m),
                    None => neigh.remove(&(ifindex, ip)),
                };
                model.apply(&neigh_notification(ifindex, ip, mac, del));
            }
        }
        if step % 500 == 499 {
            let all: Vec<Route> = kernel.values().copied().collect();
            let snap = Model::build(
                vec![],
                vec![],
                all.iter().map(|&r| (r, false)).collect(),
                vec![],
            );
            assert_eq!(model.table.sorted_routes(), snap.table.sorted_routes());
            assert_eq!(
                *model.table.neighbours,
                neigh
                    .iter()
                    .map(|(&k, &v)| (k, v))
                    .collect::<FastMap<_, _>>()
            );
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| b.prefix.cmp(&a.prefix).then(a.metric.cmp(&b.metric)));
            for _ in 0..2000 {
                let probe = random_route(&mut next);
                let ip = Addr(
                    (u128::from_be_bytes(probe.dst.0) | u128::from(next() as u16)).to_be_bytes(),
                );
                let reference = sorted.iter().find(|r| r.covers(ip)).copied();
                assert_eq!(model.table.route(ip).copied(), reference, "{ip:?}");
            }
        }
    }
}

/// A change copies one shard of one level; the published table keeps the
/// rest shared (what makes publishing cheap with a full table).
#[test]
fn a_change_copies_one_shard() {
    let routes: Vec<Route> = (0..100_000u32)
        .map(|i| Route {
            dst: Addr::v4(0x0a00_0000 | i << 8),
            prefix: 120,
            gateway: None,
            oif: 1,
            metric: 0,
            reject: None,
        })
        .collect();
    let mut m = RouteMirror::new(routes, vec![]);
    let published = m.table();
    assert!(m.add_route(Route {
        dst: Addr::v4(0x0c00_0000),
        prefix: 120,
        gateway: None,
        oif: 2,
        metric: 0,
        reject: None,
    }));
    let now = m.table();
    let (a, b) = (&published.lpm.v4[0], &now.lpm.v4[0]);
    assert_eq!(a.shards.len(), b.shards.len());
    assert!(a.shards.len() >= 16);
    let copied = a
        .shards
        .iter()
        .zip(b.shards.iter())
        .filter(|(x, y)| !Arc::ptr_eq(x, y))
        .count();
    assert_eq!(copied, 1);
    assert_eq!(published.route_count() + 1, now.route_count());
    assert!(Arc::ptr_eq(&published.neighbours, &now.neighbours));
}

/// Reject routes win over shorter unicast routes and lose to longer ones,
/// in both families; each kind maps to its own `NextHop::Reject`.
#[test]
fn reject_routes_win_over_shorter_and_lose_to_longer() {
    let route = |dst: &str, prefix: u8, reject: Option<RejectKind>| Route {
        dst: ip(dst),
        prefix,
        gateway: None,
        oif: if reject.is_some() { 0 } else { 2 },
        metric: 0,
        reject,
    };
    let mut m = RouteMirror::new(
        vec![
            route("10.0.0.0", 96 + 8, None),
            route("10.9.9.0", 96 + 24, None),
            route("fd00::", 16, None),
            route("fd00:9:9::", 48, None),
        ],
        vec![Link {
            ifindex: 2,
            name: "a".into(),
            mac: [0xa; 6],
            mtu: 1500,
        }],
    );
    m.set_neighbour(2, ip("10.9.9.9"), Some([9; 6]));
    for (kind, v4, v6) in [
        (RejectKind::Blackhole, "10.9.0.0", "fd00:9::"),
        (RejectKind::Unreachable, "10.9.0.0", "fd00:9::"),
        (RejectKind::Prohibit, "10.9.0.0", "fd00:9::"),
    ] {
        let r4 = route(v4, 96 + 16, Some(kind));
        let r6 = route(v6, 32, Some(kind));
        assert!(m.add_route(r4));
        assert!(m.add_route(r6));
        let t = m.table();
        // Inside the reject prefix, outside the longer unicast one.
        assert_eq!(t.next_hop(ip("10.9.1.1")), NextHop::Reject(kind));
        assert_eq!(t.next_hop_onlink(ip("10.9.1.1")), NextHop::Reject(kind));
        assert_eq!(t.next_hop(ip("fd00:9:1::1")), NextHop::Reject(kind));
        assert_eq!(t.mtu_towards(ip("10.9.1.1")), None);
        // The longer unicast route still wins.
        assert!(matches!(t.next_hop(ip("10.9.9.9")), NextHop::Ready(_)));
        assert!(matches!(
            t.next_hop(ip("fd00:9:9::1")),
            NextHop::Unresolved(_)
        ));
        // Outside it, the shorter route.
        assert!(matches!(t.next_hop(ip("10.8.0.1")), NextHop::Unresolved(_)));
        assert!(matches!(
            t.next_hop(ip("fd00:8::1")),
            NextHop::Unresolved(_)
        ));
        // Deleted: the shorter route again.
        assert!(m.del_route(r4));
        assert!(m.del_route(r6));
        let t = m.table();
        assert!(matches!(t.next_hop(ip("10.9.1.1")), NextHop::Unresolved(_)));
        assert!(matches!(
            t.next_hop(ip("fd00:9:1::1")),
            NextHop::Unresolved(_)
        ));
    }
    // A reject default route: anything without a longer match.
    assert!(m.add_route(route("0.0.0.0", 96, Some(RejectKind::Unreachable))));
    assert_eq!(
        m.table().next_hop(ip("192.0.2.1")),
        NextHop::Reject(RejectKind::Unreachable)
    );
    assert_eq!(m.table().next_hop(ip("2001:db8::1")), NextHop::None);
}

/// A lower metric hides a higher one of the same prefix; deleting it
/// brings the other back (the route thread keeps both).
#[test]
fn equal_prefixes_by_metric() {
    let mut model = Model::default();
    let r = |metric, oif| Route {
        dst: ip("10.5.0.0"),
        prefix: 96 + 16,
        gateway: None,
        oif,
        metric,
        reject: None,
    };
    let b = Route {
        reject: Some(RejectKind::Blackhole),
        oif: 0,
        ..r(50, 0)
    };
    assert_eq!(
        model.apply(&notification(&r(100, 2), true)),
        Effect::Changed
    );
    assert_eq!(model.apply(&notification(&b, true)), Effect::Changed);
    assert_eq!(
        model.table.next_hop(ip("10.5.1.1")),
        NextHop::Reject(RejectKind::Blackhole)
    );
    assert_eq!(
        model.apply(&notification(&r(200, 3), true)),
        Effect::Unchanged
    );
    assert_eq!(model.apply(&notification(&b, false)), Effect::Changed);
    assert_eq!(model.table.route(ip("10.5.1.1")), Some(&r(100, 2)));
    // Replaced (same metric), then deleted: the higher metric's turn.
    assert_eq!(
        model.apply(&notification(&r(100, 4), true)),
        Effect::Changed
    );
    assert_eq!(model.table.route(ip("10.5.1.1")), Some(&r(100, 4)));
    assert_eq!(
        model.apply(&notification(&r(100, 4), false)),
        Effect::Changed
    );
    assert_eq!(model.table.route(ip("10.5.1.1")), Some(&r(200, 3)));
    // A deletion that does not match what is held: re-sync.
    assert_eq!(
        model.apply(&notification(&r(200, 9), false)),
        Effect::Resync
    );
}

/// Notifications this crate cannot decode force a re-sync only if they
/// could be about the main table.
#[test]
fn undecodable_notifications() {
    let route = |table| Undecodable {
        kind: RTM_NEWROUTE,
        table: Some(table),
    };
    assert!(of_interest(route(254)));
    assert!(of_interest(route(RT_TABLE_COMPAT)));
    assert!(!of_interest(route(255)));
    assert!(of_interest(Undecodable {
        kind: RTM_NEWNEIGH,
        table: None
    }));
    assert!(!of_interest(Undecodable {
        kind: 82, // RTM_NEWNETCONF
        table: None
    }));
}

/// Many routes of one level added and half of them deleted one by one
/// (shards grow, runs wrap, deletions shift runs back): every remaining
/// route is found, every deleted one is gone.
#[test]
fn shards_grow_and_shrink() {
    let mut next = rng(0x1234_5678_9abc_def1);
    let mut m = RouteMirror::new(vec![], vec![]);
    let routes: Vec<Route> = (0..40_000u32)
        .map(|i| Route {
            dst: Addr::v4(next() as u32 & 0xffff_ff00),
            prefix: 120,
            gateway: None,
            oif: i,
            metric: 0,
            reject: None,
        })
        .collect();
    let mut kept: HashMap<Addr, Route> = HashMap::new();
    for r in &routes {
        m.add_route(*r);
        kept.insert(r.dst, *r);
    }
    for r in routes.iter().step_by(2) {
        if kept.remove(&r.dst).is_some() {
            assert!(m.del_route(*r));
        }
    }
    let t = m.table();
    assert_eq!(t.route_count(), kept.len());
    for r in &routes {
        assert_eq!(t.route(r.dst), kept.get(&r.dst), "{:?}", r.dst);
    }
}
