//! The configuration file (TOML), loaded by `lvc-dataplane --config FILE`.
//!
//! ```toml
//! [[service]]
//! tcp = "10.0.0.10:80"       # or udp = "…"
//! scheduler = "rr"
//!
//! [[service.server]]
//! real = "10.0.1.1:80"       # RIP[:PORT], port defaults to the service's
//! weight = 1
//! method = "nat"             # nat | dnat
//! ```

use crate::{MAX_WEIGHT, Method, Protocol, RealSpec, Request, Scheduler, ServiceKey, parse_vip};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<String>,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default, rename = "server")]
    pub servers: Vec<ServerConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub real: RealSpec,
    #[serde(default = "crate::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub method: Method,
}

impl ConfigFile {
    /// Parses and validates a file; errors name the line and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_owned(),
            }
        })?;
        cfg.requests()?;
        Ok(cfg)
    }

    /// The file as the control requests that build it, validated.
    pub fn requests(&self) -> Result<Vec<Request>, String> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let key = svc.key().map_err(|e| format!("service #{}: {e}", i + 1))?;
            if !seen.insert(key) {
                return Err(format!("service {key} is defined twice"));
            }
            out.push(Request::AddService {
                service: key,
                scheduler: svc.scheduler,
            });
            let mut reals = HashSet::new();
            for srv in &svc.servers {
                if srv.weight > MAX_WEIGHT {
                    return Err(format!(
                        "service {key}, server {}: weight must be 0..={MAX_WEIGHT}",
                        srv.real
                    ));
                }
                if !reals.insert(srv.real.resolve(&key)) {
                    return Err(format!(
                        "service {key}: server {} is listed twice",
                        srv.real
                    ));
                }
                out.push(Request::AddServer {
                    service: key,
                    real: srv.real,
                    weight: srv.weight,
                    method: srv.method,
                });
            }
        }
        Ok(out)
    }
}

impl ServiceConfig {
    pub fn key(&self) -> Result<ServiceKey, String> {
        match (&self.tcp, &self.udp) {
            (Some(a), None) => Ok(ServiceKey::new(Protocol::Tcp, parse_vip(a)?)),
            (None, Some(a)) => Ok(ServiceKey::new(Protocol::Udp, parse_vip(a)?)),
            _ => Err("exactly one of `tcp` or `udp` must be given".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_example() {
        let cfg = ConfigFile::parse(
            r#"
[[service]]
tcp = "10.0.0.10:80"

[[service.server]]
real = "10.0.1.1"

[[service.server]]
real = "10.0.1.2:8080"
weight = 2
method = "dnat"
"#,
        )
        .unwrap();
        let reqs = cfg.requests().unwrap();
        assert_eq!(reqs.len(), 3);
    }

    #[test]
    fn errors_name_the_line() {
        let err =
            ConfigFile::parse("[[service]]\ntcp = \"10.0.0.10:80\"\nbogus = 1\n").unwrap_err();
        assert!(err.starts_with("line 3"), "{err}");
        let err = ConfigFile::parse("[[service]]\ntcp = \"10.0.0.10\"\n").unwrap_err();
        assert!(err.contains("VIP:PORT"), "{err}");
        let err = ConfigFile::parse(
            "[[service]]\nudp = \"10.0.0.10:53\"\n[[service.server]]\nreal = \"10.0.1.1\"\nweight = 70000\n",
        )
        .unwrap_err();
        assert!(err.contains("weight must be"), "{err}");
    }
}
