//! `lvc-ctl`: talks to `lvc-dataplane` over its Unix socket.
//!
//! Verbs map one to one onto ipvsadm's, and accept its short flags:
//! `add-service` (-A), `edit-service` (-E), `del-service` (-D),
//! `add-server` (-a), `edit-server` (-e), `del-server` (-d), `list` (-L),
//! `save` (-S), `restore` (-R), `clear` (-C), `zero` (-Z),
//! `set-timeouts` (--set); plus `conns`, `status`, `completions`, `man`,
//! and the `shape` family for traffic shaping (`shape set-root`,
//! `del-root`, `add-class`, `change-class`, `del-class`, `add-filter`,
//! `del-filter`, `add-police`, `del-police`, `list`), whose rates and sizes
//! are in tc's units, and the `filter` family for the global packet filter
//! (`filter add`, `del`, `flush`, `list`, `filter set add|del|destroy`).
//! `add-service`/`edit-service` also set a service's client policy
//! (`--allow`, `--deny`, `--conn-rate`, `--conn-burst`). Every verb that
//! names a service takes `--from CIDR[,CIDR…]` for its client class: one
//! VIP and ports may have a service per class, the most specific prefix
//! holding a client choosing its service.

#![forbid(unsafe_code)]

mod filter;
mod format;
mod ipvsadm;

use clap::{Args, CommandFactory, Parser, Subcommand};
use lvc_proto::config::ConfigFile;
use lvc_proto::health::{CheckKind, CheckSpec, OnFail, Secs, Sorry, StatusRange};
use lvc_proto::shape::{
    ClassId, ClassSpec, FilterSpec, Match, Micros, PoliceSpec, PoliceTarget, Qdisc, Rate,
    ShapeListing, Size,
};
use lvc_proto::{
    Clients, ConnFilter, ConnLimits, ConnListing, ErrorCode, Listing, Method, Netmask, Ports,
    Protocol, ProxyProtocol, RealSpec, Request, RequestEnvelope, Response, ResponseEnvelope,
    Scheduler, ServiceKey, parse_vip,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "lvc-ctl",
    version,
    about = "Program a running lvc-dataplane (ipvsadm-style)"
)]
struct Cli {
    /// Control socket of lvc-dataplane.
    #[arg(long, global = true, value_name = "PATH", default_value = lvc_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Numeric output (ipvsadm's -n; lvc never resolves names, so this
    /// changes nothing).
    #[arg(short = 'n', long, global = true)]
    numeric: bool,
    /// Without a command, the table is listed (as ipvsadm does).
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

/// What `--from` means, for its long help on every verb that names a
/// service (and so the man page).
macro_rules! from_details {
    () => {
        "Several services may share a protocol, VIP and ports with different \
         --from: a client's packets go to the service whose --from holds the \
         client's address with the most specific (longest) prefix, and to the \
         service without --from when none does; the service without --from \
         takes everyone else. Each class is a service of its own, with its own \
         real servers, scheduler, persistence, client lists (--allow, --deny) \
         and connection rate limit. At most 8 prefixes, of the VIP's family, \
         host bits zero; the option may be repeated.\n\n\
         Every verb that names the service (edit-service, del-service, \
         add-server, edit-server, del-server, zero, list -t, conns -t) must \
         give the same --from as add-service did; without --from a verb names \
         the service for everyone else. Shaping filters name a class as \
         --match 'service tcp:VIP:PORT from CIDR[,…]' and policers as \
         shape add-police --tcp VIP:PORT --from CIDR[,…]; without `from` they \
         are the service's without a class."
    };
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, required, and its client class.
#[derive(Args, Debug)]
#[group(skip)]
struct ServiceArg {
    #[command(flatten)]
    which: ServiceChoice,
    #[arg(
        long,
        value_name = "CIDR[,CIDR…]",
        value_parser = filter::cidrs,
        help = "Client class: the service of this VIP and ports for clients in \
                these prefixes (most specific prefix wins; without --from: the \
                service for everyone else)",
        long_help = concat!(
            "Client class: the service of this VIP and ports that is for the \
             clients in these prefixes (CIDR[,CIDR…]); add-service creates it. \
             Without --from: the service for every client no class takes. ",
            from_details!()
        )
    )]
    from: Vec<filter::CidrList>,
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, required (PORTS: 80, 0 = every
/// port, 21,22 or 1024-65535).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ServiceChoice {
    /// TCP virtual service.
    #[arg(long, short = 't', visible_alias = "tcp-service", value_name = "VIP:PORTS", value_parser = parse_vip)]
    tcp: Option<VipPorts>,
    /// UDP virtual service.
    #[arg(long, short = 'u', visible_alias = "udp-service", value_name = "VIP:PORTS", value_parser = parse_vip)]
    udp: Option<VipPorts>,
    /// (ipvsadm's firewall-mark services: not supported.)
    #[arg(long = "fwmark-service", short = 'f', hide = true, value_parser = no_fwmark)]
    fwmark: Option<u32>,
}

/// ipvsadm's `-f`: refused with the reason.
fn no_fwmark(_: &str) -> Result<u32, String> {
    Err(
        "firewall-mark services are not supported: lvc takes VIP traffic before \
         netfilter marks it; give the service as -t/-u VIP:PORT (a port list or \
         range, 80,443 or 1024-65535, groups ports the way a mark would)"
            .into(),
    )
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, optional, and its client class.
#[derive(Args, Debug)]
#[group(skip)]
struct MaybeService {
    #[command(flatten)]
    which: MaybeServiceChoice,
    #[arg(
        long,
        value_name = "CIDR[,CIDR…]",
        value_parser = filter::cidrs,
        requires = "MaybeServiceChoice",
        help = "Only the service of this client class (with --tcp or --udp; \
                see add-service --from)",
        long_help = concat!(
            "Only the service of this client class (with --tcp or --udp): the \
             one for the clients in these prefixes (CIDR[,CIDR…]), as \
             add-service --from created it. With --tcp or --udp but without \
             --from: the service for every client no class takes. ",
            from_details!()
        )
    )]
    from: Vec<filter::CidrList>,
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, optional.
#[derive(Args, Debug)]
#[group(required = false, multiple = false)]
struct MaybeServiceChoice {
    /// TCP virtual service.
    #[arg(long, short = 't', visible_alias = "tcp-service", value_name = "VIP:PORTS", value_parser = parse_vip)]
    tcp: Option<VipPorts>,
    /// UDP virtual service.
    #[arg(long, short = 'u', visible_alias = "udp-service", value_name = "VIP:PORTS", value_parser = parse_vip)]
    udp: Option<VipPorts>,
}

/// A VIP and the ports of a service on it.
type VipPorts = (std::net::IpAddr, Ports);

/// The service `--tcp`/`--udp` names (none if neither is given), for the
/// client class of the `--from` prefixes; an error for prefixes of the
/// other family or too many of them.
fn key(
    tcp: Option<VipPorts>,
    udp: Option<VipPorts>,
    from: &[filter::CidrList],
) -> Result<Option<ServiceKey>, String> {
    let (proto, (vip, ports)) = match (tcp, udp) {
        (Some(a), _) => (Protocol::Tcp, a),
        (_, Some(a)) => (Protocol::Udp, a),
        _ => return Ok(None),
    };
    let mut from: Vec<lvc_proto::filter::Cidr> =
        from.iter().flat_map(|l| l.0.iter().copied()).collect();
    from.sort_unstable();
    from.dedup();
    if from.len() > lvc_proto::MAX_CLASS_PREFIXES {
        return Err(format!(
            "--from gives {} prefixes; a client class has at most {}",
            from.len(),
            lvc_proto::MAX_CLASS_PREFIXES
        ));
    }
    ServiceKey {
        proto,
        vip,
        ports,
        from: Clients::default(),
    }
    .with_from(&from)
    .map(Some)
}

impl ServiceArg {
    fn key(&self) -> Result<ServiceKey, String> {
        key(self.which.tcp, self.which.udp, &self.from)
            .map(|k| k.expect("clap requires one of --tcp/--udp"))
    }
}

impl MaybeService {
    fn key(&self) -> Result<Option<ServiceKey>, String> {
        key(self.which.tcp, self.which.udp, &self.from)
    }
}

/// Health-check options (on a service: the default for its servers; on a
/// server: its own, field by field).
#[derive(Args, Debug, Default)]
struct CheckArgs {
    /// Health check: tcp (connect), http[:/PATH] (GET, status 200-399),
    /// udp[:HEX] (a datagram; a reply is healthy), exec:CMD (exit 0 is
    /// healthy; LVC_SERVER_ADDR/LVC_SERVER_PORT in its environment), none.
    #[arg(long, value_name = "KIND")]
    check: Option<CheckKind>,
    /// Port probed (default: the server's; needed for port-0 services).
    #[arg(long, value_name = "PORT")]
    check_port: Option<u16>,
    /// Seconds between probes (fractions allowed; default 2).
    #[arg(long, value_name = "SECS")]
    check_interval: Option<Secs>,
    /// Seconds a probe may take (default 1; at most the interval).
    #[arg(long, value_name = "SECS")]
    check_timeout: Option<Secs>,
    /// Consecutive successes that bring a failed server back (default 2).
    #[arg(long, value_name = "N")]
    rise: Option<u32>,
    /// Consecutive failures that take a server out (default 3).
    #[arg(long, value_name = "N")]
    fall: Option<u32>,
    /// http: text the response body must contain.
    #[arg(long, value_name = "TEXT")]
    check_expect: Option<String>,
    /// http: healthy statuses, e.g. 200 or 200-299 (default 200-399).
    #[arg(long, value_name = "LO[-HI]")]
    check_status: Option<StatusRange>,
    /// http: Host header (default: the server's address).
    #[arg(long, value_name = "HOST")]
    check_host: Option<String>,
    /// On failure: quiesce (no new connections; established ones go on,
    /// the default) or remove (its connections are dropped too).
    #[arg(long, value_name = "ACTION")]
    on_fail: Option<OnFail>,
}

impl CheckArgs {
    fn spec(self) -> CheckSpec {
        CheckSpec {
            kind: self.check,
            port: self.check_port,
            interval: self.check_interval,
            timeout: self.check_timeout,
            rise: self.rise,
            fall: self.fall,
            expect: self.check_expect,
            status: self.check_status,
            host: self.check_host,
            on_fail: self.on_fail,
        }
    }

    /// The fields given, if any.
    fn edit(self) -> Option<CheckSpec> {
        Some(self.spec()).filter(|s| !s.is_empty())
    }
}

/// `--sorry-server IP:PORT` (or `none`) and `--sorry-method`.
#[derive(Args, Debug)]
struct SorryArgs {
    /// Server that takes new connections while no real server does (all
    /// failed their checks or have weight 0); `none` removes it.
    #[arg(long, value_name = "IP:PORT|none")]
    sorry_server: Option<SorryAddr>,
    /// How packets reach the sorry server (default nat).
    #[arg(long, value_name = "METHOD", requires = "sorry_server")]
    sorry_method: Option<Method>,
}

#[derive(Clone, Copy, Debug)]
enum SorryAddr {
    None,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for SorryAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(SorryAddr::None);
        }
        s.parse()
            .map(SorryAddr::At)
            .map_err(|_| format!("`{s}` is not IP:PORT (10.0.2.9:80, [2001:db8::9]:80) or none"))
    }
}

impl SorryArgs {
    /// The sorry server given, and whether `none` was.
    fn sorry(&self) -> (Option<Sorry>, bool) {
        match self.sorry_server {
            Some(SorryAddr::At(addr)) => (
                Some(Sorry {
                    addr,
                    method: self.sorry_method.unwrap_or_default(),
                }),
                false,
            ),
            Some(SorryAddr::None) => (None, true),
            None => (None, false),
        }
    }
}

/// The forwarding method: `--method` or ipvsadm's `-m`, `-g`, `-i`.
#[derive(Args, Debug, Default)]
#[group(multiple = false)]
struct MethodArg {
    /// Forwarding method: nat (director is the gateway), dnat (real
    /// servers SNAT their own replies to the VIP), dr (direct routing),
    /// tun (IPIP tunnel) or fullnat (the director also SNATs to its local
    /// pool). Default: nat; ipvsadm's -a: dr, as ipvsadm.
    #[arg(long, value_name = "METHOD")]
    method: Option<Method>,
    /// The nat method (ipvsadm's masquerading).
    #[arg(short = 'm', long)]
    masquerading: bool,
    /// The dr method (ipvsadm's gatewaying, direct routing).
    #[arg(short = 'g', long)]
    gatewaying: bool,
    /// The tun method (ipvsadm's IPIP encapsulation).
    #[arg(short = 'i', long)]
    ipip: bool,
}

impl MethodArg {
    fn method(&self) -> Option<Method> {
        if self.masquerading {
            Some(Method::Nat)
        } else if self.gatewaying {
            Some(Method::Dr)
        } else if self.ipip {
            Some(Method::Tun)
        } else {
            self.method
        }
    }
}

/// Connection thresholds (ipvsadm's -x/-y).
#[derive(Args, Debug, Default)]
struct LimitArgs {
    /// Upper connection threshold: at N connections (active and inactive,
    /// as IPVS counts them) the server gets no new ones (0: no limit).
    #[arg(long, short = 'x', visible_alias = "u-threshold", value_name = "N")]
    max_conns: Option<u32>,
    /// Lower threshold: an overloaded server takes new connections again
    /// once under M (default: ¾ of --max-conns).
    #[arg(long, short = 'y', visible_alias = "l-threshold", value_name = "M")]
    min_conns: Option<u32>,
}

/// A service's client policy (add-service): who may connect and how fast
/// new connections may come.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Client policy")]
struct PolicyArgs {
    /// Only clients in these prefixes reach the service (CIDR[,CIDR…];
    /// may be repeated). Where an allow and a deny prefix both hold a
    /// client, the longest prefix decides; equal lengths: deny.
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = filter::cidrs)]
    allow: Vec<filter::CidrList>,
    /// Clients in these prefixes never reach the service (CIDR[,CIDR…];
    /// may be repeated), unless a longer --allow prefix holds them.
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = filter::cidrs)]
    deny: Vec<filter::CidrList>,
    /// New connections per second the service takes; the first packets of
    /// the excess are dropped before any connection state is made.
    #[arg(long, value_name = "N")]
    conn_rate: Option<u32>,
    /// New connections that may come at once above --conn-rate (default:
    /// one second's worth, the rate).
    #[arg(long, value_name = "B")]
    conn_burst: Option<u32>,
}

impl PolicyArgs {
    /// The policy, checked for a service whose VIP is IPv4 or not.
    fn policy(self, v4: bool) -> Result<lvc_proto::filter::Policy, String> {
        let p = lvc_proto::filter::Policy {
            allow: filter::flatten(self.allow),
            deny: filter::flatten(self.deny),
            conn_rate: self.conn_rate,
            conn_burst: self.conn_burst,
        };
        p.validate(v4)?;
        Ok(p)
    }
}

/// Changes to a service's client policy (edit-service).
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Client policy")]
struct PolicyEditArgs {
    /// New allow list, replacing the old one: only clients in these
    /// prefixes reach the service (CIDR[,CIDR…]; may be repeated). Where an
    /// allow and a deny prefix both hold a client, the longest prefix
    /// decides; equal lengths: deny.
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = filter::cidrs)]
    allow: Vec<filter::CidrList>,
    /// Remove the allow list: every client not denied reaches the service.
    #[arg(long, conflicts_with = "allow")]
    no_allow: bool,
    /// New deny list, replacing the old one: clients in these prefixes
    /// never reach the service unless a longer allow prefix holds them
    /// (CIDR[,CIDR…]; may be repeated).
    #[arg(long, value_name = "CIDR[,CIDR…]", value_parser = filter::cidrs)]
    deny: Vec<filter::CidrList>,
    /// Remove the deny list.
    #[arg(long, conflicts_with = "deny")]
    no_deny: bool,
    /// New connections per second the service takes, the excess dropped
    /// at its first packet before any state is made (0 removes the limit).
    #[arg(long, value_name = "N")]
    conn_rate: Option<u32>,
    /// New burst above the rate (0: one second's worth).
    #[arg(long, value_name = "B")]
    conn_burst: Option<u32>,
}

/// An edit's new lists and rate: `(allow, deny, conn_rate, conn_burst)`.
type PolicyEdit = (
    Option<Vec<lvc_proto::filter::Cidr>>,
    Option<Vec<lvc_proto::filter::Cidr>>,
    Option<u32>,
    Option<u32>,
);

impl PolicyEditArgs {
    /// The changes, checked as far as they can be without the service's
    /// current policy (`v4`: its VIP is IPv4).
    fn edit(self, v4: bool) -> Result<PolicyEdit, String> {
        let list = |clear: bool, given: Vec<filter::CidrList>| {
            if clear {
                Some(Vec::new())
            } else if given.is_empty() {
                None
            } else {
                Some(filter::flatten(given))
            }
        };
        let allow = list(self.no_allow, self.allow);
        let deny = list(self.no_deny, self.deny);
        lvc_proto::filter::Policy {
            allow: allow.clone().unwrap_or_default(),
            deny: deny.clone().unwrap_or_default(),
            ..Default::default()
        }
        .validate(v4)?;
        if self.conn_rate == Some(0) && self.conn_burst.is_some() {
            return Err(
                "--conn-burst with --conn-rate 0: removing the limit leaves no burst to set".into(),
            );
        }
        Ok((allow, deny, self.conn_rate, self.conn_burst))
    }
}

/// What `--proxy-protocol` does, for add-server's and edit-server's long
/// help (and so the man page).
macro_rules! proxy_protocol_details {
    () => {
        "The real server then learns the client's address and port, as \
         haproxy (bind … accept-proxy) or nginx (listen … proxy_protocol) \
         expect them.\n\n\
         lvc inserts the header in front of the first byte the client sends \
         and shifts the sequence and acknowledgement numbers (SACK blocks \
         included) for the rest of the connection; it clamps the MSS the \
         client announces by the header's length, so that the first segment, \
         header included, still fits. Only with the nat and fullnat \
         methods, where lvc sees both directions, and only on TCP services. \
         Such connections stay in userspace (they are not offloaded to XDP). \
         A change (edit-server --proxy-protocol) applies to new connections \
         only; open ones keep what they started with. Connections taken over \
         after a restart of lvc-dataplane or from a peer director (sync) do \
         not carry the shift and get no PROXY header."
    };
}

/// `--proxy-protocol` is possible for a server of `service` reached with
/// `method` (`None`: unchanged, the daemon checks); `defaulted`: the
/// method is ipvsadm's default (dr), not one the command line gave.
fn proxy_protocol_fits(
    proxy: ProxyProtocol,
    service: &ServiceKey,
    method: Option<Method>,
    defaulted: bool,
) -> Result<(), String> {
    if proxy.is_off() {
        return Ok(());
    }
    if service.proto != Protocol::Tcp {
        return Err(format!(
            "--proxy-protocol needs a TCP service (the header goes at the start of a \
             TCP connection); {service} is not one"
        ));
    }
    match method {
        None | Some(Method::Nat | Method::Fullnat) => Ok(()),
        Some(m @ (Method::Dr | Method::Tun | Method::Dnat)) => {
            let why = if defaulted {
                format!(
                    "; -a's default method is {m}, as ipvsadm's: add -m (nat) or \
                     --method fullnat"
                )
            } else {
                format!(", not {m}")
            };
            Err(format!(
                "--proxy-protocol needs a method where lvc sees both directions \
                 (nat, fullnat){why}"
            ))
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SaveFormat {
    /// The configuration file (everything lvc runs).
    Toml,
    /// The configuration file as JSON.
    Json,
    /// ipvsadm-save rules (-A/-a lines), for what ipvsadm can express.
    Ipvsadm,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a virtual service (with --from, a client class of its VIP and
    /// ports: a service of its own for those clients).
    #[command(short_flag = 'A', long_flag = "add-service")]
    AddService {
        #[command(flatten)]
        service: ServiceArg,
        /// Scheduler: rr, wrr, lc, wlc, sed, nq, sh, mh. Default: rr;
        /// ipvsadm's -A: wlc, as ipvsadm.
        #[arg(long, short = 's')]
        scheduler: Option<Scheduler>,
        /// Client affinity: connections from one client (network) go to the
        /// same server until SECS after its last connection (default 360).
        #[arg(long, short = 'p', value_name = "SECS", num_args = 0..=1,
              default_missing_value = "360")]
        persistent: Option<u32>,
        /// Persistence granularity: clients in one network share a server.
        /// IPv4: a mask (255.255.255.0) or a prefix length (24); IPv6: a
        /// prefix length 1..128 (64). Default: one client address.
        #[arg(long, short = 'M', value_name = "MASK")]
        netmask: Option<Netmask>,
        #[command(flatten)]
        check: CheckArgs,
        /// Command run (sh -c) on every change of a server's health, with
        /// LVC_SERVICE, LVC_SERVER, LVC_STATE (up/down) and LVC_REASON set.
        #[arg(long, value_name = "CMD")]
        alert: Option<String>,
        #[command(flatten)]
        sorry: SorryArgs,
        /// Pick up TCP connections mid-flow (IPVS's sloppy_tcp): for
        /// directors behind ECMP, where a flow may move to this director.
        #[arg(long)]
        sloppy: bool,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change a virtual service's scheduler, persistence, health check,
    /// alert, sorry server, client lists or connection rate limit.
    #[command(short_flag = 'E', long_flag = "edit-service")]
    EditService {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(long, short = 's')]
        scheduler: Option<Scheduler>,
        /// New persistence timeout (0: not persistent).
        #[arg(long, short = 'p', value_name = "SECS", num_args = 0..=1,
              default_missing_value = "360")]
        persistent: Option<u32>,
        /// New persistence granularity: 255.255.255.0 or 24 for IPv4, a
        /// prefix length 1..128 for IPv6.
        #[arg(long, short = 'M', value_name = "MASK")]
        netmask: Option<Netmask>,
        #[command(flatten)]
        check: CheckArgs,
        /// New alert command ("" removes it).
        #[arg(long, value_name = "CMD")]
        alert: Option<String>,
        #[command(flatten)]
        sorry: SorryArgs,
        /// Pick up TCP connections mid-flow, or stop.
        #[arg(long, value_name = "on|off", value_parser = on_off)]
        sloppy: Option<bool>,
        #[command(flatten)]
        policy: PolicyEditArgs,
    },
    /// Delete a virtual service and its real servers.
    #[command(short_flag = 'D', long_flag = "delete-service")]
    DelService {
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Add a real server to a service.
    #[command(short_flag = 'a', long_flag = "add-server")]
    AddServer {
        #[command(flatten)]
        service: ServiceArg,
        /// Real server, RIP[:PORT] (port defaults to the service's).
        #[arg(
            long,
            short = 'r',
            visible_alias = "real-server",
            value_name = "RIP[:PORT]"
        )]
        real: RealSpec,
        /// Weight, 0..=65535 (0: no new connections).
        #[arg(long, short = 'w', default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        method: MethodArg,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        check: CheckArgs,
        #[arg(
            long,
            value_name = "v1|v2",
            help = "PROXY protocol header in front of each new TCP connection to \
                    this server: v1 (text) or v2 (binary); nat and fullnat only",
            long_help = concat!(
                "Put a PROXY protocol header, v1 (text) or v2 (binary), in front of \
                 each new TCP connection to this server (default: off). ",
                proxy_protocol_details!()
            )
        )]
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// Change a real server's weight, method, health check, connection
    /// thresholds or PROXY protocol header.
    #[command(short_flag = 'e', long_flag = "edit-server")]
    EditServer {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(
            long,
            short = 'r',
            visible_alias = "real-server",
            value_name = "RIP[:PORT]"
        )]
        real: RealSpec,
        #[arg(long, short = 'w')]
        weight: Option<u32>,
        #[command(flatten)]
        method: MethodArg,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        check: CheckArgs,
        #[arg(
            long,
            value_name = "v1|v2|off",
            help = "New PROXY protocol header: v1 (text), v2 (binary) or off \
                    (new connections only)",
            long_help = concat!(
                "Put a PROXY protocol header, v1 (text) or v2 (binary), in front of \
                 each new TCP connection to this server, or no longer (off). ",
                proxy_protocol_details!()
            )
        )]
        proxy_protocol: Option<ProxyProtocol>,
    },
    /// Remove a real server from a service.
    #[command(short_flag = 'd', long_flag = "delete-server")]
    DelServer {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(
            long,
            short = 'r',
            visible_alias = "real-server",
            value_name = "RIP[:PORT]"
        )]
        real: RealSpec,
    },
    /// List services and real servers (numeric, like ipvsadm -L -n; the
    /// -L spelling is ipvsadm's listing exactly).
    ///
    /// The list spelling also shows a service's client policy on a line
    /// under it: `-> allow CIDRs deny CIDRs conn-rate N/s burst B`; and
    /// after a server, `(PROXY v1)` or `(PROXY v2)` if it gets a PROXY
    /// protocol header, `(at max-conns)` while it is at its upper
    /// connection threshold. Both spellings end a client-class service's
    /// line with its class, `from CIDR,…` (see add-service --from).
    #[command(short_flag = 'L', long_flag = "list", short_flag_alias = 'l')]
    List {
        /// Only this service.
        #[command(flatten)]
        service: MaybeService,
        /// Show traffic counters (the list spelling also shows, under a
        /// service, the packets the filter, its client lists or its rate
        /// limit dropped).
        #[arg(long, conflicts_with_all = ["rate", "thresholds"])]
        stats: bool,
        /// Show per-second rates.
        #[arg(long, conflicts_with = "thresholds")]
        rate: bool,
        /// Show connection thresholds (--max-conns, --min-conns).
        #[arg(long)]
        thresholds: bool,
        /// Numbers in full (not 123K).
        #[arg(long, short = 'X')]
        exact: bool,
        /// List connections (ipvsadm -L -c).
        #[arg(long, short = 'c', conflicts_with_all = ["stats", "rate", "thresholds", "timeout"])]
        connection: bool,
        /// Show the timeouts (tcp tcpfin udp).
        #[arg(long, conflicts_with_all = ["stats", "rate", "thresholds"])]
        timeout: bool,
        /// Sort services and servers (ipvsadm's default; accepted for
        /// compatibility).
        #[arg(long, conflicts_with = "nosort")]
        sort: bool,
        /// Keep the configuration's order (-L).
        #[arg(long)]
        nosort: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the running configuration: the config file (TOML), or JSON,
    /// or ipvsadm rules (the -S spelling's default).
    ///
    /// ipvsadm rules are refused, naming each item, when the configuration
    /// holds what they cannot express: client-class services (--from),
    /// several ports, client policies, health checks, PROXY protocol
    /// headers, the dnat and fullnat methods, the global filter.
    #[command(short_flag = 'S', long_flag = "save")]
    Save {
        #[arg(long, value_enum, conflicts_with = "json")]
        format: Option<SaveFormat>,
        /// As JSON (--format json).
        #[arg(long)]
        json: bool,
    },
    /// Restore a configuration: a config file (TOML) replaces the running
    /// one; ipvsadm rules (ipvsadm -S output, lvc-ctl save --format
    /// ipvsadm) are applied on top of it in order, as ipvsadm -R does.
    /// Either way all or nothing.
    #[command(short_flag = 'R', long_flag = "restore")]
    Restore {
        /// Configuration file or rules; standard input if absent.
        file: Option<PathBuf>,
    },
    /// Remove every virtual service.
    #[command(short_flag = 'C', long_flag = "clear")]
    Clear,
    /// Zero the counters of one service, or of all.
    #[command(short_flag = 'Z', long_flag = "zero")]
    Zero {
        #[command(flatten)]
        service: MaybeService,
    },
    /// Set connection timeouts in seconds (0 or absent: unchanged):
    /// --set TCP TCPFIN UDP as ipvsadm, or by name.
    #[command(long_flag = "set")]
    SetTimeouts {
        /// TCP TCPFIN UDP, all three (ipvsadm's form).
        #[arg(value_name = "SECS", num_args = 0..=3, conflicts_with_all = ["tcp", "tcpfin", "udp"])]
        values: Vec<u32>,
        #[arg(long)]
        tcp: Option<u32>,
        #[arg(long)]
        tcpfin: Option<u32>,
        #[arg(long)]
        udp: Option<u32>,
    },
    /// Set the fullnat local address pool (none: empty it).
    SetLocalPool {
        /// Director addresses dedicated to fullnat (configure them on the
        /// server-side interface too, so the kernel answers ARP for them).
        addrs: Vec<IpAddr>,
    },
    /// List tracked connections (like ipvsadm -L -c -n).
    Conns {
        #[command(flatten)]
        service: MaybeService,
        /// Only connections to this real server.
        #[arg(long, value_name = "RIP[:PORT]")]
        server: Option<RealSpec>,
        /// Only connections from this client address.
        #[arg(long, value_name = "IP")]
        client: Option<IpAddr>,
        /// Most connections to list.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Daemon status: version, interfaces, queues, XDP mode, uptime, tables.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Traffic shaping: class trees, filters and policers (tc-like).
    Shape {
        #[command(subcommand)]
        cmd: ShapeCmd,
    },
    /// The global packet filter over VIP traffic: ordered drop/accept rules
    /// and the named prefix sets they use.
    ///
    /// Rules are looked at in prio order (lowest first) and the first rule
    /// that matches a packet decides; at most 64 rules. Rules on header
    /// fields (--src, --dst, --proto, --dport, --iface) are evaluated in
    /// the XDP program, so a drop costs about what an XDP drop costs;
    /// rules with --real are evaluated when a connection is scheduled, and
    /// adding a drop rule with --real ends the established connections it
    /// matches. accept ends the filter for the packet; the service's own
    /// --allow/--deny lists and --conn-rate still apply after it.
    Filter {
        #[command(subcommand)]
        cmd: filter::FilterCmd,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `lvc-ctl shape …`: rates (`100mbit`, `10kbps`) and sizes (`10kb`,
/// `1514b`) in tc's units, class ids `MAJOR:MINOR` in hex.
#[derive(Subcommand, Debug)]
enum ShapeCmd {
    /// Shape an interface: its link rate and default class (keeps the
    /// classes already there).
    SetRoot {
        #[arg(long, value_name = "IF")]
        dev: String,
        /// Link rate, e.g. 100mbit.
        #[arg(long, value_name = "RATE")]
        rate: Rate,
        /// Leaf class for unclassified traffic (none: sent unshaped).
        #[arg(long, value_name = "M:N")]
        default: Option<ClassId>,
    },
    /// Remove all shaping from an interface (classes, filters, policers).
    DelRoot {
        #[arg(long, value_name = "IF")]
        dev: String,
    },
    /// Add a class.
    AddClass(ClassArgs),
    /// Replace an existing class's parameters (same options as add-class).
    ChangeClass(ClassArgs),
    /// Delete a class.
    DelClass {
        #[arg(long, value_name = "IF")]
        dev: String,
        #[arg(long, value_name = "M:N")]
        classid: ClassId,
    },
    /// Add a filter: packets matching every --match go to --flowid.
    AddFilter {
        #[arg(long, value_name = "IF")]
        dev: String,
        /// Identifies the filter; lower priorities are tried first.
        #[arg(long, value_name = "N")]
        prio: u32,
        /// A match, quoted: 'ip src CIDR', 'ip dst CIDR', 'ip tos VALUE
        /// MASK', 'ip dscp N', 'ip protocol tcp|udp|icmp|N', 'ip sport
        /// PORT [MASK]', 'ip dport PORT [MASK]', 'real ADDR[:PORT]',
        /// 'service tcp|udp:VIP:PORT' (every client class of it),
        /// 'u32 VALUE MASK at OFFSET'. Repeat to AND several.
        #[arg(long = "match", value_name = "EXPR", required = true)]
        matches: Vec<Match>,
        /// The leaf class the packets go to.
        #[arg(long, value_name = "M:N")]
        flowid: ClassId,
    },
    /// Delete a filter.
    DelFilter {
        #[arg(long, value_name = "IF")]
        dev: String,
        #[arg(long, value_name = "N")]
        prio: u32,
    },
    /// Police a class or a service's incoming traffic: drop what exceeds
    /// the rate plus the burst.
    ///
    /// A service's policer is for one client class: give the same --from
    /// as add-service did (none: the service without a class).
    #[command(group(police_target_group()))]
    AddPolice {
        #[command(flatten)]
        target: PoliceTargetArgs,
        /// Rate let through, e.g. 10mbit.
        #[arg(long, value_name = "RATE")]
        rate: Rate,
        /// Bytes that may pass at once above the rate, e.g. 10kb.
        #[arg(long, value_name = "SIZE")]
        burst: Size,
    },
    /// Remove a policer.
    #[command(group(police_target_group()))]
    DelPolice {
        #[command(flatten)]
        target: PoliceTargetArgs,
    },
    /// Show interfaces, classes, filters and policers.
    List {
        /// Only this interface (and the policers of its classes).
        #[arg(long, value_name = "IF")]
        dev: Option<String>,
        /// Show counters.
        #[arg(long)]
        stats: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// `add-class` and `change-class`.
#[derive(Args, Debug)]
struct ClassArgs {
    /// Shaped interface.
    #[arg(long, value_name = "IF")]
    dev: String,
    /// The class, MAJOR:MINOR in hex (1:10 is minor 0x10).
    #[arg(long, value_name = "M:N")]
    classid: ClassId,
    /// Parent class (default: the root).
    #[arg(long, value_name = "M:N")]
    parent: Option<ClassId>,
    /// Guaranteed rate.
    #[arg(long, value_name = "RATE")]
    rate: Rate,
    /// Up to where it may borrow (default: --rate).
    #[arg(long, value_name = "RATE")]
    ceil: Option<Rate>,
    /// Bytes it may send at once above its rate (default: 5 ms at the rate
    /// plus one packet).
    #[arg(long, value_name = "SIZE")]
    burst: Option<Size>,
    /// Lower is served first when borrowing (0..=8; 8 is CBQ's lowest, as
    /// the paper's datafill writes it).
    #[arg(long, value_name = "N", default_value_t = 0)]
    prio: u8,
    /// Never borrow (ceil = rate).
    #[arg(long)]
    bounded: bool,
    /// Never lend unused rate outside its subtree.
    #[arg(long)]
    isolated: bool,
    #[command(flatten)]
    qdisc: QdiscArgs,
}

impl ClassArgs {
    fn spec(self) -> Result<(String, ClassSpec), String> {
        let qdisc = self.qdisc.qdisc()?;
        Ok((
            self.dev,
            ClassSpec {
                classid: self.classid,
                parent: self.parent,
                rate: self.rate,
                ceil: self.ceil,
                burst: self.burst,
                prio: self.prio,
                bounded: self.bounded,
                isolated: self.isolated,
                qdisc,
            },
        ))
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum QdiscKind {
    Sfq,
    Fifo,
    Prio3,
    Red,
    Tbf,
}

impl QdiscKind {
    fn name(self) -> &'static str {
        match self {
            QdiscKind::Sfq => "sfq",
            QdiscKind::Fifo => "fifo",
            QdiscKind::Prio3 => "prio3",
            QdiscKind::Red => "red",
            QdiscKind::Tbf => "tbf",
        }
    }
}

/// A leaf class's queue discipline and its options.
#[derive(Args, Debug)]
#[command(next_help_heading = "Queue discipline")]
struct QdiscArgs {
    /// Queue discipline of the class if it is a leaf (default: fifo).
    #[arg(long, value_enum, value_name = "QDISC")]
    qdisc: Option<QdiscKind>,
    /// sfq: bytes a flow may send per round (default 1514b).
    #[arg(long, value_name = "SIZE")]
    quantum: Option<Size>,
    /// sfq: seconds between hash perturbations (default 0: never).
    #[arg(long, value_name = "SECS")]
    perturb: Option<u32>,
    /// sfq: flows that may be queued at once (default 128).
    #[arg(long, value_name = "N")]
    flows: Option<u32>,
    /// Queue limit: packets for sfq, fifo and prio3; a size for red and
    /// tbf.
    #[arg(long, value_name = "PACKETS|SIZE")]
    limit: Option<String>,
    /// red: average queue below which nothing is dropped.
    #[arg(long, value_name = "SIZE")]
    min: Option<Size>,
    /// red: average queue above which everything is dropped.
    #[arg(long, value_name = "SIZE")]
    max: Option<Size>,
    /// red: drop probability at --max (0 < P <= 1).
    #[arg(long, value_name = "P")]
    probability: Option<f64>,
    /// tbf: its own rate.
    #[arg(long, value_name = "RATE")]
    tbf_rate: Option<Rate>,
    /// tbf: its bucket size.
    #[arg(long, value_name = "SIZE")]
    tbf_burst: Option<Size>,
    /// tbf: the longest a packet may wait (instead of --limit; default
    /// 50ms).
    #[arg(long, value_name = "TIME", conflicts_with = "limit")]
    latency: Option<Micros>,
}

impl QdiscArgs {
    /// The `Qdisc` these options describe; an option of another qdisc, or
    /// a missing required one, is an error naming it.
    fn qdisc(self) -> Result<Qdisc, String> {
        let kind = self.qdisc.unwrap_or(QdiscKind::Fifo);
        let given: [(&str, QdiscKind, bool); 9] = [
            ("--quantum", QdiscKind::Sfq, self.quantum.is_some()),
            ("--perturb", QdiscKind::Sfq, self.perturb.is_some()),
            ("--flows", QdiscKind::Sfq, self.flows.is_some()),
            ("--min", QdiscKind::Red, self.min.is_some()),
            ("--max", QdiscKind::Red, self.max.is_some()),
            ("--probability", QdiscKind::Red, self.probability.is_some()),
            ("--tbf-rate", QdiscKind::Tbf, self.tbf_rate.is_some()),
            ("--tbf-burst", QdiscKind::Tbf, self.tbf_burst.is_some()),
            ("--latency", QdiscKind::Tbf, self.latency.is_some()),
        ];
        if let Some((opt, owner, _)) = given.iter().find(|(_, k, set)| *set && *k != kind) {
            let article = if *owner == QdiscKind::Sfq { "an" } else { "a" };
            let hint = if self.qdisc.is_none() {
                format!(" (the default qdisc; add --qdisc {})", owner.name())
            } else {
                String::new()
            };
            return Err(format!(
                "{opt} is {article} {} option, not {}{hint}",
                owner.name(),
                kind.name()
            ));
        }
        let packets = |l: &Option<String>| -> Result<Option<u32>, String> {
            l.as_deref()
                .map(|s| {
                    s.trim().parse::<u32>().map_err(|_| {
                        format!("--limit `{s}`: {} takes a number of packets", kind.name())
                    })
                })
                .transpose()
        };
        let bytes = |l: &Option<String>| -> Result<Option<Size>, String> {
            l.as_deref()
                .map(|s| s.parse::<Size>().map_err(|e| format!("--limit: {e}")))
                .transpose()
        };
        let need = |missing: &[(&str, bool)]| -> Result<(), String> {
            let names: Vec<&str> = missing
                .iter()
                .filter(|(_, set)| !set)
                .map(|(n, _)| *n)
                .collect();
            match names.as_slice() {
                [] => Ok(()),
                [one] => Err(format!("--qdisc {} needs {one}", kind.name())),
                [init @ .., last] => Err(format!(
                    "--qdisc {} needs {} and {last}",
                    kind.name(),
                    init.join(", ")
                )),
            }
        };
        Ok(match kind {
            QdiscKind::Sfq => Qdisc::Sfq {
                quantum: self.quantum,
                perturb: self.perturb,
                flows: self.flows,
                limit: packets(&self.limit)?,
            },
            QdiscKind::Fifo => Qdisc::Fifo {
                limit: packets(&self.limit)?,
            },
            QdiscKind::Prio3 => Qdisc::Prio3 {
                limit: packets(&self.limit)?,
            },
            QdiscKind::Red => {
                need(&[
                    ("--min", self.min.is_some()),
                    ("--max", self.max.is_some()),
                    ("--probability", self.probability.is_some()),
                ])?;
                Qdisc::Red {
                    min: self.min.expect("checked"),
                    max: self.max.expect("checked"),
                    probability: self.probability.expect("checked"),
                    limit: bytes(&self.limit)?,
                }
            }
            QdiscKind::Tbf => {
                need(&[
                    ("--tbf-rate", self.tbf_rate.is_some()),
                    ("--tbf-burst", self.tbf_burst.is_some()),
                ])?;
                Qdisc::Tbf {
                    rate: self.tbf_rate.expect("checked"),
                    burst: self.tbf_burst.expect("checked"),
                    limit: bytes(&self.limit)?,
                    latency: self.latency,
                }
            }
        })
    }
}

/// What a policer watches: `--dev IF --classid M:N`, `--tcp VIP:PORT` or
/// `--udp VIP:PORT` (exactly one; see `police_target_group`).
#[derive(Args, Debug)]
struct PoliceTargetArgs {
    /// Interface of the policed class.
    #[arg(long, value_name = "IF", requires = "classid")]
    dev: Option<String>,
    /// The policed class.
    #[arg(long, value_name = "M:N", requires = "dev")]
    classid: Option<ClassId>,
    /// TCP service whose incoming traffic is policed.
    #[arg(long, short = 't', value_name = "VIP:PORT", value_parser = tcp_service)]
    tcp: Option<ServiceKey>,
    /// UDP service whose incoming traffic is policed.
    #[arg(long, short = 'u', value_name = "VIP:PORT", value_parser = udp_service)]
    udp: Option<ServiceKey>,
    /// The service's client class (as add-service --from gave it).
    #[arg(long, value_name = "CIDR[,CIDR…]")]
    from: Option<String>,
}

fn police_target_group() -> clap::ArgGroup {
    clap::ArgGroup::new("target")
        .args(["dev", "tcp", "udp"])
        .required(true)
        .multiple(false)
}

fn tcp_service(s: &str) -> Result<ServiceKey, String> {
    ServiceKey::parse(Protocol::Tcp, s)
}

fn udp_service(s: &str) -> Result<ServiceKey, String> {
    ServiceKey::parse(Protocol::Udp, s)
}

impl PoliceTargetArgs {
    fn target(self) -> Result<PoliceTarget, String> {
        Ok(match (self.dev, self.classid, self.tcp.or(self.udp)) {
            (Some(_), Some(_), _) if self.from.is_some() => {
                return Err("--from names a service's client class: give --tcp or --udp".into());
            }
            (Some(dev), Some(classid), _) => PoliceTarget::Class { dev, classid },
            (_, _, Some(service)) => match &self.from {
                Some(f) => {
                    PoliceTarget::Service(service.with_from(&lvc_proto::filter::cidr_list(f)?)?)
                }
                None => PoliceTarget::Service(service),
            },
            _ => unreachable!("clap requires --dev/--classid, --tcp or --udp"),
        })
    }
}

/// The request for a `shape` command and how to show its answer.
fn shape_request(cmd: ShapeCmd) -> Result<(Request, Show), String> {
    Ok(match cmd {
        ShapeCmd::SetRoot { dev, rate, default } => {
            (Request::ShapeSetRoot { dev, rate, default }, Show::Nothing)
        }
        ShapeCmd::DelRoot { dev } => (Request::ShapeDelRoot { dev }, Show::Nothing),
        ShapeCmd::AddClass(args) => {
            let (dev, class) = args.spec()?;
            (Request::ShapeAddClass { dev, class }, Show::Nothing)
        }
        ShapeCmd::ChangeClass(args) => {
            let (dev, class) = args.spec()?;
            (Request::ShapeChangeClass { dev, class }, Show::Nothing)
        }
        ShapeCmd::DelClass { dev, classid } => {
            (Request::ShapeDelClass { dev, classid }, Show::Nothing)
        }
        ShapeCmd::AddFilter {
            dev,
            prio,
            matches,
            flowid,
        } => (
            Request::ShapeAddFilter {
                dev,
                filter: FilterSpec {
                    prio,
                    matches,
                    flowid,
                },
            },
            Show::Nothing,
        ),
        ShapeCmd::DelFilter { dev, prio } => (Request::ShapeDelFilter { dev, prio }, Show::Nothing),
        ShapeCmd::AddPolice {
            target,
            rate,
            burst,
        } => (
            Request::ShapeAddPolice {
                police: PoliceSpec {
                    target: target.target()?,
                    rate,
                    burst,
                },
            },
            Show::Nothing,
        ),
        ShapeCmd::DelPolice { target } => (
            Request::ShapeDelPolice {
                target: target.target()?,
            },
            Show::Nothing,
        ),
        ShapeCmd::List { dev, stats, json } => {
            (Request::ShapeList {}, Show::Shaping { dev, stats, json })
        }
    })
}

/// Keeps `dev`'s tree and the policers of its classes.
fn only_dev(mut l: ShapeListing, dev: &str) -> ShapeListing {
    l.devs.retain(|d| d.dev == dev);
    l.police
        .retain(|p| matches!(&p.spec.target, PoliceTarget::Class { dev: d, .. } if d == dev));
    l
}

/// Exit codes for failures before the daemon answered (daemon errors use
/// `ErrorCode::exit_code`).
const EXIT_USAGE: u8 = 64;
const EXIT_CONNECT: u8 = 69;
const EXIT_IO: u8 = 74;
const EXIT_PROTOCOL: u8 = 76;

/// How to show the daemon's answer.
enum Show {
    Nothing,
    Listing {
        opts: format::ListOpts,
        /// Only this service (`-L -t VIP:PORT`).
        only: Option<ServiceKey>,
    },
    Json,
    Status,
    Config,
    ConfigJson,
    /// `save --format ipvsadm`.
    Rules,
    Conns,
    /// `-L -c`.
    IpvsadmConns,
    /// `-L --timeout`.
    Timeouts,
    /// `shape list`, optionally one interface's part.
    Shaping {
        dev: Option<String>,
        stats: bool,
        json: bool,
    },
    /// `filter list`.
    Filter {
        stats: bool,
        exact: bool,
        json: bool,
    },
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: say on or off")),
    }
}

/// Whether a command line is spelled as ipvsadm spells it: its command is
/// an option (`-A`, `-L`, `--add-server` …) or there is none. Such a
/// command takes ipvsadm's defaults (scheduler wlc, method dr — with the
/// service's port, as ipvsadm uses it for dr and tun —, `-S` writes
/// ipvsadm rules) and `-L` prints ipvsadm's listing exactly; lvc's verbs
/// (`add-service` …) keep lvc's defaults.
fn ipvsadm_style<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> bool {
    let mut it = args.iter().map(|a| a.as_ref().to_string_lossy());
    while let Some(a) = it.next() {
        match a.as_ref() {
            "--socket" => {
                it.next();
            }
            "-n" | "--numeric" => {}
            a if a.starts_with("--socket=") => {}
            a => return a.starts_with('-'),
        }
    }
    true
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let ipvsadm = ipvsadm_style(&args[1..]);
    let cli = Cli::parse_from(&args);
    // No command: list, as ipvsadm does.
    let cmd = match cli.cmd {
        Some(cmd) => cmd,
        None => Cli::parse_from(["lvc-ctl", "-L"])
            .cmd
            .expect("-L is a command"),
    };
    let (req, show) = match cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "lvc-ctl",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Cmd::Man => {
            return match man_page(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_IO, format!("cannot write the man page: {e}")),
            };
        }
        Cmd::Restore { file } => return restore(&cli.socket, file.as_deref()),
        Cmd::Filter {
            cmd: filter::FilterCmd::Set { cmd },
        } => return filter::run_set(&cli.socket, cmd),
        cmd => match request(cmd, ipvsadm) {
            Ok(x) => x,
            Err((code, msg)) => return fail(code, msg),
        },
    };
    let mut resp = match call(&cli.socket, &req) {
        Ok(r) => r,
        Err((code, msg)) => return fail(code, msg),
    };
    if let (Request::Conns { filter }, Response::Conns(c)) = (&req, &mut resp.result) {
        only_class(filter, c);
    }
    print_response(resp.result, show)
}

/// Keeps, of the connections listed for a client-class service, those
/// from its clients (the daemon may match the VIP and ports only).
fn only_class(filter: &ConnFilter, l: &mut ConnListing) {
    if let Some(k) = filter.service.filter(|k| !k.from.is_empty()) {
        l.conns.retain(|c| k.from.best(c.client.ip()).is_some());
    }
}

/// Why `-L -t …` finds no service `k`: it does not exist, and which
/// client classes its VIP and ports have if any (a `--from` left out or
/// mistyped).
fn missing_service(l: &Listing, k: &ServiceKey) -> String {
    let classes: Vec<String> = l
        .services
        .iter()
        .map(|s| s.service)
        .filter(|s| s.proto == k.proto && s.vip == k.vip && s.ports == k.ports)
        .map(|s| {
            if s.from.is_empty() {
                "without --from".to_owned()
            } else {
                format!("--from {}", s.from)
            }
        })
        .collect();
    if classes.is_empty() {
        return format!("service {k} does not exist");
    }
    format!(
        "service {k} does not exist; its VIP and ports have the services {} (name one \
         with the --from it was added with)",
        classes.join("; ")
    )
}

/// The man page: lvc-ctl's own, then a section per command (and `shape`
/// subcommand) with its synopsis, description and every option.
fn man_page(w: &mut dyn Write) -> std::io::Result<()> {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd.clone()).render(w)?;
    for sub in cmd.get_subcommands() {
        command_section(w, "lvc-ctl", sub)?;
    }
    Ok(())
}

fn command_section(w: &mut dyn Write, parent: &str, cmd: &clap::Command) -> std::io::Result<()> {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return Ok(());
    }
    let name = format!("{parent} {}", cmd.get_name());
    let man = clap_mangen::Man::new(cmd.clone().bin_name(&name));
    let mut roff = Vec::new();
    man.render_synopsis_section(&mut roff)?;
    man.render_description_section(&mut roff)?;
    man.render_options_section(&mut roff)?;
    writeln!(w, ".SH \"{}\"", name.to_uppercase())?;
    for line in String::from_utf8_lossy(&roff).lines() {
        // Its sections become subsections of the command's.
        match line.strip_prefix(".SH ") {
            Some(title) => writeln!(w, ".SS {title}")?,
            None => writeln!(w, "{line}")?,
        }
    }
    for sub in cmd.get_subcommands() {
        command_section(w, &name, sub)?;
    }
    Ok(())
}

/// `restore`: a config file replaces the configuration; ipvsadm rules are
/// applied on top of it as one batch, and an error names the rule's line.
fn restore(socket: &Path, file: Option<&Path>) -> ExitCode {
    let text = match read_input(file) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_IO, e),
    };
    if !ipvsadm::is_rules(&text) {
        return match call(socket, &Request::Restore { config: text }) {
            Ok(r) => print_response(r.result, Show::Nothing),
            Err((code, msg)) => fail(code, msg),
        };
    }
    let (lines, requests): (Vec<usize>, Vec<Request>) = match ipvsadm::parse_rules(&text) {
        Ok(r) => r.into_iter().unzip(),
        Err(e) => return fail(EXIT_USAGE, format!("{e}; nothing was restored")),
    };
    match call(socket, &Request::Batch { requests }) {
        Ok(r) => match r.result {
            Response::Error(e) => {
                let line = e.index.and_then(|i| lines.get(i));
                let msg = match line {
                    Some(n) => format!("line {n}: {}; nothing was restored", e.message),
                    None => e.message,
                };
                fail(e.code.exit_code() as u8, msg)
            }
            other => print_response(other, Show::Nothing),
        },
        Err((code, msg)) => fail(code, msg),
    }
}

/// The request a command makes and how to show its answer; `ipvsadm`: it
/// was spelled as ipvsadm's (see [`ipvsadm_style`]).
fn request(cmd: Cmd, ipvsadm: bool) -> Result<(Request, Show), (u8, String)> {
    Ok(match cmd {
        Cmd::AddService {
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
            let service = service.key().map_err(usage)?;
            let policy = policy
                .policy(service.vip.is_ipv4())
                .map_err(|e| (EXIT_USAGE, e))?;
            (
                Request::AddService {
                    service,
                    scheduler: scheduler.unwrap_or(if ipvsadm {
                        Scheduler::Wlc
                    } else {
                        Scheduler::Rr
                    }),
                    persistent,
                    netmask,
                    check: check.spec(),
                    alert,
                    sorry: sorry.sorry().0,
                    sloppy,
                    policy,
                },
                Show::Nothing,
            )
        }
        Cmd::EditService {
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
            let service = service.key().map_err(usage)?;
            let (allow, deny, conn_rate, conn_burst) = policy
                .edit(service.vip.is_ipv4())
                .map_err(|e| (EXIT_USAGE, e))?;
            (
                Request::EditService {
                    service,
                    scheduler,
                    persistent,
                    netmask,
                    check: check.edit(),
                    alert,
                    sorry: sorry.sorry().0,
                    no_sorry: sorry.sorry().1,
                    sloppy,
                    allow,
                    deny,
                    conn_rate,
                    conn_burst,
                },
                Show::Nothing,
            )
        }
        Cmd::DelService { service } => (
            Request::DelService {
                service: service.key().map_err(usage)?,
            },
            Show::Nothing,
        ),
        Cmd::AddServer {
            service,
            real,
            weight,
            method,
            limits,
            check,
            proxy_protocol,
        } => {
            let service = service.key().map_err(usage)?;
            let given = method.method();
            let method = given.unwrap_or(if ipvsadm { Method::Dr } else { Method::Nat });
            let proxy_protocol = proxy_protocol.unwrap_or_default();
            proxy_protocol_fits(proxy_protocol, &service, Some(method), given.is_none())
                .map_err(|e| (EXIT_USAGE, e))?;
            (
                Request::AddServer {
                    service,
                    real: ipvsadm_port(real, method, ipvsadm),
                    weight,
                    method,
                    check: check.spec(),
                    limits: ConnLimits {
                        max: limits.max_conns.unwrap_or(0),
                        min: limits.min_conns.unwrap_or(0),
                    },
                    proxy_protocol,
                },
                Show::Nothing,
            )
        }
        Cmd::EditServer {
            service,
            real,
            weight,
            method,
            limits,
            check,
            proxy_protocol,
        } => {
            let service = service.key().map_err(usage)?;
            let method = method.method();
            if let Some(p) = proxy_protocol {
                proxy_protocol_fits(p, &service, method, false).map_err(|e| (EXIT_USAGE, e))?;
            }
            let real = match method {
                Some(m) => ipvsadm_port(real, m, ipvsadm),
                None => real,
            };
            (
                Request::EditServer {
                    service,
                    real,
                    weight,
                    method,
                    check: check.edit(),
                    max_conns: limits.max_conns,
                    min_conns: limits.min_conns,
                    proxy_protocol,
                },
                Show::Nothing,
            )
        }
        Cmd::DelServer { service, real } => (
            Request::DelServer {
                service: service.key().map_err(usage)?,
                real,
            },
            Show::Nothing,
        ),
        Cmd::List {
            service,
            stats,
            rate,
            thresholds,
            exact,
            connection,
            timeout,
            sort: _,
            nosort,
            json,
        } => {
            let only = service.key().map_err(usage)?;
            if connection {
                (
                    Request::Conns {
                        filter: ConnFilter {
                            service: only,
                            ..Default::default()
                        },
                    },
                    if json { Show::Json } else { Show::IpvsadmConns },
                )
            } else if timeout {
                (Request::Status {}, Show::Timeouts)
            } else if json {
                (Request::List {}, Show::Json)
            } else {
                let opts = format::ListOpts {
                    stats,
                    rate,
                    thresholds,
                    exact,
                    ipvsadm,
                    nosort,
                    one: only.is_some(),
                };
                (Request::List {}, Show::Listing { opts, only })
            }
        }
        Cmd::Save { format, json } => {
            let format = match (format, json) {
                (_, true) => SaveFormat::Json,
                (Some(f), _) => f,
                (None, _) if ipvsadm => SaveFormat::Ipvsadm,
                (None, _) => SaveFormat::Toml,
            };
            let show = match format {
                SaveFormat::Toml => Show::Config,
                SaveFormat::Json => Show::ConfigJson,
                SaveFormat::Ipvsadm => Show::Rules,
            };
            (Request::Save {}, show)
        }
        Cmd::Clear => (Request::Clear {}, Show::Nothing),
        Cmd::SetLocalPool { addrs } => (Request::SetLocalPool { addrs }, Show::Nothing),
        Cmd::Zero { service } => (
            Request::Zero {
                service: service.key().map_err(usage)?,
            },
            Show::Nothing,
        ),
        Cmd::SetTimeouts {
            values,
            tcp,
            tcpfin,
            udp,
        } => {
            let (tcp, tcpfin, udp) = match values[..] {
                [] => (tcp, tcpfin, udp),
                [t, f, u] => (Some(t), Some(f), Some(u)),
                _ => {
                    return Err((
                        EXIT_USAGE,
                        "--set takes three timeouts, TCP TCPFIN UDP (0: unchanged)".into(),
                    ));
                }
            };
            if tcp.is_none() && tcpfin.is_none() && udp.is_none() {
                return Err((
                    EXIT_USAGE,
                    "set-timeouts: give TCP TCPFIN UDP, or --tcp, --tcpfin and/or --udp".into(),
                ));
            }
            (Request::SetTimeouts { tcp, tcpfin, udp }, Show::Nothing)
        }
        Cmd::Conns {
            service,
            server,
            client,
            limit,
            json,
        } => (
            Request::Conns {
                filter: ConnFilter {
                    service: service.key().map_err(usage)?,
                    server,
                    client,
                    limit,
                },
            },
            if json { Show::Json } else { Show::Conns },
        ),
        Cmd::Status { json } => (
            Request::Status {},
            if json { Show::Json } else { Show::Status },
        ),
        Cmd::Shape { cmd } => shape_request(cmd).map_err(|e| (EXIT_USAGE, e))?,
        Cmd::Filter { cmd } => filter::request(cmd).map_err(|e| (EXIT_USAGE, e))?,
        Cmd::Restore { .. } | Cmd::Completions { .. } | Cmd::Man => {
            return Err((EXIT_USAGE, "not a request to the daemon".into()));
        }
    })
}

/// A usage error (exit status 64) with its message.
fn usage(e: String) -> (u8, String) {
    (EXIT_USAGE, e)
}

/// ipvsadm gives a dr or tun server the service's port whatever was
/// written (the packet reaches it unchanged); lvc's verbs refuse another.
fn ipvsadm_port(real: RealSpec, method: Method, ipvsadm: bool) -> RealSpec {
    if ipvsadm && matches!(method, Method::Dr | Method::Tun) {
        RealSpec { port: None, ..real }
    } else {
        real
    }
}

fn fail(code: u8, msg: String) -> ExitCode {
    eprintln!("lvc-ctl: {msg}");
    ExitCode::from(code)
}

fn print_response(result: Response, show: Show) -> ExitCode {
    let json = |v: &dyn erased::Json| {
        println!("{}", v.to_json());
        ExitCode::SUCCESS
    };
    match (result, show) {
        (Response::Error(e), _) => fail(e.code.exit_code() as u8, e.message),
        (Response::Ok, _) => ExitCode::SUCCESS,
        (Response::Listing(mut l), Show::Listing { opts, only }) => {
            if let Some(k) = only {
                if !l.services.iter().any(|s| s.service == k) {
                    return fail(
                        ErrorCode::NotFound.exit_code() as u8,
                        missing_service(&l, &k),
                    );
                }
                l.services.retain(|s| s.service == k);
            }
            print!("{}", format::listing(&l, opts));
            ExitCode::SUCCESS
        }
        (Response::Listing(l), _) => json(&l),
        (Response::Status(s), Show::Status) => {
            print!("{}", format::status(&s));
            ExitCode::SUCCESS
        }
        (Response::Status(s), Show::Timeouts) => {
            print!("{}", format::timeouts(&s.timeouts));
            ExitCode::SUCCESS
        }
        (Response::Status(s), _) => json(&s),
        (Response::Conns(c), Show::Conns) => {
            print!("{}", format::conns(&c));
            ExitCode::SUCCESS
        }
        (Response::Conns(c), Show::IpvsadmConns) => {
            print!("{}", format::ipvsadm_conns(&c));
            ExitCode::SUCCESS
        }
        (Response::Config(text), Show::Rules) => {
            match ConfigFile::parse(&text).and_then(|cfg| ipvsadm::rules(&cfg)) {
                Ok(rules) => {
                    print!("{rules}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(ErrorCode::InvalidArgument.exit_code() as u8, e),
            }
        }
        (Response::Conns(c), _) => json(&c),
        (Response::Config(text), Show::ConfigJson) => match ConfigFile::parse(&text) {
            Ok(cfg) => json(&cfg),
            Err(e) => fail(
                EXIT_PROTOCOL,
                format!("the daemon sent an unreadable configuration: {e}"),
            ),
        },
        (Response::Config(text), _) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        (
            Response::Shaping(l),
            Show::Shaping {
                dev,
                stats,
                json: j,
            },
        ) => {
            let l = match dev {
                Some(dev) if !l.devs.iter().any(|d| d.dev == dev) => {
                    return fail(
                        ErrorCode::NotFound.exit_code() as u8,
                        format!("interface {dev} is not shaped"),
                    );
                }
                Some(dev) => only_dev(l, &dev),
                None => l,
            };
            if j {
                json(&l)
            } else {
                print!("{}", format::shaping(&l, stats));
                ExitCode::SUCCESS
            }
        }
        (Response::Shaping(l), _) => json(&l),
        (
            Response::Filter(l),
            Show::Filter {
                stats,
                exact,
                json: false,
            },
        ) => {
            print!("{}", format::filter_listing(&l, stats, exact));
            ExitCode::SUCCESS
        }
        (Response::Filter(l), _) => json(&l),
    }
}

/// Pretty JSON for any serializable answer.
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            serde_json::to_string_pretty(self).expect("serializable")
        }
    }
}

fn read_input(file: Option<&Path>) -> Result<String, String> {
    let mut s = String::new();
    match file {
        Some(p) => {
            s = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        }
        None => {
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| format!("cannot read standard input: {e}"))?;
        }
    }
    Ok(s)
}

/// Name of group `gid` from /etc/group.
fn group_name(gid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
        })
}

/// Sends one request and reads one response line.
fn call(socket: &Path, req: &Request) -> Result<ResponseEnvelope, (u8, String)> {
    let mut line = serde_json::to_vec(&RequestEnvelope::new(req.clone())).expect("serializable");
    if line.len() > lvc_proto::MAX_REQUEST_BYTES {
        return Err((
            EXIT_USAGE,
            format!(
                "the request is {} bytes, more than lvc-dataplane reads ({} bytes)",
                line.len(),
                lvc_proto::MAX_REQUEST_BYTES
            ),
        ));
    }
    line.push(b'\n');
    let stream = UnixStream::connect(socket).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is lvc-dataplane running?".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                use std::os::unix::fs::MetadataExt;
                let group = std::fs::metadata(socket)
                    .ok()
                    .and_then(|m| group_name(m.gid()))
                    .unwrap_or_else(|| "root".into());
                format!("permission denied: run as root or as a member of group {group}")
            }
            _ => e.to_string(),
        };
        (
            EXIT_CONNECT,
            format!("cannot connect to {}: {why}", socket.display()),
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    (&stream)
        .write_all(&line)
        .map_err(|e| (EXIT_PROTOCOL, format!("cannot send request: {e}")))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| (EXIT_PROTOCOL, format!("no answer from lvc-dataplane: {e}")))?;
    serde_json::from_str(&answer).map_err(|e| {
        (
            EXIT_PROTOCOL,
            format!(
                "unreadable answer from lvc-dataplane ({e}); are lvc-ctl and lvc-dataplane the same release?"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_page_are_generated() {
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "lvc-ctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("add-server") && bash.contains("--scheduler"));
        let mut man = Vec::new();
        man_page(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH lvc-ctl"),
            "{man}"
        );
        // Every command's options, every method among them.
        for want in [
            ".SH \"LVC-CTL ADD-SERVER\"",
            ".SH \"LVC-CTL SHAPE ADD-CLASS\"",
            "tun (IPIP tunnel)",
            "fullnat (the director",
            "masquerading",
            "max\\-conns",
        ] {
            assert!(man.contains(want), "{want}");
        }
    }

    #[test]
    fn ipvsadm_short_flags_are_verbs() {
        let cli = Cli::try_parse_from([
            "lvc-ctl",
            "-a",
            "-t",
            "10.0.0.10:80",
            "-r",
            "10.0.1.1:8080",
            "-w",
            "3",
        ])
        .unwrap();
        match cli.cmd.unwrap() {
            Cmd::AddServer {
                service,
                real,
                weight,
                method,
                ..
            } => {
                assert_eq!(service.key().unwrap().to_string(), "tcp 10.0.0.10:80");
                assert_eq!(real.to_string(), "10.0.1.1:8080");
                assert_eq!((weight, method.method()), (3, None));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["lvc-ctl", "--set", "--tcp", "60"]).is_ok());
        assert!(
            Cli::try_parse_from(["lvc-ctl", "-A", "-t", "10.0.0.10:80", "-u", "10.0.0.10:53"])
                .is_err()
        );
    }

    /// A command line as lvc-ctl reads it: its request and how it is
    /// shown, or the error.
    fn parse(line: &str) -> Result<(Request, Show), String> {
        let argv: Vec<&str> = line.split_whitespace().collect();
        let cli = Cli::try_parse_from(std::iter::once("lvc-ctl").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        let cmd = match cli.cmd {
            Some(c) => c,
            None => Cli::try_parse_from(["lvc-ctl", "-L"]).unwrap().cmd.unwrap(),
        };
        request(cmd, ipvsadm_style(&argv)).map_err(|(_, e)| e)
    }

    fn req(line: &str) -> Request {
        parse(line).unwrap_or_else(|e| panic!("{line}: {e}")).0
    }

    /// ipvsadm's commands (its man page and common runbooks) mean in
    /// lvc-ctl what they mean to ipvsadm, defaults included.
    #[test]
    fn ipvsadm_invocations_make_ipvsadm_requests() {
        let svc: ServiceKey = "tcp:10.0.0.10:80".parse().unwrap();
        let add_service = |line: &str| match req(line) {
            Request::AddService {
                service,
                scheduler,
                persistent,
                netmask,
                ..
            } => (service, scheduler, persistent, netmask),
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            add_service("-A -t 10.0.0.10:80"),
            (svc, Scheduler::Wlc, None, None)
        );
        assert_eq!(
            add_service("--add-service --tcp-service 10.0.0.10:80 --scheduler sh"),
            (svc, Scheduler::Sh, None, None)
        );
        assert_eq!(
            add_service("add-service --tcp 10.0.0.10:80"),
            (svc, Scheduler::Rr, None, None),
            "lvc's verb keeps lvc's default"
        );
        assert_eq!(
            add_service("-A -t 10.0.0.10:80 -s rr -p"),
            (svc, Scheduler::Rr, Some(360), None)
        );
        assert_eq!(
            add_service("-A -t 10.0.0.10:80 -s wrr -p 600 -M 255.255.255.0"),
            (
                svc,
                Scheduler::Wrr,
                Some(600),
                Some(Netmask::Dotted([255, 255, 255, 0].into()))
            )
        );
        let add_server = |line: &str| match req(line) {
            Request::AddServer {
                real,
                weight,
                method,
                limits,
                ..
            } => (real.to_string(), weight, method, limits),
            other => panic!("{line}: {other:?}"),
        };
        let none = ConnLimits::default();
        for (line, want) in [
            // ipvsadm's default method is gatewaying (dr), with the
            // service's port whatever the rule says.
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1",
                ("10.0.1.1", 1, Method::Dr, none),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1:8080 -g",
                ("10.0.1.1", 1, Method::Dr, none),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1:8080 -m -w 2",
                ("10.0.1.1:8080", 2, Method::Nat, none),
            ),
            (
                "--add-server --udp-service 10.0.0.10:53 --real-server 10.0.1.1 --ipip --weight 0",
                ("10.0.1.1", 0, Method::Tun, none),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1 -x 100 -y 50",
                (
                    "10.0.1.1:80",
                    1,
                    Method::Nat,
                    ConnLimits { max: 100, min: 50 },
                ),
            ),
            (
                "add-server --tcp 10.0.0.10:80 --real 10.0.1.1 --max-conns 10",
                ("10.0.1.1", 1, Method::Nat, ConnLimits { max: 10, min: 0 }),
            ),
            (
                "add-server --tcp 10.0.0.10:80 --real 10.0.1.1 --method fullnat --u-threshold 7",
                (
                    "10.0.1.1",
                    1,
                    Method::Fullnat,
                    ConnLimits { max: 7, min: 0 },
                ),
            ),
        ] {
            let (real, w, m, l) = add_server(line);
            assert_eq!((real.as_str(), w, m, l), want, "{line}");
        }
        match req("-e -t 10.0.0.10:80 -r 10.0.1.1:80 -w 5 -y 20") {
            Request::EditServer {
                weight,
                method,
                max_conns,
                min_conns,
                ..
            } => assert_eq!(
                (weight, method, max_conns, min_conns),
                (Some(5), None, None, Some(20))
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            req("--set 900 120 300"),
            Request::SetTimeouts {
                tcp: Some(900),
                tcpfin: Some(120),
                udp: Some(300)
            }
        );
        assert_eq!(
            req("-D -t 10.0.0.10:80"),
            Request::DelService { service: svc }
        );
        assert!(matches!(
            req("-d -t 10.0.0.10:80 -r 10.0.1.1"),
            Request::DelServer { .. }
        ));
        assert_eq!(req("-C"), Request::Clear {});
        assert_eq!(
            req("-Z -t 10.0.0.10:80"),
            Request::Zero { service: Some(svc) }
        );
        // Listings: -n accepted anywhere, flags combined as ipvsadm's
        // users type them.
        for line in [
            "",
            "-n",
            "-L",
            "-L -n",
            "-Ln",
            "-l",
            "--list --numeric",
            "-L -n --sort",
        ] {
            assert!(
                matches!(parse(line), Ok((Request::List {}, Show::Listing { opts, only: None })) if opts.ipvsadm),
                "{line}"
            );
        }
        assert!(matches!(
            parse("list"),
            Ok((Request::List {}, Show::Listing { opts, .. })) if !opts.ipvsadm
        ));
        for (line, stats, rate, thresholds, exact) in [
            ("-L -n --stats", true, false, false, false),
            ("-Ln --rate --exact", false, true, false, true),
            ("-L --thresholds -X", false, false, true, true),
        ] {
            match parse(line) {
                Ok((Request::List {}, Show::Listing { opts, .. })) => assert_eq!(
                    (opts.stats, opts.rate, opts.thresholds, opts.exact),
                    (stats, rate, thresholds, exact),
                    "{line}"
                ),
                other => panic!("{line}: {:?}", other.map(|r| r.0)),
            }
        }
        for line in ["-L -c -n", "-Lnc", "-lcn"] {
            assert!(
                matches!(parse(line), Ok((Request::Conns { .. }, Show::IpvsadmConns))),
                "{line}"
            );
        }
        assert!(matches!(
            parse("-L --timeout"),
            Ok((Request::Status {}, Show::Timeouts))
        ));
        assert!(matches!(
            parse("-L -t 10.0.0.10:80"),
            Ok((Request::List {}, Show::Listing { only: Some(k), opts })) if k == svc && opts.one
        ));
        assert!(matches!(
            parse("-S -n"),
            Ok((Request::Save {}, Show::Rules))
        ));
        assert!(matches!(
            parse("save"),
            Ok((Request::Save {}, Show::Config))
        ));
        assert!(matches!(
            parse("save --format ipvsadm"),
            Ok((Request::Save {}, Show::Rules))
        ));
        assert!(matches!(
            parse("-S --format toml"),
            Ok((Request::Save {}, Show::Config))
        ));
        for (line, why) in [
            ("--set 900 120", "three timeouts"),
            ("-A -f 1", "firewall-mark services are not supported"),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1 -m -g",
                "cannot be used with",
            ),
            ("-L -c --stats", "cannot be used with"),
        ] {
            let e = parse(line).err().unwrap_or_else(|| panic!("{line} parsed"));
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn ipvsadm_rules_become_one_batch() {
        let rules = "# from ipvsadm -S -n\n\
            -A -t 10.0.0.10:80 -s wlc -p 360 -M 255.255.255.0\n\
            -a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1\n\
            \n\
            -a -t 10.0.0.10:80 -r 10.0.1.2:80 -g -w 2 -x 50\n\
            --set 900 120 300\n";
        let reqs = ipvsadm::parse_rules(rules).unwrap();
        let lines: Vec<usize> = reqs.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3, 5, 6]);
        assert!(matches!(
            &reqs[2].1,
            Request::AddServer { method: Method::Dr, weight: 2, limits, .. } if limits.max == 50
        ));
        for (bad, why) in [
            (
                "-A -t 10.0.0.10:80\n-L -n\n",
                "line 2: `-L -n`: only services",
            ),
            (
                "-A -t 10.0.0.10:80\n-a -t 10.0.0.10:80 -r nowhere\n",
                "line 2: `-a -t 10.0.0.10:80 -r nowhere`",
            ),
            ("-A -t www.example.com:http\n", "line 1:"),
        ] {
            let e = ipvsadm::parse_rules(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn health_check_options_become_a_spec() {
        let cli = Cli::try_parse_from([
            "lvc-ctl",
            "-a",
            "-t",
            "10.0.0.10:80",
            "-r",
            "10.0.1.1",
            "--check",
            "http:/health",
            "--check-interval",
            "0.5",
            "--check-timeout",
            "0.2",
            "--fall",
            "2",
            "--check-status",
            "200-299",
            "--on-fail",
            "remove",
        ])
        .unwrap();
        let Cmd::AddServer { check, .. } = cli.cmd.unwrap() else {
            panic!()
        };
        let spec = check.spec();
        assert_eq!(spec.kind.unwrap().to_string(), "http:/health");
        assert_eq!(spec.interval.unwrap().millis(), 500);
        assert_eq!(spec.fall, Some(2));
        assert_eq!(spec.on_fail, Some(OnFail::Remove));
        for bad in [
            &["--check", "ping"][..],
            &["--check-interval", "x"],
            &["--on-fail", "explode"],
            &["--check-status", "99"],
        ] {
            let mut args = vec!["lvc-ctl", "-a", "-t", "10.0.0.10:80", "-r", "10.0.1.1"];
            args.extend_from_slice(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "lvc-ctl",
            "-E",
            "-t",
            "10.0.0.10:80",
            "--sorry-server",
            "none",
        ])
        .unwrap();
        let Cmd::EditService { sorry, check, .. } = cli.cmd.unwrap() else {
            panic!()
        };
        assert_eq!(sorry.sorry(), (None, true));
        assert!(check.edit().is_none());
        let cli = Cli::try_parse_from([
            "lvc-ctl",
            "-A",
            "-t",
            "10.0.0.10:80",
            "--sorry-server",
            "10.0.2.9:80",
            "--sorry-method",
            "dr",
        ])
        .unwrap();
        let Cmd::AddService { sorry, .. } = cli.cmd.unwrap() else {
            panic!()
        };
        assert_eq!(sorry.sorry().0.unwrap().method, Method::Dr);
    }

    #[test]
    fn netmask_takes_a_mask_or_a_prefix_length() {
        let mask = |args: &[&str]| -> Result<Option<Netmask>, String> {
            let argv = ["lvc-ctl"].iter().chain(args);
            match Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())?
                .cmd
                .unwrap()
            {
                Cmd::AddService { netmask, .. } | Cmd::EditService { netmask, .. } => Ok(netmask),
                other => panic!("{other:?}"),
            }
        };
        let v4 = [
            "add-service",
            "--tcp",
            "10.0.0.10:80",
            "--persistent",
            "--netmask",
        ];
        assert_eq!(
            mask(&[&v4[..], &["255.255.255.0"]].concat()),
            Ok(Some(Netmask::Dotted([255, 255, 255, 0].into())))
        );
        assert_eq!(
            mask(&[&v4[..], &["24"]].concat()),
            Ok(Some(Netmask::Prefix(24)))
        );
        assert_eq!(
            mask(&["-E", "-t", "[2001:db8::10]:80", "-M", "/64"]),
            Ok(Some(Netmask::Prefix(64)))
        );
        for bad in ["0", "129", "wide", "255.255.255"] {
            let e = mask(&[&v4[..], &[bad]].concat()).unwrap_err();
            assert!(e.contains("netmask"), "{bad}: {e}");
        }
    }

    /// `lvc-ctl shape …` parsed into its request, or the error message.
    fn shape(args: &[&str]) -> Result<Request, String> {
        let argv = ["lvc-ctl", "shape"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.cmd.unwrap() {
            Cmd::Shape { cmd } => shape_request(cmd).map(|(req, _)| req),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_add_class_with_sfq() {
        let req = shape(&[
            "add-class",
            "--dev",
            "d1",
            "--classid",
            "1:10",
            "--parent",
            "1:1",
            "--rate",
            "70mbit",
            "--ceil",
            "100mbit",
            "--burst",
            "45kb",
            "--prio",
            "2",
            "--isolated",
            "--qdisc",
            "sfq",
            "--quantum",
            "1514",
            "--perturb",
            "10",
            "--flows",
            "64",
            "--limit",
            "127",
        ])
        .unwrap();
        assert_eq!(
            req,
            Request::ShapeAddClass {
                dev: "d1".into(),
                class: ClassSpec {
                    classid: ClassId {
                        major: 1,
                        minor: 0x10
                    },
                    parent: Some(ClassId { major: 1, minor: 1 }),
                    rate: Rate(70_000_000),
                    ceil: Some(Rate(100_000_000)),
                    burst: Some(Size(45 * 1024)),
                    prio: 2,
                    bounded: false,
                    isolated: true,
                    qdisc: Qdisc::Sfq {
                        quantum: Some(Size(1514)),
                        perturb: Some(10),
                        flows: Some(64),
                        limit: Some(127),
                    },
                },
            }
        );
        // change-class takes the same options; no --qdisc is a fifo.
        let req = shape(&[
            "change-class",
            "--dev",
            "d1",
            "--classid",
            "1:20",
            "--rate",
            "30mbit",
            "--bounded",
            "--limit",
            "1000",
        ])
        .unwrap();
        match req {
            Request::ShapeChangeClass { dev, class } => {
                assert_eq!(dev, "d1");
                assert!(class.bounded && class.parent.is_none());
                assert_eq!(class.qdisc, Qdisc::Fifo { limit: Some(1000) });
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_qdisc_options_are_checked() {
        let base = [
            "add-class",
            "--dev",
            "d1",
            "--classid",
            "1:10",
            "--rate",
            "1mbit",
        ];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            shape(&args)
        };
        for (extra, want) in [
            (
                &[
                    "--qdisc",
                    "tbf",
                    "--tbf-rate",
                    "1mbit",
                    "--tbf-burst",
                    "10kb",
                    "--perturb",
                    "10",
                ][..],
                "--perturb is an sfq option, not tbf",
            ),
            (
                &["--min", "10kb"][..],
                "--min is a red option, not fifo (the default qdisc; add --qdisc red)",
            ),
            (
                &["--qdisc", "sfq", "--latency", "50ms"][..],
                "--latency is a tbf option, not sfq",
            ),
            (
                &["--qdisc", "red", "--min", "10kb"][..],
                "--qdisc red needs --max and --probability",
            ),
            (
                &["--qdisc", "tbf", "--tbf-rate", "1mbit"][..],
                "--qdisc tbf needs --tbf-burst",
            ),
            (
                &["--qdisc", "fifo", "--limit", "10kb"][..],
                "--limit `10kb`: fifo takes a number of packets",
            ),
            (
                &[
                    "--qdisc",
                    "red",
                    "--min",
                    "1kb",
                    "--max",
                    "3kb",
                    "--probability",
                    "0.1",
                    "--limit",
                    "lots",
                ][..],
                "--limit: size `lots`",
            ),
            (&["--qdisc", "codel"][..], "invalid value 'codel'"),
        ] {
            let e = with(extra).unwrap_err();
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = shape(&["del-class", "--dev", "d1", "--classid", "1:g"]).unwrap_err();
        assert!(e.contains("class id `1:g`: expected MAJOR:MINOR"), "{e}");
        let e = shape(&["set-root", "--dev", "d1", "--rate", "10 furlongs"]).unwrap_err();
        assert!(e.contains("rate `10 furlongs`: unknown unit"), "{e}");
        // red and tbf take --limit as a size.
        match with(&[
            "--qdisc",
            "red",
            "--min",
            "30kb",
            "--max",
            "90kb",
            "--probability",
            "0.02",
            "--limit",
            "360kb",
        ])
        .unwrap()
        {
            Request::ShapeAddClass { class, .. } => assert_eq!(
                class.qdisc,
                Qdisc::Red {
                    min: Size(30 * 1024),
                    max: Size(90 * 1024),
                    probability: 0.02,
                    limit: Some(Size(360 * 1024)),
                }
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            with(&[
                "--qdisc",
                "tbf",
                "--tbf-rate",
                "1mbit",
                "--tbf-burst",
                "10kb",
                "--limit",
                "10kb",
                "--latency",
                "50ms",
            ])
            .is_err()
        );
    }

    #[test]
    fn shape_police_targets() {
        let rate = ["--rate", "10mbit", "--burst", "10kb"];
        let police = |target: &[&str]| {
            let args: Vec<&str> = ["add-police"]
                .iter()
                .chain(target)
                .chain(&rate)
                .copied()
                .collect();
            shape(&args)
        };
        let target = |r: Result<Request, String>| match r {
            Ok(Request::ShapeAddPolice { police }) => {
                assert_eq!(
                    (police.rate, police.burst),
                    (Rate(10_000_000), Size(10_240))
                );
                police.target
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            target(police(&["--dev", "d1", "--classid", "1:10"])),
            PoliceTarget::Class {
                dev: "d1".into(),
                classid: "1:10".parse().unwrap()
            }
        );
        assert_eq!(
            target(police(&["--tcp", "10.9.0.10:80"])),
            PoliceTarget::Service(ServiceKey::parse(Protocol::Tcp, "10.9.0.10:80").unwrap())
        );
        assert_eq!(
            target(police(&["-u", "[2001:db8::1]:53"])),
            PoliceTarget::Service("udp:[2001:db8::1]:53".parse().unwrap())
        );
        for bad in [
            &[][..],
            &["--dev", "d1"][..],
            &["--classid", "1:10"][..],
            &["--tcp", "10.9.0.10:80", "--udp", "10.9.0.10:53"][..],
            &["--dev", "d1", "--classid", "1:10", "--tcp", "10.9.0.10:80"][..],
            &["--tcp", "10.9.0.10"][..],
        ] {
            assert!(police(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            shape(&["del-police", "--udp", "10.9.0.10:53"]).unwrap(),
            Request::ShapeDelPolice {
                target: PoliceTarget::Service("udp:10.9.0.10:53".parse().unwrap())
            }
        );
    }

    #[test]
    fn shape_filters_parse_matches_before_sending() {
        assert_eq!(
            shape(&[
                "add-filter",
                "--dev",
                "d1",
                "--prio",
                "1",
                "--match",
                "real 10.2.0.11",
                "--match",
                "ip tos 0x30 0xff",
                "--flowid",
                "1:10",
            ])
            .unwrap(),
            Request::ShapeAddFilter {
                dev: "d1".into(),
                filter: FilterSpec {
                    prio: 1,
                    matches: vec![
                        "real 10.2.0.11".parse().unwrap(),
                        Match::Tos {
                            value: 0x30,
                            mask: 0xff
                        }
                    ],
                    flowid: "1:10".parse().unwrap(),
                },
            }
        );
        let e = shape(&[
            "add-filter",
            "--dev",
            "d1",
            "--prio",
            "1",
            "--match",
            "ip tos 0x30",
            "--flowid",
            "1:10",
        ])
        .unwrap_err();
        assert!(e.contains("expected `ip tos VALUE MASK`"), "{e}");
        assert!(
            shape(&[
                "add-filter",
                "--dev",
                "d1",
                "--prio",
                "1",
                "--flowid",
                "1:10"
            ])
            .is_err()
        );
        assert_eq!(
            shape(&[
                "set-root",
                "--dev",
                "d1",
                "--rate",
                "100mbit",
                "--default",
                "1:20"
            ])
            .unwrap(),
            Request::ShapeSetRoot {
                dev: "d1".into(),
                rate: Rate(100_000_000),
                default: Some("1:20".parse().unwrap()),
            }
        );
    }

    /// `lvc-ctl filter …` (not `filter set`) parsed into its request, or
    /// the error message.
    fn filter_req(line: &str) -> Result<Request, String> {
        parse(&format!("filter {line}")).map(|(r, _)| r)
    }

    #[test]
    fn filter_add_builds_the_rule() {
        use lvc_proto::filter::{AddrMatch, FilterAction, FilterRule, PortRange, cidr_list};
        assert_eq!(
            filter_req(
                "add --prio 10 --action drop --src 10.0.0.0/8,192.0.2.0/24 --dst @vips \
                 --proto tcp --dport 1024-2047 --iface eth0 --real 10.2.0.11:80"
            )
            .unwrap(),
            Request::FilterAdd {
                rule: FilterRule {
                    prio: 10,
                    action: FilterAction::Drop,
                    src: Some(AddrMatch::Cidrs(
                        cidr_list("10.0.0.0/8,192.0.2.0/24").unwrap()
                    )),
                    dst: Some(AddrMatch::Set("vips".into())),
                    proto: Some(6),
                    dport: Some(PortRange { lo: 1024, hi: 2047 }),
                    iface: Some("eth0".into()),
                    real: Some("10.2.0.11:80".parse().unwrap()),
                },
            }
        );
        assert_eq!(
            filter_req("add --prio 1 --action accept --proto 47").unwrap(),
            Request::FilterAdd {
                rule: FilterRule {
                    prio: 1,
                    action: FilterAction::Accept,
                    src: None,
                    dst: None,
                    proto: Some(47),
                    dport: None,
                    iface: None,
                    real: None,
                },
            }
        );
        assert!(matches!(
            filter_req("add --prio 5 --action drop --src 2001:db8::/32 --proto udp --dport 53"),
            Ok(Request::FilterAdd { rule }) if rule.dport == Some(PortRange { lo: 53, hi: 53 })
        ));
        for (bad, why) in [
            (
                "add --prio 1 --action drop --src 10.1.2.3/8",
                "`10.1.2.3/8` has host bits set: the prefix is 10.0.0.0/8",
            ),
            (
                "add --prio 1 --action drop --dport 80",
                "rule 1: --dport needs --proto tcp or udp",
            ),
            (
                "add --prio 1 --action drop --proto icmp --dport 80",
                "--dport needs --proto tcp or udp",
            ),
            (
                "add --prio 1 --action reject",
                "action `reject`: expected drop or accept",
            ),
            ("add --prio 1 --src 10.0.0.0/8", "--action"),
            ("add --action drop", "--prio"),
            (
                "add --prio 1 --action drop --proto sctp",
                "protocol `sctp`: expected tcp, udp, icmp, icmpv6 or 0..=255",
            ),
            (
                "add --prio 1 --action drop --proto tcp --dport 90-80",
                "port range `90-80` is empty",
            ),
            (
                "add --prio 1 --action drop --src @bad/set",
                "set name `bad/set`",
            ),
            (
                "add --prio 1 --action drop --proto icmp --real 10.2.0.11",
                "--real matches connections",
            ),
            (
                "add --prio 1 --action drop --iface averyveryverylongname",
                "1..=15 characters",
            ),
        ] {
            let e = filter_req(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn filter_del_flush_list() {
        assert_eq!(
            filter_req("del --prio 10").unwrap(),
            Request::FilterDel { prio: 10 }
        );
        assert_eq!(filter_req("flush").unwrap(), Request::FilterFlush {});
        for (line, want) in [
            ("filter list", (false, false, false)),
            ("filter list --stats -X", (true, true, false)),
            ("filter list --json", (false, false, true)),
        ] {
            match parse(line) {
                Ok((Request::FilterList {}, Show::Filter { stats, exact, json })) => {
                    assert_eq!((stats, exact, json), want, "{line}")
                }
                other => panic!("{line}: {:?}", other.map(|r| r.0)),
            }
        }
        assert!(filter_req("del").is_err());
    }

    /// `lvc-ctl filter set …` with `stdin` as standard input.
    fn set(args: &[&str], stdin: &str) -> Result<filter::SetPlan, String> {
        let argv = ["lvc-ctl", "filter", "set"].iter().chain(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        match cli.cmd.unwrap() {
            Cmd::Filter {
                cmd: filter::FilterCmd::Set { cmd },
            } => filter::set_plan(cmd, &mut stdin.as_bytes()).map_err(|(_, e)| e),
            other => panic!("{other:?}"),
        }
    }

    fn cidrs(s: &str) -> Vec<lvc_proto::filter::Cidr> {
        lvc_proto::filter::cidr_list(s).unwrap()
    }

    #[test]
    fn filter_set_commands() {
        let p = set(
            &[
                "add",
                "bad-guys",
                "192.0.2.0/24",
                "198.51.100.7,2001:db8::/48",
            ],
            "",
        )
        .unwrap();
        assert_eq!(
            p.requests,
            [Request::SetAdd {
                name: "bad-guys".into(),
                prefixes: cidrs("192.0.2.0/24,198.51.100.7/32,2001:db8::/48"),
            }]
        );
        assert_eq!(p.done.unwrap(), "added 3 prefixes to set bad-guys");
        // From standard input, with the command line's, duplicates once.
        let p = set(
            &["add", "office", "10.9.0.0/16", "--file", "-"],
            "# office networks\n\n10.8.0.0/16  # HQ\r\n  10.9.0.0/16\n",
        )
        .unwrap();
        assert_eq!(
            p.requests,
            [Request::SetAdd {
                name: "office".into(),
                prefixes: cidrs("10.9.0.0/16,10.8.0.0/16"),
            }]
        );
        assert_eq!(
            p.done.unwrap(),
            "added 2 prefixes to set office (1 duplicates left out)"
        );
        // No prefixes: the set is created empty.
        assert_eq!(
            set(&["add", "later"], "").unwrap().requests,
            [Request::SetAdd {
                name: "later".into(),
                prefixes: vec![],
            }]
        );
        let p = set(&["del", "office", "10.8.0.0/16"], "").unwrap();
        assert_eq!(
            p.requests,
            [Request::SetDel {
                name: "office".into(),
                prefixes: cidrs("10.8.0.0/16"),
            }]
        );
        assert_eq!(p.done.unwrap(), "removed 1 prefix from set office");
        let p = set(&["destroy", "office"], "").unwrap();
        assert_eq!(
            p.requests,
            [Request::SetDestroy {
                name: "office".into()
            }]
        );
        assert!(p.done.is_none());
        for (args, why) in [
            (&["del", "office"][..], "give the prefixes to remove"),
            (&["add", "x", "10.1.2.3/8"][..], "has host bits set"),
            (
                &["add", "bad name", "10.0.0.0/8"][..],
                "set name `bad name`",
            ),
            (&["add", "x", ""][..], "at least one CIDR"),
            (&["destroy"][..], "NAME"),
            (
                &["add", "x", "--file", "/nonexistent/blocklist.txt"][..],
                "cannot read /nonexistent/blocklist.txt",
            ),
        ] {
            let e = set(args, "").expect_err(&format!("{args:?}"));
            assert!(e.contains(why), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_bad_line_in_a_prefix_file_is_named() {
        let dir = std::env::temp_dir().join(format!("lvc-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blocklist.txt");
        std::fs::write(
            &path,
            "# blocklist\n192.0.2.0/24\n\n198.51.100.0/24\n# more\n203.0.113.0/24\n10.1.2.3/8\n",
        )
        .unwrap();
        let e = set(&["add", "bl", "--file", path.to_str().unwrap()], "").unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.ends_with(
                "blocklist.txt line 7: `10.1.2.3/8` has host bits set: the prefix is 10.0.0.0/8"
            ),
            "{e}"
        );
        let e = set(&["add", "bl", "--file", "-"], "10.0.0.0/8\nten.0.0.0/8\n").unwrap_err();
        assert!(
            e.starts_with("standard input line 2: `ten.0.0.0/8` is not an address"),
            "{e}"
        );
        let e = filter::parse_prefix_file("f", "10.0.0.0/8 10.1.0.0/16\n").unwrap_err();
        assert!(e.starts_with("f line 1: `10.0.0.0/8 10.1.0.0/16`"), "{e}");
    }

    #[test]
    fn large_sets_are_sent_in_chunks() {
        let text: String = (0..50_001u32)
            .map(|i| format!("{}\n", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let p = set(&["add", "big", "--file", "-"], &text).unwrap();
        let sizes: Vec<usize> = p
            .requests
            .iter()
            .map(|r| match r {
                Request::SetAdd { name, prefixes } if name == "big" => prefixes.len(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [20_000, 20_000, 10_001]);
        assert_eq!(
            p.done.unwrap(),
            "added 50001 prefixes to set big (3 requests)"
        );
        let p = set(&["del", "big", "--file", "-"], &text).unwrap();
        assert_eq!(p.requests.len(), 3);
        assert!(
            matches!(&p.requests[2], Request::SetDel { prefixes, .. } if prefixes.len() == 10_001)
        );
        // The longest IPv6 prefixes: the byte budget cuts first.
        let v6: Vec<_> = (0..20_000u128)
            .map(|i| lvc_proto::filter::Cidr {
                addr: std::net::Ipv6Addr::from(u128::MAX - i).into(),
                len: 128,
            })
            .collect();
        let reqs = filter::chunk("v6", v6, true);
        assert!(reqs.len() > 1);
        for r in &reqs {
            let line = serde_json::to_vec(&RequestEnvelope::new(r.clone())).unwrap();
            assert!(
                line.len() < lvc_proto::MAX_REQUEST_BYTES * 2 / 3,
                "{}",
                line.len()
            );
        }
    }

    #[test]
    fn a_request_too_long_for_the_daemon_is_not_sent() {
        let huge = Request::SetAdd {
            name: "x".into(),
            prefixes: (0..100_000u32)
                .map(|i| lvc_proto::filter::Cidr {
                    addr: std::net::Ipv4Addr::from(i).into(),
                    len: 32,
                })
                .collect(),
        };
        let (code, e) = call(Path::new("/nonexistent/lvc.sock"), &huge).unwrap_err();
        assert_eq!(code, EXIT_USAGE);
        assert!(e.contains("more than lvc-dataplane reads"), "{e}");
    }

    #[test]
    fn add_service_takes_a_client_policy() {
        use lvc_proto::filter::Policy;
        let policy = |line: &str| match parse(line) {
            Ok((Request::AddService { policy, .. }, _)) => Ok(policy),
            Ok((other, _)) => panic!("{line}: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            policy(
                "add-service --tcp 10.0.0.10:80 --allow 10.0.0.0/8,192.0.2.0/24 \
                 --allow 198.51.100.0/24 --deny 10.1.0.0/16 --conn-rate 100 --conn-burst 200"
            )
            .unwrap(),
            Policy {
                allow: cidrs("10.0.0.0/8,192.0.2.0/24,198.51.100.0/24"),
                deny: cidrs("10.1.0.0/16"),
                conn_rate: Some(100),
                conn_burst: Some(200),
            }
        );
        assert_eq!(
            policy("add-service --tcp 10.0.0.10:80").unwrap(),
            Policy::default()
        );
        // ipvsadm's spelling shares the options.
        assert_eq!(
            policy("-A -t [2001:db8::10]:443 -s rr --deny 2001:db8:bad::/48").unwrap(),
            Policy {
                deny: cidrs("2001:db8:bad::/48"),
                ..Policy::default()
            }
        );
        for (bad, why) in [
            ("-A -t 10.0.0.10:80 --allow 10.1.2.3/8", "has host bits set"),
            (
                "-A -t 10.0.0.10:80 --allow 2001:db8::/32",
                "--allow 2001:db8::/32: not the service's address family",
            ),
            (
                "-A -t 10.0.0.10:80 --allow 10.0.0.0/8 --deny 10.0.0.0/8",
                "10.0.0.0/8 is in both --allow and --deny",
            ),
            (
                "-A -t 10.0.0.10:80 --conn-burst 10",
                "--conn-burst needs --conn-rate",
            ),
            ("-A -t 10.0.0.10:80 --conn-rate 0", "1..="),
            ("-A -t 10.0.0.10:80 --conn-rate lots", "--conn-rate"),
        ] {
            let e = policy(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        // An ipvsadm rules file may carry them too.
        let reqs = ipvsadm::parse_rules("-A -t 10.0.0.10:80 --allow 10.0.0.0/8\n").unwrap();
        assert!(
            matches!(&reqs[0].1, Request::AddService { policy, .. } if policy.allow == cidrs("10.0.0.0/8"))
        );
    }

    #[test]
    fn edit_service_changes_the_client_policy() {
        let edit = |line: &str| match parse(line) {
            Ok((
                Request::EditService {
                    allow,
                    deny,
                    conn_rate,
                    conn_burst,
                    ..
                },
                _,
            )) => Ok((allow, deny, conn_rate, conn_burst)),
            Ok((other, _)) => panic!("{line}: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            edit("edit-service --tcp 10.0.0.10:80 --scheduler wrr").unwrap(),
            (None, None, None, None)
        );
        assert_eq!(
            edit("edit-service --tcp 10.0.0.10:80 --no-allow --deny 192.0.2.0/24,10.1.0.0/16")
                .unwrap(),
            (
                Some(vec![]),
                Some(cidrs("192.0.2.0/24,10.1.0.0/16")),
                None,
                None
            )
        );
        assert_eq!(
            edit("-E -t 10.0.0.10:80 --allow 10.0.0.0/8 --no-deny --conn-rate 0").unwrap(),
            (Some(cidrs("10.0.0.0/8")), Some(vec![]), Some(0), None)
        );
        assert_eq!(
            edit("-E -t 10.0.0.10:80 --conn-rate 50 --conn-burst 80").unwrap(),
            (None, None, Some(50), Some(80))
        );
        assert_eq!(
            edit("-E -t 10.0.0.10:80 --conn-burst 80").unwrap(),
            (None, None, None, Some(80)),
            "the burst of the limit in place"
        );
        for (bad, why) in [
            (
                "-E -t 10.0.0.10:80 --allow 10.0.0.0/8 --no-allow",
                "cannot be used with",
            ),
            (
                "-E -t 10.0.0.10:80 --deny 10.0.0.0/8 --no-deny",
                "cannot be used with",
            ),
            (
                "-E -t 10.0.0.10:80 --conn-rate 0 --conn-burst 5",
                "--conn-burst with --conn-rate 0",
            ),
            (
                "-E -t [2001:db8::10]:80 --deny 10.0.0.0/8",
                "not the service's address family",
            ),
            ("-E -t 10.0.0.10:80 --deny 10.0.0.1/8", "has host bits set"),
        ] {
            let e = edit(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn proxy_protocol_options_build_requests() {
        use ProxyProtocol::{Off, V1, V2};
        let add = |line: &str| match parse(line) {
            Ok((
                Request::AddServer {
                    real,
                    method,
                    proxy_protocol,
                    ..
                },
                _,
            )) => Ok((real.to_string(), method, proxy_protocol)),
            Ok((other, _)) => panic!("{line}: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            req("add-server --tcp 10.0.0.10:80 --real 10.0.1.1 --proxy-protocol v2"),
            Request::AddServer {
                service: "tcp:10.0.0.10:80".parse().unwrap(),
                real: "10.0.1.1".parse().unwrap(),
                weight: 1,
                method: Method::Nat,
                check: CheckSpec::default(),
                limits: ConnLimits::default(),
                proxy_protocol: V2,
            }
        );
        for (line, want) in [
            (
                "add-server --tcp 10.0.0.10:80 --real 10.0.1.1",
                ("10.0.1.1", Method::Nat, Off),
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1:8080 --method fullnat --proxy-protocol v1",
                ("10.0.1.1:8080", Method::Fullnat, V1),
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --method dr --proxy-protocol off",
                ("10.0.1.1", Method::Dr, Off),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1:8080 -m -w 1 --proxy-protocol v2",
                ("10.0.1.1:8080", Method::Nat, V2),
            ),
            (
                "-a -t [2001:db8::10]:443 -r [2001:db8:1::1]:8443 --method fullnat --proxy-protocol 1",
                ("[2001:db8:1::1]:8443", Method::Fullnat, V1),
            ),
        ] {
            let (real, m, p) = add(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!((real.as_str(), m, p), want, "{line}");
        }
        let edit = |line: &str| match parse(line) {
            Ok((
                Request::EditServer {
                    method,
                    proxy_protocol,
                    ..
                },
                _,
            )) => Ok((method, proxy_protocol)),
            Ok((other, _)) => panic!("{line}: {other:?}"),
            Err(e) => Err(e),
        };
        for (line, want) in [
            (
                "edit-server --tcp 10.0.0.10:80 --real 10.0.1.1 --weight 2",
                (None, None),
            ),
            (
                "edit-server --tcp 10.0.0.10:80 --real 10.0.1.1 --proxy-protocol v1",
                (None, Some(V1)),
            ),
            (
                "edit-server --tcp 10.0.0.10:80 --real 10.0.1.1 --proxy-protocol off",
                (None, Some(Off)),
            ),
            (
                "-e -t 10.0.0.10:80 -r 10.0.1.1 --method fullnat --proxy-protocol v2",
                (Some(Method::Fullnat), Some(V2)),
            ),
            (
                "-e -t 10.0.0.10:80 -r 10.0.1.1 -g --proxy-protocol off",
                (Some(Method::Dr), Some(Off)),
            ),
        ] {
            assert_eq!(
                edit(line).unwrap_or_else(|e| panic!("{line}: {e}")),
                want,
                "{line}"
            );
        }
        let both_ways = "--proxy-protocol needs a method where lvc sees both directions \
                         (nat, fullnat)";
        for (line, why) in [
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --proxy-protocol v3",
                "PROXY protocol `v3`: expected v1, v2 or off",
            ),
            (
                "edit-server -t 10.0.0.10:80 -r 10.0.1.1 --proxy-protocol on",
                "PROXY protocol `on`: expected v1, v2 or off",
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --proxy-protocol",
                "--proxy-protocol",
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --method dr --proxy-protocol v2",
                &format!("{both_ways}, not dr"),
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --method tun --proxy-protocol v1",
                &format!("{both_ways}, not tun"),
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --method dnat --proxy-protocol v2",
                &format!("{both_ways}, not dnat"),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1 --proxy-protocol v2",
                &format!(
                    "{both_ways}; -a's default method is dr, as ipvsadm's: add -m (nat) or \
                     --method fullnat"
                ),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1 -g --proxy-protocol v2",
                &format!("{both_ways}, not dr"),
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1 -i --proxy-protocol v1",
                &format!("{both_ways}, not tun"),
            ),
            (
                "-e -t 10.0.0.10:80 -r 10.0.1.1 --method dnat --proxy-protocol v1",
                &format!("{both_ways}, not dnat"),
            ),
            (
                "add-server --udp 10.0.0.10:53 --real 10.0.1.1 --proxy-protocol v2",
                "--proxy-protocol needs a TCP service",
            ),
            (
                "-e -u 10.0.0.10:53 -r 10.0.1.1 --proxy-protocol v1",
                "udp 10.0.0.10:53 is not one",
            ),
        ] {
            let e = parse(line).err().unwrap_or_else(|| panic!("{line} parsed"));
            assert!(e.contains(why), "{line}: {e}");
        }
        // The exact message, and its exit status.
        let cli = Cli::try_parse_from(
            "lvc-ctl add-server -t 10.0.0.10:80 -r 10.0.1.1 --method dr --proxy-protocol v2"
                .split(' '),
        )
        .unwrap();
        match request(cli.cmd.unwrap(), false) {
            Err((code, e)) => {
                assert_eq!(code, EXIT_USAGE);
                assert_eq!(e, format!("{both_ways}, not dr"));
            }
            Ok((r, _)) => panic!("{r:?}"),
        }
        // An ipvsadm rules file may carry it, checked the same way.
        let reqs =
            ipvsadm::parse_rules("-a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1 --proxy-protocol v2\n")
                .unwrap();
        assert!(matches!(
            &reqs[0].1,
            Request::AddServer {
                proxy_protocol: V2,
                ..
            }
        ));
        let e =
            ipvsadm::parse_rules("-a -t 10.0.0.10:80 -r 10.0.1.1:80 -w 1 --proxy-protocol v2\n")
                .unwrap_err();
        assert!(e.starts_with("line 1: ") && e.contains(both_ways), "{e}");
    }

    /// The service a command line names, whatever its verb.
    fn service_of(line: &str) -> Result<Option<ServiceKey>, String> {
        Ok(match parse(line)? {
            (
                Request::AddService { service, .. }
                | Request::EditService { service, .. }
                | Request::DelService { service }
                | Request::AddServer { service, .. }
                | Request::EditServer { service, .. }
                | Request::DelServer { service, .. },
                _,
            ) => Some(service),
            (Request::Zero { service }, _) => service,
            (Request::Conns { filter }, _) => filter.service,
            (Request::List {}, Show::Listing { only, .. }) => only,
            (other, _) => panic!("{line}: {other:?}"),
        })
    }

    #[test]
    fn from_picks_the_client_class_on_every_verb() {
        let class: ServiceKey = "tcp:10.0.0.10:80 from 10.1.0.0/24".parse().unwrap();
        assert_eq!(class.from.prefixes(), cidrs("10.1.0.0/24"));
        let everyone: ServiceKey = "tcp:10.0.0.10:80".parse().unwrap();
        let f = "--from 10.1.0.0/24";
        for verb in [
            "add-service --tcp 10.0.0.10:80",
            "-A -t 10.0.0.10:80 -s wrr",
            "edit-service --tcp 10.0.0.10:80 --scheduler lc",
            "-E -t 10.0.0.10:80 -p 60",
            "del-service --tcp 10.0.0.10:80",
            "-D -t 10.0.0.10:80",
            "add-server --tcp 10.0.0.10:80 --real 10.0.1.1",
            "-a -t 10.0.0.10:80 -r 10.0.1.1 -m",
            "edit-server --tcp 10.0.0.10:80 --real 10.0.1.1 --weight 2",
            "-e -t 10.0.0.10:80 -r 10.0.1.1 -w 0",
            "del-server --tcp 10.0.0.10:80 --real 10.0.1.1",
            "-d -t 10.0.0.10:80 -r 10.0.1.1",
            "zero --tcp 10.0.0.10:80",
            "-Z -t 10.0.0.10:80",
            "list --tcp 10.0.0.10:80",
            "-L -n -t 10.0.0.10:80",
            "-L -c -t 10.0.0.10:80",
            "conns --tcp 10.0.0.10:80",
        ] {
            // Anywhere on the line; without it, the service for everyone
            // else.
            for line in [format!("{verb} {f}"), {
                let (v, rest) = verb.split_once(' ').unwrap();
                format!("{v} {f} {rest}")
            }] {
                assert_eq!(service_of(&line), Ok(Some(class)), "{line}");
            }
            assert_eq!(service_of(verb), Ok(Some(everyone)), "{verb}");
        }
        // The class is a set: order, repetition and duplicates do not
        // matter; IPv6 and UDP alike.
        let two: ServiceKey = "tcp:10.0.0.10:80 from 10.1.0.0/24,192.0.2.0/24"
            .parse()
            .unwrap();
        for line in [
            "-A -t 10.0.0.10:80 --from 192.0.2.0/24,10.1.0.0/24",
            "-A -t 10.0.0.10:80 --from 10.1.0.0/24 --from 192.0.2.0/24",
            "-A -t 10.0.0.10:80 --from 10.1.0.0/24,192.0.2.0/24 --from 10.1.0.0/24",
        ] {
            assert_eq!(service_of(line), Ok(Some(two)), "{line}");
        }
        assert_eq!(
            service_of("add-server -u [2001:db8::10]:53 -r [2001:db8:1::1] --from 2001:db8:a::/48"),
            Ok(Some(
                "udp:[2001:db8::10]:53 from 2001:db8:a::/48"
                    .parse()
                    .unwrap()
            ))
        );
        // A bare address is its /32; eight prefixes are allowed.
        let eight = (1..=8)
            .map(|i| format!("10.{i}.0.0/16"))
            .collect::<Vec<_>>();
        match service_of(&format!(
            "-A -t 10.0.0.10:80 --from {} --from 192.0.2.7",
            eight[..7].join(",")
        )) {
            Ok(Some(k)) => {
                assert_eq!(k.from.prefixes().len(), 8);
                assert!(k.from.prefixes().contains(&cidrs("192.0.2.7/32")[0]));
            }
            other => panic!("{other:?}"),
        }
        // Other options keep working alongside.
        match req("-A -t 10.0.0.10:80 --from 10.1.0.0/24 -s sh --deny 10.1.0.128/25") {
            Request::AddService {
                service,
                scheduler,
                policy,
                ..
            } => {
                assert_eq!(service, class);
                assert_eq!(scheduler, Scheduler::Sh);
                assert_eq!(policy.deny, cidrs("10.1.0.128/25"));
            }
            other => panic!("{other:?}"),
        }
        // ipvsadm rules files take it too (ipvsadm itself has no such
        // option).
        let reqs = ipvsadm::parse_rules(
            "-A -t 10.0.0.10:80 -s rr --from 10.1.0.0/24
             -a -t 10.0.0.10:80 -r 10.0.1.1:80 -m -w 1 --from 10.1.0.0/24
",
        )
        .unwrap();
        assert!(matches!(&reqs[0].1, Request::AddService { service, .. } if *service == class));
        assert!(matches!(&reqs[1].1, Request::AddServer { service, .. } if *service == class));
    }

    #[test]
    fn a_bad_from_is_refused_clearly() {
        let nine = (1..=9)
            .map(|i| format!("10.{i}.0.0/16"))
            .collect::<Vec<_>>()
            .join(",");
        for (line, why) in [
            (
                "-A -t 10.0.0.10:80 --from 10.1.2.3/16".to_owned(),
                "`10.1.2.3/16` has host bits set: the prefix is 10.1.0.0/16",
            ),
            (
                "add-server -t 10.0.0.10:80 -r 10.0.1.1 --from 10.0.0.0/33".to_owned(),
                "prefix length must be 0..=32",
            ),
            (
                "-a -t 10.0.0.10:80 -r 10.0.1.1 --from example.net".to_owned(),
                "`example.net` is not an address or CIDR",
            ),
            (
                "-E -t 10.0.0.10:80 --from 2001:db8::/32".to_owned(),
                "--from 2001:db8::/32: not the family of VIP 10.0.0.10",
            ),
            (
                "-D -t [2001:db8::10]:80 --from 10.0.0.0/8".to_owned(),
                "--from 10.0.0.0/8: not the family of VIP 2001:db8::10",
            ),
            (
                format!("-A -t 10.0.0.10:80 --from {nine}"),
                "--from gives 9 prefixes; a client class has at most 8",
            ),
            (
                "-A -t 10.0.0.10:80 --from 10.1.0.0/16 --from 10.2.0.0/16,10.3.0.0/16,\
                 10.4.0.0/16,10.5.0.0/16,10.6.0.0/16,10.7.0.0/16,10.8.0.0/16,10.9.0.0/16"
                    .to_owned(),
                "at most 8",
            ),
            (
                "-A -t 10.0.0.10:80 --from ,".to_owned(),
                "give at least one CIDR",
            ),
            ("-A -t 10.0.0.10:80 --from".to_owned(), "--from"),
            // Only with a service.
            ("list --from 10.0.0.0/8".to_owned(), "--tcp"),
            ("-Z --from 10.0.0.0/8".to_owned(), "--tcp"),
            ("conns --from 10.0.0.0/8".to_owned(), "--tcp"),
            ("-A --from 10.0.0.0/8".to_owned(), "--tcp"),
            // A policer's class is of the service's family.
            (
                "shape add-police --tcp 10.0.0.10:80 --from 2001:db8::/32 --rate 1mbit --burst 1kb"
                    .to_owned(),
                "not the family",
            ),
        ] {
            let e = parse(&line)
                .err()
                .unwrap_or_else(|| panic!("{line} parsed"));
            assert!(e.contains(why), "{line}: {e}");
        }
        // The family error is a usage error, as ipvsadm rules report it.
        let cli = Cli::try_parse_from(
            "lvc-ctl -a -t 10.0.0.10:80 -r 10.0.1.1 --from 2001:db8::/32".split(' '),
        )
        .unwrap();
        assert!(matches!(
            request(cli.cmd.unwrap(), true),
            Err((EXIT_USAGE, _))
        ));
        let e = ipvsadm::parse_rules(
            "-A -t 10.0.0.10:80 --from 2001:db8::/32
",
        )
        .unwrap_err();
        assert!(
            e.starts_with("line 1: ") && e.contains("not the family"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_class_names_the_classes_there_are() {
        let svc = |k: &str| lvc_proto::ServiceInfo {
            service: k.parse().unwrap(),
            scheduler: Scheduler::Rr,
            persistent: None,
            netmask: None,
            stats: Default::default(),
            rates: Default::default(),
            servers: vec![],
            check: Default::default(),
            alert: None,
            sorry: None,
            sloppy: false,
            policy: Default::default(),
            filtered: Default::default(),
        };
        let l = Listing {
            services: vec![
                svc("tcp:10.0.0.10:80 from 10.1.0.0/24,10.2.0.0/24"),
                svc("tcp:10.0.0.10:80"),
                svc("tcp:10.0.0.10:443 from 10.3.0.0/24"),
                svc("udp:10.0.0.10:80 from 10.4.0.0/24"),
            ],
            conn_capacity: 0,
        };
        assert_eq!(
            missing_service(&l, &"tcp:10.0.0.10:80 from 10.1.0.0/24".parse().unwrap()),
            "service tcp 10.0.0.10:80 from 10.1.0.0/24 does not exist; its VIP and ports \
             have the services --from 10.1.0.0/24,10.2.0.0/24; without --from (name one \
             with the --from it was added with)"
        );
        assert_eq!(
            missing_service(&l, &"tcp:10.0.0.10:443".parse().unwrap()),
            "service tcp 10.0.0.10:443 does not exist; its VIP and ports have the services \
             --from 10.3.0.0/24 (name one with the --from it was added with)"
        );
        assert_eq!(
            missing_service(&l, &"tcp:10.0.0.11:80".parse().unwrap()),
            "service tcp 10.0.0.11:80 does not exist"
        );
    }

    #[test]
    fn conns_of_a_class_come_from_its_clients() {
        let conn = |client: &str| lvc_proto::ConnInfo {
            proto: Protocol::Tcp,
            client: client.parse().unwrap(),
            vip: "10.0.0.10:80".parse().unwrap(),
            real: "10.0.1.1:80".parse().unwrap(),
            method: Method::Nat,
            state: "ESTABLISHED".into(),
            expires_in: 60,
            offloaded: false,
        };
        let all = ConnListing {
            conns: vec![
                conn("10.1.0.7:40000"),
                conn("10.2.0.7:40000"),
                conn("192.0.2.1:40000"),
            ],
            truncated: false,
        };
        let clients = |line: &str| {
            let Request::Conns { filter } = req(line) else {
                panic!("{line}")
            };
            let mut l = all.clone();
            only_class(&filter, &mut l);
            l.conns
                .iter()
                .map(|c| c.client.ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            clients("conns -t 10.0.0.10:80 --from 10.1.0.0/16,10.2.0.0/24"),
            ["10.1.0.7", "10.2.0.7"]
        );
        assert_eq!(
            clients("-L -c -t 10.0.0.10:80 --from 192.0.2.0/24"),
            ["192.0.2.1"]
        );
        // Without a class the daemon's answer stands.
        assert_eq!(clients("conns -t 10.0.0.10:80").len(), 3);
        assert_eq!(clients("conns").len(), 3);
    }

    #[test]
    fn man_page_explains_client_classes() {
        let mut man = Vec::new();
        man_page(&mut man).unwrap();
        let text = String::from_utf8(man)
            .unwrap()
            .replace("\\-", "-")
            .replace("\\*(Aq", "'")
            .replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "");
        for want in [
            "most specific (longest) prefix",
            "the service without --from takes everyone else",
            "its own real servers, scheduler, persistence, client lists (--allow, --deny) and \
             connection rate limit",
            "At most 8 prefixes",
            "must give the same --from as add-service did",
            "shape add-police --tcp VIP:PORT --from",
            "client-class services (--from)",
        ] {
            assert!(text.contains(want), "{want}");
        }
        // On every verb that names a service, in its own section.
        let sections: Vec<&str> = text.split(".SH \"").collect();
        for verb in [
            "ADD-SERVICE",
            "EDIT-SERVICE",
            "DEL-SERVICE",
            "ADD-SERVER",
            "EDIT-SERVER",
            "DEL-SERVER",
            "LIST",
            "ZERO",
            "CONNS",
        ] {
            let head = format!("LVC-CTL {verb}\"");
            let section = sections
                .iter()
                .find(|s| s.starts_with(&head))
                .unwrap_or_else(|| panic!("{verb}"));
            assert!(section.contains("--from <CIDR[,CIDR…]>"), "{verb}");
            assert!(section.contains("most specific (longest) prefix"), "{verb}");
        }
        let police = sections
            .iter()
            .find(|s| s.starts_with("LVC-CTL SHAPE ADD-POLICE\""))
            .unwrap();
        assert!(police.contains("is for one client class"), "{police}");
    }

    #[test]
    fn man_page_explains_proxy_protocol() {
        let mut man = Vec::new();
        man_page(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        let text = man
            .replace("\\-", "-")
            .replace("\\*(Aq", "'")
            .replace('\n', " ")
            .replace("\\fB", "")
            .replace("\\fI", "")
            .replace("\\fR", "");
        for want in [
            "--proxy-protocol <v1|v2> Put a PROXY protocol header",
            "--proxy-protocol <v1|v2|off> Put a PROXY protocol header",
            "v1 (text) or v2 (binary)",
            "SACK blocks included",
            "clamps the MSS the client announces by the header's length",
            "Only with the nat and fullnat methods",
            "only on TCP services",
            "not offloaded to XDP",
            "applies to new connections only",
            "peer director (sync) do not carry the shift and get no PROXY header",
            "listen … proxy_protocol",
            "(PROXY v1)",
        ] {
            assert!(text.contains(want), "{want}");
        }
        // Both verbs document it in full.
        let add = text.find(".SH \"LVC-CTL ADD-SERVER\"").unwrap();
        let edit = text.find(".SH \"LVC-CTL EDIT-SERVER\"").unwrap();
        let del = text.find(".SH \"LVC-CTL DEL-SERVER\"").unwrap();
        assert!(text[add..edit].contains("SACK blocks included"));
        assert!(text[edit..del].contains("SACK blocks included"));
    }

    #[test]
    fn man_page_explains_the_filter() {
        let mut man = Vec::new();
        man_page(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        // roff escapes hyphens; unwrap lines to find phrases.
        let text = man
            .replace("\\-", "-")
            .replace("\\*(Aq", "'")
            .replace('\n', " ");
        for want in [
            ".SH \"LVC-CTL FILTER ADD\"",
            ".SH \"LVC-CTL FILTER DEL\"",
            ".SH \"LVC-CTL FILTER FLUSH\"",
            ".SH \"LVC-CTL FILTER LIST\"",
            ".SH \"LVC-CTL FILTER SET ADD\"",
            ".SH \"LVC-CTL FILTER SET DEL\"",
            ".SH \"LVC-CTL FILTER SET DESTROY\"",
            "first rule that matches",
            &format!("at most {} rules", lvc_proto::filter::MAX_FILTER_RULES),
            "evaluated in the XDP program",
            "ends the established connections",
            "accept ends the filter",
            "--conn-burst",
            "--no-allow",
            "the longest prefix decides; equal lengths: deny",
            "before any connection state is made",
            "one second's worth",
            "at most 20000 prefixes",
        ] {
            assert!(text.contains(want), "{want}");
        }
        assert_eq!(filter::CHUNK_PREFIXES, 20_000);
    }
}
