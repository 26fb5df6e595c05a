//! The global filter and its named sets: requests applied to a copy,
//! compiled for the XDP program (rule slots, their order, the `acl` trie's
//! source/destination entries) and for the scheduler (`--real` rules),
//! then published in an order a packet can never see half of.

use super::{Control, err};
use crate::addr::Addr;
use crate::io::steer::{AclEntry, Steering};
use crate::pipeline::filter::{Candidate, Prefixes, Rule, RuleCounter, UserFilter, wide};
use lvc_ebpf::{
    ACL_SCOPE_DST, ACL_SCOPE_SRC, AclData, FR_ACCEPT, FR_DPORT, FR_DROP, FR_IFACE, FR_PROTO,
    FR_USERSPACE, FilterOrder, FilterRuleValue, MAX_RULES,
};
use lvc_proto::filter::{
    AddrMatch, Cidr, FilterAction, FilterCounters, FilterListing, FilterRule, FilterRuleInfo,
    MAX_FILTER_RULES, SetInfo, check_set_name,
};
use lvc_proto::{ErrorCode, ErrorReply, Request};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Most prefixes in all sets together.
pub const MAX_SET_PREFIXES: usize = 2_000_000;

/// A rule with its slot in the XDP maps and its userspace counter.
#[derive(Clone, Debug)]
pub(super) struct Installed {
    pub(super) rule: FilterRule,
    pub(super) slot: u32,
    pub(super) counter: Arc<RuleCounter>,
}

/// The filter as the control plane holds it.
#[derive(Clone, Debug, Default)]
pub(super) struct FilterState {
    /// By prio.
    pub(super) rules: BTreeMap<u32, Installed>,
    pub(super) sets: BTreeMap<String, BTreeSet<Cidr>>,
}

/// What the XDP program gets for a filter state.
struct Compiled {
    order: FilterOrder,
    acl: HashMap<AclEntry, u64>,
}

impl FilterState {
    /// Applies one request to this copy, validating it. `ifaces`: the
    /// served interfaces (names an `--iface` may use).
    fn edit(&mut self, req: &Request, ifaces: &[&str]) -> Result<(), ErrorReply> {
        let bad = |m: String| err(ErrorCode::InvalidArgument, m);
        match req {
            Request::FilterAdd { rule } => {
                rule.validate().map_err(bad)?;
                if self.rules.contains_key(&rule.prio) {
                    return Err(err(
                        ErrorCode::Exists,
                        format!("filter rule {} already exists", rule.prio),
                    ));
                }
                if self.rules.len() >= MAX_FILTER_RULES {
                    return Err(bad(format!(
                        "the filter holds at most {MAX_FILTER_RULES} rules (a rule may list \
                         many prefixes, or a set: --src @NAME)"
                    )));
                }
                for m in [&rule.src, &rule.dst].into_iter().flatten() {
                    if let AddrMatch::Set(n) = m
                        && !self.sets.contains_key(n)
                    {
                        return Err(err(
                            ErrorCode::NotFound,
                            format!("set @{n} does not exist (lvc-ctl filter set add {n} CIDR…)"),
                        ));
                    }
                }
                if let Some(i) = &rule.iface
                    && !ifaces.contains(&i.as_str())
                {
                    return Err(bad(format!(
                        "--iface {i}: lvc serves {}; the filter sees only their traffic",
                        ifaces.join(", ")
                    )));
                }
                let used: BTreeSet<u32> = self.rules.values().map(|r| r.slot).collect();
                let slot = (0..MAX_RULES as u32)
                    .find(|s| !used.contains(s))
                    .ok_or_else(|| bad("no free filter slot".into()))?;
                self.rules.insert(
                    rule.prio,
                    Installed {
                        rule: rule.clone(),
                        slot,
                        counter: Arc::default(),
                    },
                );
            }
            Request::FilterDel { prio } => {
                self.rules.remove(prio).ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("filter rule {prio} does not exist"),
                    )
                })?;
            }
            Request::FilterFlush {} => self.rules.clear(),
            Request::SetAdd { name, prefixes } => {
                check_set_name(name).map_err(bad)?;
                let total: usize = self.sets.values().map(BTreeSet::len).sum();
                let known = self.sets.get(name);
                let new = prefixes
                    .iter()
                    .filter(|p| known.is_none_or(|k| !k.contains(p)))
                    .count();
                if total + new > MAX_SET_PREFIXES {
                    return Err(bad(format!(
                        "the sets hold at most {MAX_SET_PREFIXES} prefixes in all"
                    )));
                }
                self.sets
                    .entry(name.clone())
                    .or_default()
                    .extend(prefixes.iter().copied());
            }
            Request::SetDel { name, prefixes } => {
                let set = self.sets.get_mut(name).ok_or_else(|| no_set(name))?;
                for p in prefixes {
                    if !set.remove(p) {
                        return Err(err(
                            ErrorCode::NotFound,
                            format!("{p} is not in set @{name}"),
                        ));
                    }
                }
            }
            Request::SetDestroy { name } => {
                if !self.sets.contains_key(name) {
                    return Err(no_set(name));
                }
                if let Some(r) = self.rules.values().find(|r| uses(&r.rule, name)) {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("set @{name} is used by filter rule {}", r.rule.prio),
                    ));
                }
                self.sets.remove(name);
            }
            other => {
                return Err(err(
                    ErrorCode::Internal,
                    format!("{:?} is not a filter change", other.kind()),
                ));
            }
        }
        Ok(())
    }

    /// The prefixes `m` stands for.
    fn prefixes<'a>(&'a self, m: &'a AddrMatch) -> Box<dyn Iterator<Item = &'a Cidr> + 'a> {
        match m {
            AddrMatch::Cidrs(c) => Box::new(c.iter()),
            AddrMatch::Set(n) => Box::new(self.sets.get(n).into_iter().flatten()),
        }
    }

    /// The XDP program's view: every rule's slot and flags, the order, and
    /// the `acl` entries of the source and destination scopes.
    fn compile(&self, ifindex: impl Fn(&str) -> u32) -> (Compiled, Vec<(u32, FilterRuleValue)>) {
        let mut order = FilterOrder::default();
        let mut slots = Vec::new();
        let mut acl = HashMap::new();
        for (scope, field) in [(ACL_SCOPE_SRC, 0), (ACL_SCOPE_DST, 1)] {
            let mut items: Vec<(bool, u128, u32, u64)> = Vec::new();
            let (mut any4, mut any6) = (0u64, 0u64);
            for r in self.rules.values() {
                let bit = 1u64 << r.slot;
                let m = if field == 0 { &r.rule.src } else { &r.rule.dst };
                let Some(m) = m else {
                    any4 |= bit;
                    any6 |= bit;
                    continue;
                };
                for c in self.prefixes(m) {
                    match (c.addr, c.len) {
                        (IpAddr::V4(_), 0) => any4 |= bit,
                        (IpAddr::V6(_), 0) => any6 |= bit,
                        _ => {
                            let (a, bits) = wide(c);
                            items.push((c.addr.is_ipv6(), a, bits, bit));
                        }
                    }
                }
            }
            push_down(scope, items, &mut acl);
            if field == 0 {
                (order.src_any4, order.src_any6) = (any4, any6);
            } else {
                (order.dst_any4, order.dst_any6) = (any4, any6);
            }
        }
        for r in self.rules.values() {
            order.slot[order.n as usize] = r.slot as u8;
            order.n += 1;
            let mut v = FilterRuleValue {
                action: match (r.rule.real.is_some(), r.rule.action) {
                    (true, _) => FR_USERSPACE,
                    (false, FilterAction::Drop) => FR_DROP,
                    (false, FilterAction::Accept) => FR_ACCEPT,
                },
                ..FilterRuleValue::default()
            };
            if let Some(p) = r.rule.proto {
                v.flags |= FR_PROTO;
                v.proto = p;
            }
            if let Some(d) = r.rule.dport {
                v.flags |= FR_DPORT;
                (v.dport_lo, v.dport_hi) = (d.lo, d.hi);
            }
            if let Some(i) = &r.rule.iface {
                v.flags |= FR_IFACE;
                v.ifindex = ifindex(i);
            }
            slots.push((r.slot, v));
        }
        (Compiled { order, acl }, slots)
    }

    /// The scheduler's view, when a rule names a real server.
    fn user_filter(&self, ifindex: impl Fn(&str) -> u32) -> Option<Arc<UserFilter>> {
        if !self.rules.values().any(|r| r.rule.real.is_some()) {
            return None;
        }
        let mut real_before = false;
        let rules = self
            .rules
            .values()
            .map(|r| {
                let rule = Rule {
                    action: r.rule.action,
                    src: r.rule.src.as_ref().map(|m| Prefixes::new(self.prefixes(m))),
                    dst: r.rule.dst.as_ref().map(|m| Prefixes::new(self.prefixes(m))),
                    proto: r.rule.proto,
                    dport: r.rule.dport.map(|d| (d.lo, d.hi)),
                    iface: r.rule.iface.as_deref().map(&ifindex),
                    real: r.rule.real.map(|x| (Addr::from(x.addr), x.port)),
                    // (XDP counted what it decided: the rules before the
                    // first `--real` one.)
                    count: real_before || r.rule.real.is_some(),
                    counter: r.counter.clone(),
                };
                real_before |= r.rule.real.is_some();
                rule
            })
            .collect();
        Some(Arc::new(UserFilter { rules }))
    }
}

fn uses(r: &FilterRule, set: &str) -> bool {
    [&r.src, &r.dst]
        .into_iter()
        .flatten()
        .any(|m| matches!(m, AddrMatch::Set(n) if n == set))
}

fn no_set(name: &str) -> ErrorReply {
    err(ErrorCode::NotFound, format!("set @{name} does not exist"))
}

/// The `acl` entries of `scope` for (prefix, length, rule bit) items: each
/// prefix's value holds its own rules' bits and those of every listed
/// prefix that contains it, so the trie's longest match answers for all.
/// Sorted by address then length, a prefix comes after the prefixes that
/// contain it: one pass with a stack of the open ones.
fn push_down(scope: u32, items: Vec<(bool, u128, u32, u64)>, out: &mut HashMap<AclEntry, u64>) {
    // Each family apart (items: IPv6?, prefix, length, rule bits): an IPv6
    // prefix (::/8, ::ffff:0:0/96) never holds an IPv4 one, which the
    // program looks up in its own scope.
    let (v6, v4): (Vec<_>, Vec<_>) = items.into_iter().partition(|i| i.0);
    let strip = |v: Vec<(bool, u128, u32, u64)>| v.into_iter().map(|(_, a, l, b)| (a, l, b));
    push_down_family(scope, false, strip(v4).collect(), out);
    push_down_family(scope, true, strip(v6).collect(), out);
}

fn push_down_family(
    scope: u32,
    v6: bool,
    mut items: Vec<(u128, u32, u64)>,
    out: &mut HashMap<AclEntry, u64>,
) {
    items.sort_unstable_by_key(|&(a, l, _)| (a, l));
    let contains = |(a, l): (u128, u32), b: u128| {
        let host = u128::MAX.checked_shr(l).unwrap_or(0);
        b & !host == a
    };
    let mut stack: Vec<(u128, u32, u64)> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        let (a, l, mut bits) = items[i];
        // Equal prefixes of several rules: one entry.
        while i + 1 < items.len() && (items[i + 1].0, items[i + 1].1) == (a, l) {
            i += 1;
            bits |= items[i].2;
        }
        while stack
            .last()
            .is_some_and(|&(sa, sl, _)| !contains((sa, sl), a))
        {
            stack.pop();
        }
        let v = bits | stack.last().map_or(0, |s| s.2);
        stack.push((a, l, v));
        let ip = std::net::Ipv6Addr::from(a);
        let (data, plen) = match ip.to_ipv4_mapped().filter(|_| !v6) {
            Some(v4) => AclData::prefix(scope, IpAddr::V4(v4), (l - 96) as u8),
            None => AclData::prefix(scope, IpAddr::V6(ip), l as u8),
        };
        out.insert((data.scope, data.addr, plen), v);
        i += 1;
    }
}

/// Makes `next` live: new rules' slots first, then the union of old and
/// new trie entries, the new order, and the new entries alone.
fn install(
    steering: &mut Steering,
    was: &FilterState,
    next: &FilterState,
    ifindex: impl Fn(&str) -> u32 + Copy,
) -> Result<(), String> {
    let e = |e: crate::io::steer::SteerError| e.to_string();
    let (new, slots) = next.compile(ifindex);
    let fresh: Vec<u32> = next
        .rules
        .iter()
        .filter(|(p, r)| was.rules.get(p).is_none_or(|w| w.slot != r.slot))
        .map(|(_, r)| r.slot)
        .collect();
    for &s in &fresh {
        steering.zero_rule_stats(s).map_err(e)?;
    }
    for (s, v) in slots {
        steering.set_rule(s, v).map_err(e)?;
    }
    let ours = |s: u32| {
        let s = s & !lvc_ebpf::ACL_SCOPE_V6;
        s == ACL_SCOPE_SRC || s == ACL_SCOPE_DST
    };
    // Old and new rules' bits together until the order flips.
    steering.merge_acl(&new.acl).map_err(e)?;
    steering.set_order(&new.order).map_err(e)?;
    steering.sync_acl(ours, &new.acl).map_err(e)?;
    Ok(())
}

impl Control {
    /// Applies one filter change: to a copy, validated, made live in the
    /// XDP maps and the scheduler's table, or nothing changes.
    pub(super) fn filter_edit(&self, req: &Request) -> Result<(), ErrorReply> {
        let mut state = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        next.edit(req, &names)?;
        self.filter_commit(&mut state, next)?;
        // A change that makes the filter refuse established connections
        // by their real server (a new --real drop rule, a set it uses
        // grown) ends them (iptables would stop their packets; a
        // connection that can send nothing more is better gone), as the
        // whole filter now decides: an accept rule before it keeps them.
        // (Interface rules do not match a connection already made.)
        let now_filter = self
            .user_filter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(uf) = now_filter
            && matches!(req, Request::FilterAdd { .. } | Request::SetAdd { .. })
        {
            let now = self.epoch.elapsed().as_secs() as u32;
            let ended = self.conntrack.remove_where(now, |c| {
                let (vip, vport) = c.vip();
                let (raddr, rport) = c.real();
                let cand = Candidate {
                    proto: c.proto,
                    src: c.client.0,
                    dst: vip,
                    dport: vport,
                    server_addr: raddr,
                    real_port: rport,
                    len: 0,
                    ingress: 0,
                };
                uf.decide(&cand)
                    .is_some_and(|r| r.real.is_some() && r.action == FilterAction::Drop)
            });
            if ended > 0 {
                tracing::info!(ended, "the filter ended established connections");
            }
        }
        Ok(())
    }

    /// Installs `next` over `state` (XDP maps, then the scheduler's table).
    pub(super) fn filter_commit(
        &self,
        state: &mut FilterState,
        next: FilterState,
    ) -> Result<(), ErrorReply> {
        let ifindex = |name: &str| {
            self.interfaces
                .iter()
                .find(|i| i.name == name)
                .map_or(0, |i| i.ifindex)
        };
        {
            let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = install(&mut steering, state, &next, ifindex) {
                // Put the running filter back as it was.
                let _ = install(&mut steering, &next, state, ifindex);
                return Err(err(ErrorCode::Internal, e));
            }
        }
        *self.user_filter.lock().unwrap_or_else(|p| p.into_inner()) = next.user_filter(ifindex);
        *state = next;
        // The scheduler's table carries the `--real` rules.
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        self.publish(&cfg)
    }

    /// The filter a restore asks for, checked (nothing changes yet):
    /// unchanged rules keep their slots and counters.
    pub(super) fn filter_prepare(
        &self,
        rules: &[FilterRule],
        sets: &BTreeMap<String, Vec<Cidr>>,
    ) -> Result<FilterState, ErrorReply> {
        let state = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = FilterState::default();
        let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        for (name, prefixes) in sets {
            next.edit(
                &Request::SetAdd {
                    name: name.clone(),
                    prefixes: prefixes.clone(),
                },
                &names,
            )?;
        }
        for rule in rules {
            next.edit(&Request::FilterAdd { rule: rule.clone() }, &names)?;
        }
        // Unchanged rules keep their slots and counters; the others take
        // slots the running filter does not use, where there are any (a
        // slot in use changes under live traffic only when all are taken).
        let live: BTreeSet<u32> = state.rules.values().map(|r| r.slot).collect();
        let mut taken = BTreeSet::new();
        let mut fresh = Vec::new();
        for (prio, n) in next.rules.iter_mut() {
            match state.rules.get(prio).filter(|o| o.rule == n.rule) {
                Some(old) => {
                    n.slot = old.slot;
                    n.counter = old.counter.clone();
                    taken.insert(old.slot);
                }
                None => fresh.push(*prio),
            }
        }
        for prio in fresh {
            let all = 0..MAX_RULES as u32;
            let slot = all
                .clone()
                .find(|s| !taken.contains(s) && !live.contains(s))
                .or_else(|| all.clone().find(|s| !taken.contains(s)))
                .ok_or_else(|| err(ErrorCode::InvalidArgument, "no free filter slot"))?;
            taken.insert(slot);
            if let Some(n) = next.rules.get_mut(&prio) {
                n.slot = slot;
            }
        }
        Ok(next)
    }

    /// Makes a prepared filter the running one.
    pub(super) fn filter_install(&self, next: FilterState) -> Result<(), ErrorReply> {
        let mut state = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        if state.rules.is_empty()
            && next.rules.is_empty()
            && state.sets.is_empty()
            && next.sets.is_empty()
        {
            return Ok(());
        }
        self.filter_commit(&mut state, next)
    }

    /// `filter list`.
    pub(super) fn filter_listing(&self) -> FilterListing {
        let state = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        let steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
        FilterListing {
            rules: state
                .rules
                .values()
                .map(|r| {
                    let x = steering.rule_stats(r.slot);
                    FilterRuleInfo {
                        rule: r.rule.clone(),
                        stats: FilterCounters {
                            packets: x.packets + r.counter.packets.load(Relaxed),
                            bytes: x.bytes + r.counter.bytes.load(Relaxed),
                        },
                    }
                })
                .collect(),
            sets: state
                .sets
                .iter()
                .map(|(n, s)| SetInfo {
                    name: n.clone(),
                    prefixes: s.len() as u64,
                })
                .collect(),
        }
    }

    /// The filter for `save`: its rules and sets.
    pub(super) fn filter_saved(&self) -> (Vec<FilterRule>, BTreeMap<String, Vec<Cidr>>) {
        let state = self.filter.lock().unwrap_or_else(|p| p.into_inner());
        (
            state.rules.values().map(|r| r.rule.clone()).collect(),
            state
                .sets
                .iter()
                .map(|(n, s)| (n.clone(), s.iter().copied().collect()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lvc_proto::filter::cidr_list;

    fn entries(items: &[(&str, u64)]) -> BTreeMap<String, u64> {
        let mut v = Vec::new();
        for (c, bit) in items {
            for c in cidr_list(c).unwrap() {
                let (a, l) = wide(&c);
                v.push((c.addr.is_ipv6(), a, l, *bit));
            }
        }
        let mut out = HashMap::new();
        push_down(ACL_SCOPE_SRC, v, &mut out);
        out.into_iter()
            .map(|((scope, a, plen), v)| {
                let ip = std::net::Ipv6Addr::from(a);
                let s = match ip.to_ipv4_mapped() {
                    Some(v4) if scope & lvc_ebpf::ACL_SCOPE_V6 == 0 => {
                        format!("{v4}/{}", plen - 128)
                    }
                    _ => format!("{ip}/{}", plen - 32),
                };
                (s, v)
            })
            .collect()
    }

    #[test]
    fn a_prefix_carries_the_rules_of_the_prefixes_holding_it() {
        let got = entries(&[
            ("10.0.0.0/8", 1),
            ("10.1.0.0/16,192.0.2.0/24", 2),
            ("10.1.2.0/24", 4),
            ("10.1.0.0/16", 8),
            ("2001:db8::/32", 16),
            ("::/8", 32),
            ("::ffff:0:0/96", 64),
        ]);
        let want: BTreeMap<String, u64> = [
            ("10.0.0.0/8", 1),
            ("10.1.0.0/16", 1 | 2 | 8),
            ("10.1.2.0/24", 1 | 2 | 4 | 8),
            ("192.0.2.0/24", 2),
            ("2001:db8::/32", 16),
            ("::/8", 32),
            // (An IPv6 prefix over the mapped range holds no IPv4 client.)
            ("::ffff:0.0.0.0/96", 32 | 64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(got, want);
    }

    fn add(s: &mut FilterState, text: &str) -> Result<(), ErrorReply> {
        let rule: FilterRule = toml::from_str(text).unwrap();
        s.edit(&Request::FilterAdd { rule }, &["eth0"])
    }

    #[test]
    fn edits_are_checked() {
        let mut s = FilterState::default();
        add(&mut s, "prio = 1\nsrc = \"10.0.0.0/8\"").unwrap();
        assert!(
            add(&mut s, "prio = 1")
                .unwrap_err()
                .message
                .contains("already")
        );
        let e = add(&mut s, "prio = 2\nsrc = \"@bad\"").unwrap_err();
        assert!(e.message.contains("@bad does not exist"), "{}", e.message);
        let e = add(&mut s, "prio = 2\niface = \"eth9\"").unwrap_err();
        assert!(e.message.contains("lvc serves eth0"), "{}", e.message);
        s.edit(
            &Request::SetAdd {
                name: "bad".into(),
                prefixes: cidr_list("192.0.2.0/24").unwrap(),
            },
            &[],
        )
        .unwrap();
        add(&mut s, "prio = 2\nsrc = \"@bad\"").unwrap();
        let e = s
            .edit(&Request::SetDestroy { name: "bad".into() }, &[])
            .unwrap_err();
        assert!(e.message.contains("used by filter rule 2"), "{}", e.message);
        for p in 3..=MAX_FILTER_RULES as u32 {
            add(&mut s, &format!("prio = {p}")).unwrap();
        }
        let e = add(&mut s, "prio = 1000").unwrap_err();
        assert!(e.message.contains("at most 64"), "{}", e.message);
        let slots: BTreeSet<u32> = s.rules.values().map(|r| r.slot).collect();
        assert_eq!(slots.len(), MAX_FILTER_RULES);
    }

    #[test]
    fn the_order_follows_prio_and_any_masks_cover_missing_fields() {
        let mut s = FilterState::default();
        add(&mut s, "prio = 20\nsrc = \"0.0.0.0/0\"").unwrap();
        add(
            &mut s,
            "prio = 10\ndst = \"10.9.0.10\"\nproto = \"tcp\"\ndport = 80",
        )
        .unwrap();
        add(
            &mut s,
            "prio = 30\nsrc = \"10.0.0.0/8\"\nreal = \"10.2.0.11:80\"",
        )
        .unwrap();
        let (c, slots) = s.compile(|_| 7);
        let slot = |p: u32| s.rules[&p].slot;
        assert_eq!(c.order.n, 3);
        assert_eq!(
            &c.order.slot[..3],
            &[slot(10) as u8, slot(20) as u8, slot(30) as u8]
        );
        assert_eq!(c.order.src_any4, (1 << slot(10)) | (1 << slot(20)));
        assert_eq!(c.order.src_any6, 1 << slot(10));
        assert_eq!(
            c.order.dst_any4,
            (1 << slot(20)) | (1 << slot(30)),
            "rules without --dst match every VIP"
        );
        let v = |p: u32| slots.iter().find(|(s, _)| *s == slot(p)).unwrap().1;
        assert_eq!(v(10).flags, FR_PROTO | FR_DPORT);
        assert_eq!((v(10).dport_lo, v(10).dport_hi), (80, 80));
        assert_eq!(v(30).action, FR_USERSPACE);
        assert!(s.user_filter(|_| 0).is_some());
    }
}
