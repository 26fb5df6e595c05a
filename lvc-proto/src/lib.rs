//! The lvc control protocol.
//!
//! `lvc-ctl` and `lvc-dataplane` talk over a Unix stream socket, one JSON
//! object per line each way. Every request carries the protocol
//! [`VERSION`]; the daemon answers a mismatch with
//! [`ErrorCode::VersionMismatch`] instead of guessing. This crate has no
//! dependency on aya or libxdp, so the CLI stays small.
//!
//! The same types describe the configuration file ([`config`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod filter;
pub mod health;
pub mod shape;
mod types;

pub use types::*;

use health::{CheckSpec, Sorry};
use serde::{Deserialize, Serialize};

/// Protocol version; bump on any incompatible change.
pub const VERSION: u32 = 1;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/lvc/lvc.sock";

/// Largest request line the daemon accepts, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A request as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestEnvelope {
    pub version: u32,
    pub request: Request,
}

impl RequestEnvelope {
    pub fn new(request: Request) -> Self {
        Self {
            version: VERSION,
            request,
        }
    }
}

/// A response as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub version: u32,
    #[serde(flatten)]
    pub result: Response,
}

impl ResponseEnvelope {
    pub fn new(result: Response) -> Self {
        Self {
            version: VERSION,
            result,
        }
    }
}

/// Everything the daemon can be asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    AddService {
        service: ServiceKey,
        #[serde(default)]
        scheduler: Scheduler,
        /// Persistence timeout in seconds (client affinity); none = off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persistent: Option<u32>,
        /// Granularity of persistence: clients in one network share a
        /// server (a dotted IPv4 mask or a prefix length; IPv6: 1..=128).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netmask: Option<Netmask>,
        /// The health check its servers run unless they say otherwise.
        #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
        check: CheckSpec,
        /// A command run (`sh -c`) on every change of a server's health.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alert: Option<String>,
        /// Takes new connections while no real server does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sorry: Option<Sorry>,
        /// Picks up TCP connections mid-flow (a packet without SYN that no
        /// connection matches is scheduled): IPVS's sloppy_tcp, for
        /// directors behind ECMP, where flows move between directors.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sloppy: bool,
        /// Allow/deny lists and the new-connection rate limit.
        #[serde(default, skip_serializing_if = "filter::Policy::is_empty")]
        policy: filter::Policy,
    },
    DelService {
        service: ServiceKey,
    },
    AddServer {
        service: ServiceKey,
        real: RealSpec,
        #[serde(default = "default_weight")]
        weight: u32,
        #[serde(default)]
        method: Method,
        /// Its health check (fields override the service's).
        #[serde(default, skip_serializing_if = "CheckSpec::is_empty")]
        check: CheckSpec,
        /// Connection limits (ipvsadm -x/-y); none if absent.
        #[serde(default, skip_serializing_if = "ConnLimits::is_none")]
        limits: ConnLimits,
        /// A PROXY protocol header in front of each connection (nat and
        /// fullnat TCP only).
        #[serde(default, skip_serializing_if = "ProxyProtocol::is_off")]
        proxy_protocol: ProxyProtocol,
    },
    DelServer {
        service: ServiceKey,
        real: RealSpec,
    },
    /// Changes a service's scheduler (ipvsadm -E).
    EditService {
        service: ServiceKey,
        #[serde(default)]
        scheduler: Option<Scheduler>,
        /// New persistence timeout; 0 turns persistence off.
        #[serde(default)]
        persistent: Option<u32>,
        #[serde(default)]
        netmask: Option<Netmask>,
        /// Fields of the default health check to change (the others stay).
        #[serde(default)]
        check: Option<CheckSpec>,
        /// New alert command; empty: none.
        #[serde(default)]
        alert: Option<String>,
        /// New sorry server.
        #[serde(default)]
        sorry: Option<Sorry>,
        /// Removes the sorry server.
        #[serde(default)]
        no_sorry: bool,
        /// Picks up TCP connections mid-flow, or stops.
        #[serde(default)]
        sloppy: Option<bool>,
        /// New allow list (empty: none).
        #[serde(default)]
        allow: Option<Vec<filter::Cidr>>,
        /// New deny list (empty: none).
        #[serde(default)]
        deny: Option<Vec<filter::Cidr>>,
        /// New connection rate limit; 0 removes it.
        #[serde(default)]
        conn_rate: Option<u32>,
        /// New burst (0: one second's worth).
        #[serde(default)]
        conn_burst: Option<u32>,
    },
    /// Changes a real server's weight and/or method (ipvsadm -e).
    EditServer {
        service: ServiceKey,
        real: RealSpec,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        method: Option<Method>,
        /// Fields of its health check to change (the others stay).
        #[serde(default)]
        check: Option<CheckSpec>,
        /// New upper connection threshold (0 removes the limits); the lower
        /// one goes back to its default unless given too.
        #[serde(default)]
        max_conns: Option<u32>,
        /// New lower connection threshold (0: the default).
        #[serde(default)]
        min_conns: Option<u32>,
        /// New PROXY protocol setting (new connections only).
        #[serde(default)]
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// Removes every service (ipvsadm -C).
    Clear {},
    /// Zeroes the counters of one service or of all (ipvsadm -Z).
    Zero {
        #[serde(default)]
        service: Option<ServiceKey>,
    },
    /// Sets connection timeouts in seconds; absent or 0 = unchanged
    /// (ipvsadm --set).
    SetTimeouts {
        #[serde(default)]
        tcp: Option<u32>,
        #[serde(default)]
        tcpfin: Option<u32>,
        #[serde(default)]
        udp: Option<u32>,
    },
    /// Sets the fullnat local address pool (the director's addresses that
    /// fullnat connections are source-NATed to).
    SetLocalPool {
        addrs: Vec<std::net::IpAddr>,
    },
    /// The running configuration in the config-file format (ipvsadm -S).
    Save {},
    /// Replaces the running configuration with a config file's content,
    /// all of it or none of it (ipvsadm -R, but replacing, not appending).
    Restore {
        config: String,
    },
    /// The connection table, optionally filtered (ipvsadm -Lc).
    Conns {
        #[serde(default)]
        filter: ConnFilter,
    },
    List {},
    Status {},
    /// Shapes `dev`: its link rate and default class (tc qdisc add … htb
    /// default N + the root class). Keeps the classes already there.
    ShapeSetRoot {
        dev: String,
        rate: shape::Rate,
        #[serde(default)]
        default: Option<shape::ClassId>,
    },
    /// Removes all shaping from `dev` (its classes, filters, policers).
    ShapeDelRoot {
        dev: String,
    },
    ShapeAddClass {
        dev: String,
        class: shape::ClassSpec,
    },
    /// Replaces an existing class's parameters (tc class change).
    ShapeChangeClass {
        dev: String,
        class: shape::ClassSpec,
    },
    ShapeDelClass {
        dev: String,
        classid: shape::ClassId,
    },
    ShapeAddFilter {
        dev: String,
        filter: shape::FilterSpec,
    },
    ShapeDelFilter {
        dev: String,
        prio: u32,
    },
    ShapeAddPolice {
        police: shape::PoliceSpec,
    },
    ShapeDelPolice {
        target: shape::PoliceTarget,
    },
    /// The shaping configuration with its counters.
    ShapeList {},
    /// Configuration changes and timeouts applied all or nothing, in
    /// order (`lvc-ctl -R` with ipvsadm rules). An error names the index
    /// of the change that failed.
    Batch {
        requests: Vec<Request>,
    },
    /// Adds a rule to the global filter (its prio must be free).
    FilterAdd {
        rule: filter::FilterRule,
    },
    FilterDel {
        prio: u32,
    },
    /// Removes every filter rule (the sets stay).
    FilterFlush {},
    /// Adds prefixes to a named set, creating it.
    SetAdd {
        name: String,
        prefixes: Vec<filter::Cidr>,
    },
    /// Removes prefixes from a named set.
    SetDel {
        name: String,
        prefixes: Vec<filter::Cidr>,
    },
    /// Removes a set no rule uses.
    SetDestroy {
        name: String,
    },
    /// The filter's rules with their counters, and the sets.
    FilterList {},
}

/// What a request does, so that the daemon dispatches on one exhaustive
/// match here: a new verb is classified where it is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Changes services or real servers: applied to a copy of the
    /// configuration, validated, published all or nothing.
    ConfigEdit,
    /// Changes the shaping configuration (validated and compiled whole).
    ShapeEdit,
    /// Changes the global filter or its sets.
    FilterEdit,
    /// Changes something else the daemon holds (timeouts, counters, the
    /// fullnat pool, the whole configuration at once).
    Setting,
    /// Reads and changes nothing.
    Query,
}

impl Request {
    /// The kind of this request.
    pub fn kind(&self) -> RequestKind {
        use RequestKind::*;
        match self {
            Request::AddService { .. }
            | Request::DelService { .. }
            | Request::AddServer { .. }
            | Request::DelServer { .. }
            | Request::EditService { .. }
            | Request::EditServer { .. }
            | Request::Clear {} => ConfigEdit,
            Request::ShapeSetRoot { .. }
            | Request::ShapeDelRoot { .. }
            | Request::ShapeAddClass { .. }
            | Request::ShapeChangeClass { .. }
            | Request::ShapeDelClass { .. }
            | Request::ShapeAddFilter { .. }
            | Request::ShapeDelFilter { .. }
            | Request::ShapeAddPolice { .. }
            | Request::ShapeDelPolice { .. } => ShapeEdit,
            Request::FilterAdd { .. }
            | Request::FilterDel { .. }
            | Request::FilterFlush {}
            | Request::SetAdd { .. }
            | Request::SetDel { .. }
            | Request::SetDestroy { .. } => FilterEdit,
            Request::Zero { .. }
            | Request::SetTimeouts { .. }
            | Request::SetLocalPool { .. }
            | Request::Restore { .. }
            | Request::Batch { .. } => Setting,
            Request::Save {}
            | Request::Conns { .. }
            | Request::List {}
            | Request::Status {}
            | Request::ShapeList {}
            | Request::FilterList {} => Query,
        }
    }
}

pub fn default_weight() -> u32 {
    1
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// The change was applied.
    Ok,
    /// The services, their servers and counters.
    Listing(Listing),
    /// Daemon status.
    Status(Status),
    /// A configuration file's text (answer to `save`).
    Config(String),
    /// Connections (answer to `conns`).
    Conns(ConnListing),
    /// Shaping trees, filters, policers and counters (`shape list`).
    Shaping(shape::ShapeListing),
    /// The filter's rules and sets (`filter list`).
    Filter(filter::FilterListing),
    /// Nothing was changed; this says why.
    Error(ErrorReply),
}

/// A typed error with a human-readable, actionable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
    /// In the answer to a batch: the index of the change that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            index: None,
        }
    }

    /// This error, as the answer about change `index` of a batch.
    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

/// Error categories; `lvc-ctl` maps each to its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request could not be parsed.
    BadRequest,
    /// Client and daemon speak different protocol versions.
    VersionMismatch,
    /// An argument is out of range or inconsistent.
    InvalidArgument,
    /// The service or server already exists.
    Exists,
    /// The service or server does not exist.
    NotFound,
    /// The daemon failed internally; the configuration is unchanged.
    Internal,
}

impl ErrorCode {
    /// Process exit code `lvc-ctl` uses for this error.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::BadRequest => 64,
            ErrorCode::VersionMismatch => 65,
            ErrorCode::InvalidArgument => 66,
            ErrorCode::Exists => 67,
            ErrorCode::NotFound => 68,
            ErrorCode::Internal => 70,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_as_one_line() {
        let req = RequestEnvelope::new(Request::AddServer {
            service: "tcp:10.0.0.10:80".parse().unwrap(),
            real: "10.0.1.1:8080".parse().unwrap(),
            weight: 3,
            method: Method::Dnat,
            check: CheckSpec::default(),
            limits: ConnLimits { max: 100, min: 0 },
            proxy_protocol: ProxyProtocol::V2,
        });
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<RequestEnvelope>(&line).unwrap(), req);
        assert!(line.contains(r#""verb":"add-server""#), "{line}");
    }

    #[test]
    fn unknown_verbs_and_fields_are_rejected() {
        for bad in [
            r#"{"version":1,"request":{"verb":"explode"}}"#,
            r#"{"version":1,"request":{"verb":"list","extra":1}}"#,
            r#"{"version":1,"request":{"verb":"del-service","service":"tcp:1.2.3.4"}}"#,
            r#"{"version":1}"#,
            r#"{"version":1,"request":{"verb":"add-service","service":"tcp:1.2.3.4:80""#,
        ] {
            assert!(
                serde_json::from_str::<RequestEnvelope>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_response_shape() {
        let r = ResponseEnvelope::new(Response::Error(ErrorReply::new(
            ErrorCode::NotFound,
            "service tcp 10.0.0.10:80 does not exist",
        )));
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"version":1,"error":{"code":"not-found","message":"service tcp 10.0.0.10:80 does not exist"}}"#
        );
        assert_eq!(serde_json::from_str::<ResponseEnvelope>(&s).unwrap(), r);
    }
}
