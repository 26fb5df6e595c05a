//! `lvc-ctl`: talks to `lvc-dataplane` over its Unix socket.
//!
//! Verbs map one to one onto ipvsadm's, and accept its short flags:
//! `add-service` (-A), `edit-service` (-E), `del-service` (-D),
//! `add-server` (-a), `edit-server` (-e), `del-server` (-d), `list` (-L),
//! `save` (-S), `restore` (-R), `clear` (-C), `zero` (-Z),
//! `set-timeouts` (--set); plus `conns`, `status`, `completions`, `man`.

#![forbid(unsafe_code)]

mod format;

use clap::{Args, CommandFactory, Parser, Subcommand};
use lvc_proto::config::ConfigFile;
use lvc_proto::{
    ConnFilter, Method, Ports, Protocol, RealSpec, Request, RequestEnvelope, Response,
    ResponseEnvelope, Scheduler, ServiceKey, parse_vip,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
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
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, required (PORTS: 80, 0 = every
/// port, 21,22 or 1024-65535).
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ServiceArg {
    /// TCP virtual service.
    #[arg(long, short = 't', value_name = "VIP:PORTS", value_parser = parse_vip)]
    tcp: Option<VipPorts>,
    /// UDP virtual service.
    #[arg(long, short = 'u', value_name = "VIP:PORTS", value_parser = parse_vip)]
    udp: Option<VipPorts>,
}

/// `--tcp VIP:PORTS` or `--udp VIP:PORTS`, optional.
#[derive(Args, Debug)]
#[group(required = false, multiple = false)]
struct MaybeService {
    /// TCP virtual service.
    #[arg(long, short = 't', value_name = "VIP:PORTS", value_parser = parse_vip)]
    tcp: Option<VipPorts>,
    /// UDP virtual service.
    #[arg(long, short = 'u', value_name = "VIP:PORTS", value_parser = parse_vip)]
    udp: Option<VipPorts>,
}

/// A VIP and the ports of a service on it.
type VipPorts = (std::net::IpAddr, Ports);

fn key(tcp: Option<VipPorts>, udp: Option<VipPorts>) -> Option<ServiceKey> {
    let (proto, (vip, ports)) = match (tcp, udp) {
        (Some(a), _) => (Protocol::Tcp, a),
        (_, Some(a)) => (Protocol::Udp, a),
        _ => return None,
    };
    Some(ServiceKey { proto, vip, ports })
}

impl ServiceArg {
    fn key(&self) -> ServiceKey {
        key(self.tcp, self.udp).expect("clap requires one of --tcp/--udp")
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a virtual service.
    #[command(short_flag = 'A')]
    AddService {
        #[command(flatten)]
        service: ServiceArg,
        /// Scheduler: rr, wrr, lc, wlc, sed, nq, sh, mh.
        #[arg(long, short = 's', default_value = "rr")]
        scheduler: Scheduler,
        /// Client affinity: connections from one client (network) go to the
        /// same server until SECS after its last connection (default 360).
        #[arg(long, short = 'p', value_name = "SECS", num_args = 0..=1,
              default_missing_value = "360")]
        persistent: Option<u32>,
        /// Persistence granularity, e.g. 255.255.255.0.
        #[arg(long, short = 'M', value_name = "MASK")]
        netmask: Option<Ipv4Addr>,
    },
    /// Change a virtual service's scheduler or persistence.
    #[command(short_flag = 'E')]
    EditService {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(long, short = 's')]
        scheduler: Option<Scheduler>,
        /// New persistence timeout (0: not persistent).
        #[arg(long, short = 'p', value_name = "SECS", num_args = 0..=1,
              default_missing_value = "360")]
        persistent: Option<u32>,
        #[arg(long, short = 'M', value_name = "MASK")]
        netmask: Option<Ipv4Addr>,
    },
    /// Delete a virtual service and its real servers.
    #[command(short_flag = 'D')]
    DelService {
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Add a real server to a service.
    #[command(short_flag = 'a')]
    AddServer {
        #[command(flatten)]
        service: ServiceArg,
        /// Real server, RIP[:PORT] (port defaults to the service's).
        #[arg(long, short = 'r', value_name = "RIP[:PORT]")]
        real: RealSpec,
        /// Weight, 0..=65535 (0: no new connections).
        #[arg(long, short = 'w', default_value_t = 1)]
        weight: u32,
        /// Forwarding method: nat (director is the gateway), dnat (real
        /// servers SNAT their own replies to the VIP), dr (direct routing)
        /// or fullnat (the director also SNATs to its local pool).
        #[arg(long, default_value = "nat")]
        method: Method,
    },
    /// Change a real server's weight or method.
    #[command(short_flag = 'e')]
    EditServer {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(long, short = 'r', value_name = "RIP[:PORT]")]
        real: RealSpec,
        #[arg(long, short = 'w')]
        weight: Option<u32>,
        #[arg(long)]
        method: Option<Method>,
    },
    /// Remove a real server from a service.
    #[command(short_flag = 'd')]
    DelServer {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(long, short = 'r', value_name = "RIP[:PORT]")]
        real: RealSpec,
    },
    /// List services and real servers (numeric, like ipvsadm -L -n).
    #[command(short_flag = 'L')]
    List {
        /// Show traffic counters.
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Show per-second rates.
        #[arg(long)]
        rate: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the running configuration in the config-file format.
    #[command(short_flag = 'S')]
    Save {
        /// As JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Replace the running configuration with a file's (all or nothing).
    #[command(short_flag = 'R')]
    Restore {
        /// Configuration file; standard input if absent.
        file: Option<PathBuf>,
    },
    /// Remove every virtual service.
    #[command(short_flag = 'C')]
    Clear,
    /// Zero the counters of one service, or of all.
    #[command(short_flag = 'Z')]
    Zero {
        #[command(flatten)]
        service: MaybeService,
    },
    /// Set connection timeouts in seconds (0 or absent: unchanged).
    #[command(long_flag = "set")]
    SetTimeouts {
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
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Exit codes for failures before the daemon answered (daemon errors use
/// `ErrorCode::exit_code`).
const EXIT_USAGE: u8 = 64;
const EXIT_CONNECT: u8 = 69;
const EXIT_IO: u8 = 74;
const EXIT_PROTOCOL: u8 = 76;

/// How to show the daemon's answer.
#[derive(Clone, Copy)]
enum Show {
    Nothing,
    Listing { stats: bool, rate: bool },
    Json,
    Status,
    Config,
    ConfigJson,
    Conns,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (req, show) = match cli.cmd {
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
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_IO, format!("cannot write the man page: {e}")),
            };
        }
        Cmd::AddService {
            service,
            scheduler,
            persistent,
            netmask,
        } => (
            Request::AddService {
                service: service.key(),
                scheduler,
                persistent,
                netmask,
            },
            Show::Nothing,
        ),
        Cmd::EditService {
            service,
            scheduler,
            persistent,
            netmask,
        } => (
            Request::EditService {
                service: service.key(),
                scheduler,
                persistent,
                netmask,
            },
            Show::Nothing,
        ),
        Cmd::DelService { service } => (
            Request::DelService {
                service: service.key(),
            },
            Show::Nothing,
        ),
        Cmd::AddServer {
            service,
            real,
            weight,
            method,
        } => (
            Request::AddServer {
                service: service.key(),
                real,
                weight,
                method,
            },
            Show::Nothing,
        ),
        Cmd::EditServer {
            service,
            real,
            weight,
            method,
        } => (
            Request::EditServer {
                service: service.key(),
                real,
                weight,
                method,
            },
            Show::Nothing,
        ),
        Cmd::DelServer { service, real } => (
            Request::DelServer {
                service: service.key(),
                real,
            },
            Show::Nothing,
        ),
        Cmd::List { stats, rate, json } => (
            Request::List {},
            if json {
                Show::Json
            } else {
                Show::Listing { stats, rate }
            },
        ),
        Cmd::Save { json } => (
            Request::Save {},
            if json { Show::ConfigJson } else { Show::Config },
        ),
        Cmd::Restore { file } => match read_input(file.as_deref()) {
            Ok(config) => (Request::Restore { config }, Show::Nothing),
            Err(e) => return fail(EXIT_IO, e),
        },
        Cmd::Clear => (Request::Clear {}, Show::Nothing),
        Cmd::SetLocalPool { addrs } => (Request::SetLocalPool { addrs }, Show::Nothing),
        Cmd::Zero { service } => (
            Request::Zero {
                service: key(service.tcp, service.udp),
            },
            Show::Nothing,
        ),
        Cmd::SetTimeouts { tcp, tcpfin, udp } => {
            if tcp.is_none() && tcpfin.is_none() && udp.is_none() {
                return fail(
                    EXIT_USAGE,
                    "set-timeouts: give --tcp, --tcpfin and/or --udp".into(),
                );
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
                    service: key(service.tcp, service.udp),
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
    };
    let resp = match call(&cli.socket, &req) {
        Ok(r) => r,
        Err((code, msg)) => return fail(code, msg),
    };
    print_response(resp.result, show)
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
        (Response::Listing(l), Show::Listing { stats, rate }) => {
            print!("{}", format::listing(&l, stats, rate));
            ExitCode::SUCCESS
        }
        (Response::Listing(l), _) => json(&l),
        (Response::Status(s), Show::Status) => {
            print!("{}", format::status(&s));
            ExitCode::SUCCESS
        }
        (Response::Status(s), _) => json(&s),
        (Response::Conns(c), Show::Conns) => {
            print!("{}", format::conns(&c));
            ExitCode::SUCCESS
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
    let mut line = serde_json::to_vec(&RequestEnvelope::new(req.clone())).expect("serializable");
    line.push(b'\n');
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
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.starts_with(".ie") || man.contains(".TH lvc-ctl"),
            "{man}"
        );
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
        match cli.cmd {
            Cmd::AddServer {
                service,
                real,
                weight,
                method,
            } => {
                assert_eq!(service.key().to_string(), "tcp 10.0.0.10:80");
                assert_eq!(real.to_string(), "10.0.1.1:8080");
                assert_eq!((weight, method), (3, Method::Nat));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["lvc-ctl", "--set", "--tcp", "60"]).is_ok());
        assert!(
            Cli::try_parse_from(["lvc-ctl", "-A", "-t", "10.0.0.10:80", "-u", "10.0.0.10:53"])
                .is_err()
        );
    }
}
