//! The configuration as the control plane holds it, and one request
//! applied to it, validated. No I/O: `publish` makes a result live.

use super::err;
use crate::pipeline::services::Persistence;
use crate::stats::TrafficStats;
use lvc_proto::{
    ErrorCode, ErrorReply, MAX_WEIGHT, Method, Netmask, Request, Scheduler, ServiceKey,
    check_persistence,
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
}

impl ServiceConf {
    pub(super) fn new(scheduler: Scheduler, persistence: Option<Persistence>) -> Self {
        Self {
            scheduler,
            servers: Vec::new(),
            stats: Arc::default(),
            rr: Arc::default(),
            persistence,
        }
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
        } => {
            check_service(service)?;
            if cfg.contains_key(service) {
                return Err(err(
                    ErrorCode::Exists,
                    format!("service {service} already exists"),
                ));
            }
            if let Some(other) = cfg.keys().find(|k| {
                k.proto == service.proto && k.vip == service.vip && k.ports.overlaps(&service.ports)
            }) {
                return Err(err(
                    ErrorCode::Exists,
                    format!(
                        "service {service} overlaps service {other}: a port belongs to one service"
                    ),
                ));
            }
            check_persistence(service.vip, *persistent, *netmask).map_err(|e| {
                err(
                    ErrorCode::InvalidArgument,
                    format!("service {service}: {e}"),
                )
            })?;
            cfg.insert(
                *service,
                ServiceConf::new(
                    *scheduler,
                    persistent.map(|t| persistence(service, t, *netmask)),
                ),
            );
        }
        Request::DelService { service } => {
            cfg.remove(service).ok_or_else(|| no_service(service))?;
        }
        Request::AddServer {
            service,
            real,
            weight,
            method,
        } => {
            let svc = cfg.get_mut(service).ok_or_else(|| no_service(service))?;
            check_weight(*weight)?;
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
            svc.servers.push(ServerConf {
                addr,
                weight: *weight,
                method: *method,
                stats: Arc::default(),
            });
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
        }
        Request::EditServer {
            service,
            real,
            weight,
            method,
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
        }
        Request::Clear {} => cfg.clear(),
        // Other kinds of request (`Request::kind`) are not edits.
        _ => return Err(err(ErrorCode::BadRequest, "not a configuration change")),
    }
    Ok(())
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
