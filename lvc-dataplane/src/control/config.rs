//! The configuration as the control plane holds it, and one request
//! applied to it, validated. No I/O: `publish` makes a result live.

use super::err;
use crate::health::Health;
use crate::pipeline::filter::ConnRate;
use crate::pipeline::services::Persistence;
use crate::stats::TrafficStats;
use lvc_proto::filter::Policy;
use lvc_proto::{
    ConnLimits, ErrorCode, ErrorReply, MAX_WEIGHT, Method, Netmask, ProxyProtocol, Request,
    Scheduler, ServiceKey, check_persistence,
    health::{CheckSpec, Sorry},
};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// A real server in the configuration.
#[derive(Clone, Debug)]
pub(super) struct ServerConf {
    pub(super) addr: SocketAddr,
    pub(super) weight: u32,
    pub(super) method: Method,
    pub(super) stats: Arc<TrafficStats>,
    /// Its own health-check fields (over its service's).
    pub(super) check: CheckSpec,
    pub(super) health: Arc<Health>,
    /// Connection thresholds (ipvsadm -x/-y).
    pub(super) limits: ConnLimits,
    /// The PROXY protocol header its connections start with.
    pub(super) proxy: ProxyProtocol,
}

impl ServerConf {
    pub(super) fn new(addr: SocketAddr, weight: u32, method: Method, check: CheckSpec) -> Self {
        Self {
            addr,
            weight,
            method,
            stats: Arc::default(),
            check,
            health: Arc::default(),
            limits: ConnLimits::default(),
            proxy: ProxyProtocol::Off,
        }
    }
}

/// A service's sorry server with its counters.
#[derive(Clone, Debug)]
pub(super) struct SorryConf {
    pub(super) sorry: Sorry,
    pub(super) stats: Arc<TrafficStats>,
    /// (Never checked: the workers' `Server` needs one.)
    pub(super) health: Arc<Health>,
}

/// A virtual service in the configuration.
#[derive(Clone, Debug)]
pub(super) struct ServiceConf {
    pub(super) scheduler: Scheduler,
    pub(super) servers: Vec<ServerConf>,
    pub(super) stats: Arc<TrafficStats>,
    pub(super) rr: Arc<AtomicUsize>,
    /// Persistence (timeout, netmask) with its live templates.
    pub(super) persistence: Option<Persistence>,
    /// The default health check of its servers.
    pub(super) check: CheckSpec,
    pub(super) alert: Option<String>,
    pub(super) sorry: Option<SorryConf>,
    /// Picks up TCP connections mid-flow.
    pub(super) sloppy: bool,
    /// Allow/deny lists and the new-connection rate limit.
    pub(super) policy: Policy,
    /// The rate limit's bucket (kept while its limits stay).
    pub(super) conn_rate: Option<Arc<ConnRate>>,
}

impl ServiceConf {
    pub(super) fn new(scheduler: Scheduler, persistence: Option<Persistence>) -> Self {
        Self {
            scheduler,
            servers: Vec::new(),
            stats: Arc::default(),
            rr: Arc::default(),
            persistence,
            check: CheckSpec::default(),
            alert: None,
            sorry: None,
            sloppy: false,
            policy: Policy::default(),
            conn_rate: None,
        }
    }

    /// Sets its policy (checked before); a rate limit whose numbers stay
    /// keeps its bucket.
    pub(super) fn set_policy(&mut self, p: Policy) {
        self.conn_rate = match (p.conn_rate, p.burst()) {
            (Some(r), Some(b)) => match &self.conn_rate {
                Some(cur) if cur.same(r, b) => Some(cur.clone()),
                _ => Some(Arc::new(ConnRate::new(r, b))),
            },
            _ => None,
        };
        self.policy = p;
    }

    /// Sets (or, with `None`, removes) its sorry server; an unchanged one
    /// keeps its counters.
    pub(super) fn set_sorry(&mut self, sorry: Option<Sorry>) {
        if self.sorry.as_ref().map(|s| s.sorry) != sorry {
            self.sorry = sorry.map(|sorry| SorryConf {
                sorry,
                stats: Arc::default(),
                health: Arc::default(),
            });
        }
    }

    /// Server `r`'s health check: its fields over the service's.
    pub(super) fn check_of(&self, r: &ServerConf) -> CheckSpec {
        r.check.over(&self.check)
    }

    pub(super) fn persistent(&self) -> Option<u32> {
        self.persistence.as_ref().map(|p| p.timeout)
    }

    /// The netmask of service `key`, when persistent and coarser than one
    /// address, in ipvsadm's form: dotted for IPv4, a prefix length for
    /// IPv6.
    pub(super) fn netmask(&self, key: &ServiceKey) -> Option<Netmask> {
        self.persistence
            .as_ref()
            .filter(|p| p.netmask != address_bits(key))
            .map(|p| match key.vip {
                IpAddr::V4(_) => Netmask::dotted(p.netmask),
                IpAddr::V6(_) => Netmask::Prefix(p.netmask),
            })
    }
}

pub(super) type Config = BTreeMap<ServiceKey, ServiceConf>;

fn check_policy(service: &ServiceKey, p: &Policy) -> Result<(), ErrorReply> {
    p.validate(service.vip.is_ipv4()).map_err(|e| {
        err(
            ErrorCode::InvalidArgument,
            format!("service {service}: {e}"),
        )
    })
}

/// The width of a service's addresses: 32 or 128 bits.
pub(super) fn address_bits(key: &ServiceKey) -> u8 {
    if key.vip.is_ipv4() { 32 } else { 128 }
}

/// Persistence for service `key` (netmask checked before): clients grouped
/// by the mask's prefix, or each address alone without one.
pub(super) fn persistence(key: &ServiceKey, timeout: u32, netmask: Option<Netmask>) -> Persistence {
    Persistence::new(timeout, netmask.map_or(address_bits(key), Netmask::bits))
}

/// Applies one change to a configuration, validating it.
pub(super) fn edit(cfg: &mut Config, req: &Request, pool: &[IpAddr]) -> Result<(), ErrorReply> {
    let needs_pool = |service: &ServiceKey, method: Method| {
        if method == Method::Fullnat && !pool.iter().any(|a| a.is_ipv4() == service.vip.is_ipv4()) {
            let family = if service.vip.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "service {service}: the fullnat method needs an {family} address in the local \
                     address pool (lvc-ctl set-local-pool ADDR…, or [fullnat] local = [...] in \
                     the config)"
                ),
            ));
        }
        Ok(())
    };
    match req {
        Request::AddService {
            service,
            scheduler,
            persistent,
            netmask,
            check,
            alert,
            sorry,
            sloppy,
            policy,
        } => {
            check_service(service)?;
            check_policy(service, policy)?;
            if cfg.contains_key(service) {
                return Err(err(
                    ErrorCode::Exists,
                    format!("service {service} already exists"),
                ));
            }
            if let Some(other) = cfg.keys().find(|k| k.overlaps(service)) {
                return Err(err(
                    ErrorCode::Exists,
                    format!(
                        "service {service} overlaps service {other}: a port belongs to one service"
                    ),
                ));
            }
            // Client classes share exactly their ports, and a prefix
            // belongs to one class of them.
            for other in cfg.keys().filter(|k| k.shares_ports(service)) {
                if other.ports != service.ports {
                    return Err(err(
                        ErrorCode::Exists,
                        format!(
                            "service {service} shares some ports with service {other}: client \
                             classes of a VIP cover the same ports"
                        ),
                    ));
                }
                if let Some(c) = service
                    .from
                    .prefixes()
                    .iter()
                    .find(|c| other.from.prefixes().contains(c))
                {
                    return Err(err(
                        ErrorCode::Exists,
                        format!("{c} is already a client prefix of service {other}"),
                    ));
                }
            }
            check_persistence(service.vip, *persistent, *netmask).map_err(|e| {
                err(
                    ErrorCode::InvalidArgument,
                    format!("service {service}: {e}"),
                )
            })?;
            let mut svc = ServiceConf::new(
                *scheduler,
                persistent.map(|t| persistence(service, t, *netmask)),
            );
            svc.check = check.clone();
            svc.alert = alert.clone().filter(|a| !a.trim().is_empty());
            svc.set_sorry(*sorry);
            svc.sloppy = *sloppy;
            svc.set_policy(policy.clone());
            cfg.insert(*service, svc);
        }
        Request::DelService { service } => {
            cfg.remove(service).ok_or_else(|| no_service(service))?;
        }
        Request::AddServer {
            service,
            real,
            weight,
            method,
            check,
            limits,
            proxy_protocol,
        } => {
            check_proxy(service, *method, *proxy_protocol)?;
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            check_weight(*weight)?;
            check_limits(*limits)?;
            if real.addr.is_ipv4() != service.vip.is_ipv4() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "real server {real} and service {service} must be the same address family"
                    ),
                ));
            }
            if service.ports.single_port().is_none_or(|p| p == 0)
                && real.port.is_some_and(|p| p != 0)
            {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "service {service} covers several ports: give the real server without a \
                         port (connections keep the port the client asked for)"
                    ),
                ));
            }
            let addr = real.resolve(service);
            check_method(service, *method, addr.port())?;
            needs_pool(service, *method)?;
            if svc.servers.iter().any(|r| r.addr == addr) {
                return Err(err(
                    ErrorCode::Exists,
                    format!("real server {addr} already exists in service {service}"),
                ));
            }
            let mut srv = ServerConf::new(addr, *weight, *method, check.clone());
            srv.limits = *limits;
            srv.proxy = *proxy_protocol;
            svc.servers.push(srv);
        }
        Request::DelServer { service, real } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            let addr = real.resolve(service);
            let before = svc.servers.len();
            svc.servers.retain(|r| r.addr != addr);
            if svc.servers.len() == before {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("real server {addr} does not exist in service {service}"),
                ));
            }
        }
        Request::EditService {
            service,
            scheduler,
            persistent,
            netmask,
            check,
            alert,
            sorry,
            no_sorry,
            sloppy,
            allow,
            deny,
            conn_rate,
            conn_burst,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            if let Some(s) = scheduler {
                svc.scheduler = *s;
            }
            if persistent.is_some() || netmask.is_some() {
                // 0 turns persistence off; otherwise keep what is not given.
                let timeout = match persistent {
                    Some(0) => None,
                    Some(t) => Some(*t),
                    None => svc.persistent(),
                };
                let mask = netmask
                    .or(svc.netmask(service))
                    .filter(|_| timeout.is_some());
                check_persistence(service.vip, timeout, mask).map_err(|e| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("service {service}: {e}"),
                    )
                })?;
                let next = timeout.map(|t| persistence(service, t, mask));
                // Unchanged persistence keeps its templates.
                let same = |p: Option<&Persistence>| p.map(|p| (p.timeout, p.netmask));
                if same(next.as_ref()) != same(svc.persistence.as_ref()) {
                    svc.persistence = next;
                }
            }
            if let Some(c) = check {
                svc.check = c.over(&svc.check);
            }
            if let Some(a) = alert {
                svc.alert = Some(a.clone()).filter(|a| !a.trim().is_empty());
            }
            if *no_sorry {
                svc.set_sorry(None);
            } else if sorry.is_some() {
                svc.set_sorry(*sorry);
            }
            if let Some(s) = sloppy {
                svc.sloppy = *s;
            }
            if allow.is_some() || deny.is_some() || conn_rate.is_some() || conn_burst.is_some() {
                let mut p = svc.policy.clone();
                if let Some(a) = allow {
                    p.allow = a.clone();
                }
                if let Some(d) = deny {
                    p.deny = d.clone();
                }
                match conn_rate {
                    Some(0) => {
                        p.conn_rate = None;
                        p.conn_burst = None;
                    }
                    Some(r) => p.conn_rate = Some(*r),
                    None => {}
                }
                match conn_burst {
                    Some(0) => p.conn_burst = None,
                    Some(b) => p.conn_burst = Some(*b),
                    None => {}
                }
                check_policy(service, &p)?;
                svc.set_policy(p);
            }
        }
        Request::EditServer {
            service,
            real,
            weight,
            method,
            check,
            max_conns,
            min_conns,
            proxy_protocol,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            let addr = real.resolve(service);
            let srv = svc
                .servers
                .iter_mut()
                .find(|r| r.addr == addr)
                .ok_or_else(|| {
                    err(
                        ErrorCode::NotFound,
                        format!("real server {addr} does not exist in service {service}"),
                    )
                })?;
            if let Some(w) = weight {
                check_weight(*w)?;
                srv.weight = *w;
            }
            if let Some(m) = method {
                check_method(service, *m, addr.port())?;
                needs_pool(service, *m)?;
                srv.method = *m;
            }
            if let Some(c) = check {
                srv.check = c.over(&srv.check);
            }
            if let Some(max) = max_conns {
                // A new upper threshold brings the default lower one.
                srv.limits = ConnLimits { max: *max, min: 0 };
            }
            if let Some(min) = min_conns {
                srv.limits.min = *min;
            }
            check_limits(srv.limits)?;
            if let Some(p) = proxy_protocol {
                srv.proxy = *p;
            }
            check_proxy(service, srv.method, srv.proxy)?;
        }
        Request::Clear {} => cfg.clear(),
        // Other kinds of request (`Request::kind`) are not edits.
        _ => return Err(err(ErrorCode::BadRequest, "not a configuration change")),
    }
    // Health checks and the sorry server are checked as they now stand (a
    // service's default may have changed what its servers run).
    let touched = match req {
        Request::AddService { service, .. }
        | Request::AddServer { service, .. }
        | Request::EditService { service, .. }
        | Request::EditServer { service, .. } => cfg.get(service).map(|s| (service, s)),
        _ => None,
    };
    if let Some((key, svc)) = touched {
        check_health(key, svc)?;
        if let Some(s) = &svc.sorry {
            check_sorry(key, &s.sorry)?;
            needs_pool(key, s.sorry.method)?;
        }
    }
    Ok(())
}

/// Every server's health check is valid and has a port to probe.
fn check_health(key: &ServiceKey, svc: &ServiceConf) -> Result<(), ErrorReply> {
    let invalid = |m: String| err(ErrorCode::InvalidArgument, m);
    svc.check
        .validate()
        .map_err(|e| invalid(format!("service {key}: check: {e}")))?;
    for r in &svc.servers {
        let spec = svc.check_of(r);
        spec.validate()
            .map_err(|e| invalid(format!("service {key}, server {}: check: {e}", r.addr)))?;
        let c = spec.resolve();
        if c.kind.needs_port() && c.port.unwrap_or(r.addr.port()) == 0 {
            return Err(invalid(format!(
                "service {key}, server {}: a {} check needs a port to probe (--check-port PORT)",
                r.addr, c.kind
            )));
        }
    }
    if let Some(a) = &svc.alert
        && a.len() > 4096
    {
        return Err(invalid(format!(
            "service {key}: --alert is longer than 4096 bytes"
        )));
    }
    Ok(())
}

/// A sorry server must be reachable by its method, like any server.
fn check_sorry(key: &ServiceKey, s: &Sorry) -> Result<(), ErrorReply> {
    if s.addr.is_ipv4() != key.vip.is_ipv4() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {key}: sorry server {} must be the same address family",
                s.addr
            ),
        ));
    }
    if s.addr.ip().is_unspecified() || s.addr.ip().is_multicast() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("service {key}: {} cannot be a sorry server", s.addr),
        ));
    }
    check_method(key, s.method, s.addr.port())
}

/// `nat` on an every-port service would make the XDP program take every
/// packet the real server sends (its DNS, updates, …) and lvc would drop
/// what belongs to no connection: refused until replies are steered per
/// flow.
pub(super) fn check_method(
    service: &ServiceKey,
    method: Method,
    real_port: u16,
) -> Result<(), ErrorReply> {
    if method == Method::Tun && service.vip.is_ipv6() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service}: the tun method is IPv4 only (IPIP); use dr, nat, dnat or \
                 fullnat for IPv6"
            ),
        ));
    }
    if matches!(method, Method::Dr | Method::Tun) && real_port != service.ports.default_real_port()
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service}: the {method} method cannot remap ports (the packet reaches the \
                 real server unchanged): give the real server without a port, or use nat/dnat"
            ),
        ));
    }
    Ok(())
}

/// A PROXY protocol header needs a TCP service and a method where lvc
/// sees both directions (it shifts the stream both ways).
fn check_proxy(service: &ServiceKey, method: Method, p: ProxyProtocol) -> Result<(), ErrorReply> {
    if p.is_off() {
        return Ok(());
    }
    if service.proto != lvc_proto::Protocol::Tcp {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("service {service}: the PROXY protocol is for TCP services"),
        ));
    }
    if !matches!(method, Method::Nat | Method::Fullnat) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "service {service}: --proxy-protocol needs a method where lvc sees both \
                 directions (nat, fullnat), not {method}"
            ),
        ));
    }
    Ok(())
}

fn check_limits(l: ConnLimits) -> Result<(), ErrorReply> {
    l.validate().map_err(|e| err(ErrorCode::InvalidArgument, e))
}

pub(super) fn check_weight(w: u32) -> Result<(), ErrorReply> {
    if w > MAX_WEIGHT {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("weight must be 0..={MAX_WEIGHT}, got {w}"),
        ));
    }
    Ok(())
}

pub(super) fn no_service(s: &ServiceKey) -> ErrorReply {
    err(ErrorCode::NotFound, format!("service {s} does not exist"))
}

pub(super) fn check_service(s: &ServiceKey) -> Result<(), ErrorReply> {
    let a = s.vip;
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    if a.is_unspecified() || broadcast || a.is_multicast() || a.is_loopback() {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("service {s}: {a} cannot be a virtual IP"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Applies `json` to `cfg` as `apply` does (on a copy, kept on success).
    pub(super) fn run(cfg: &mut Config, json: &str) -> Result<(), String> {
        let mut next = cfg.clone();
        edit(&mut next, &request(json), &[]).map_err(|e| e.message)?;
        *cfg = next;
        Ok(())
    }

    pub(super) fn bits(cfg: &Config, key: &str) -> Option<u8> {
        let key: ServiceKey = key.parse().unwrap();
        cfg[&key].persistence.as_ref().map(|p| p.netmask)
    }

    pub(super) fn shown(cfg: &Config, key: &str) -> Option<String> {
        let key: ServiceKey = key.parse().unwrap();
        cfg[&key].netmask(&key).map(|m| m.to_string())
    }

    const V6: &str = "tcp:[2001:db8::10]:80";
    const V4: &str = "tcp:10.0.0.10:80";

    #[test]
    pub(super) fn ipv6_netmask_is_a_prefix_length() {
        let mut cfg = Config::new();
        run(
            &mut cfg,
            &format!(r#"{{"verb":"add-service","service":"{V6}","persistent":60,"netmask":64}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(64));
        assert_eq!(shown(&cfg, V6).as_deref(), Some("64"));
        // Persistent without a netmask: one address per template.
        run(
            &mut cfg,
            r#"{"verb":"add-service","service":"udp:[2001:db8::10]:53","persistent":60}"#,
        )
        .unwrap();
        assert_eq!(bits(&cfg, "udp:[2001:db8::10]:53"), Some(128));
        assert_eq!(shown(&cfg, "udp:[2001:db8::10]:53"), None);

        // A dotted mask, or a prefix past 128, changes nothing.
        let before = format!("{cfg:?}");
        let e = run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":"255.255.255.0"}}"#),
        )
        .unwrap_err();
        assert!(
            e.contains("prefix length 1..128 (ipvsadm's form), not 255.255.255.0"),
            "{e}"
        );
        let e = run(&mut cfg, r#"{"verb":"add-service","service":"tcp:[2001:db8::10]:81","persistent":60,"netmask":"255.255.0.0"}"#).unwrap_err();
        assert!(
            e.contains("service tcp [2001:db8::10]:81: an IPv6 service's --netmask"),
            "{e}"
        );
        assert_eq!(format!("{cfg:?}"), before);

        // Edits: a new prefix; the same one keeps the templates.
        let templates = |cfg: &Config| {
            let key: ServiceKey = V6.parse().unwrap();
            Arc::as_ptr(&cfg[&key].persistence.as_ref().unwrap().templates)
        };
        let t = templates(&cfg);
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":"/64"}}"#),
        )
        .unwrap();
        assert_eq!(templates(&cfg), t);
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","persistent":120}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(64), "the mask stays");
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":48}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), Some(48));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","netmask":128}}"#),
        )
        .unwrap();
        assert_eq!((bits(&cfg, V6), shown(&cfg, V6)), (Some(128), None));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V6}","persistent":0}}"#),
        )
        .unwrap();
        assert_eq!(bits(&cfg, V6), None);
    }

    #[test]
    pub(super) fn ipv4_netmask_either_form_shown_dotted() {
        let mut cfg = Config::new();
        run(&mut cfg, &format!(r#"{{"verb":"add-service","service":"{V4}","persistent":60,"netmask":"255.255.255.0"}}"#)).unwrap();
        assert_eq!(bits(&cfg, V4), Some(24));
        assert_eq!(shown(&cfg, V4).as_deref(), Some("255.255.255.0"));
        run(
            &mut cfg,
            &format!(r#"{{"verb":"edit-service","service":"{V4}","netmask":16}}"#),
        )
        .unwrap();
        assert_eq!(shown(&cfg, V4).as_deref(), Some("255.255.0.0"));
        for bad in [r#""255.0.255.0""#, "33"] {
            let e = run(
                &mut cfg,
                &format!(r#"{{"verb":"edit-service","service":"{V4}","netmask":{bad}}}"#),
            )
            .unwrap_err();
            assert!(e.starts_with("service tcp 10.0.0.10:80: "), "{e}");
        }
        assert_eq!(bits(&cfg, V4), Some(16));
        let e = run(
            &mut cfg,
            r#"{"verb":"add-service","service":"tcp:10.0.0.10:81","netmask":24}"#,
        )
        .unwrap_err();
        assert!(e.contains("give --persistent"), "{e}");
    }
}
