//! `lvc-ctl`: talks to `lvc-dataplane` over its Unix socket.
//!
//! Verbs follow ipvsadm's: `add-service` (-A), `del-service` (-D),
//! `add-server` (-a), `del-server` (-d), `list` (-L), plus `status`.

#![forbid(unsafe_code)]

mod format;

use clap::{Args, Parser, Subcommand};
use lvc_proto::{
    Method, Protocol, RealSpec, Request, RequestEnvelope, Response, ResponseEnvelope, Scheduler,
    ServiceKey, parse_vip,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "lvc-ctl", version, about = "Program a running lvc-dataplane")]
struct Cli {
    /// Control socket of lvc-dataplane.
    #[arg(long, global = true, value_name = "PATH", default_value = lvc_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--tcp VIP:PORT` or `--udp VIP:PORT`.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ServiceArg {
    /// TCP virtual service.
    #[arg(long, short = 't', value_name = "VIP:PORT", value_parser = parse_vip)]
    tcp: Option<std::net::SocketAddr>,
    /// UDP virtual service.
    #[arg(long, short = 'u', value_name = "VIP:PORT", value_parser = parse_vip)]
    udp: Option<std::net::SocketAddr>,
}

impl ServiceArg {
    fn key(&self) -> ServiceKey {
        match (self.tcp, self.udp) {
            (Some(a), _) => ServiceKey::new(Protocol::Tcp, a),
            (_, Some(a)) => ServiceKey::new(Protocol::Udp, a),
            _ => unreachable!("clap requires one of --tcp/--udp"),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Add a virtual service (ipvsadm -A).
    AddService {
        #[command(flatten)]
        service: ServiceArg,
        /// Scheduler.
        #[arg(long, short = 's', default_value = "rr")]
        scheduler: Scheduler,
    },
    /// Delete a virtual service and its real servers (ipvsadm -D).
    DelService {
        #[command(flatten)]
        service: ServiceArg,
    },
    /// Add a real server to a service (ipvsadm -a).
    AddServer {
        #[command(flatten)]
        service: ServiceArg,
        /// Real server, RIP[:PORT] (port defaults to the service's).
        #[arg(long, short = 'r', value_name = "RIP[:PORT]")]
        real: RealSpec,
        /// Weight, 0..=65535 (0: no new connections).
        #[arg(long, short = 'w', default_value_t = 1)]
        weight: u32,
        /// Forwarding method: nat (director is the gateway) or dnat (real
        /// servers SNAT their own replies to the VIP).
        #[arg(long, short = 'm', default_value = "nat")]
        method: Method,
    },
    /// Remove a real server from a service (ipvsadm -d).
    DelServer {
        #[command(flatten)]
        service: ServiceArg,
        #[arg(long, short = 'r', value_name = "RIP[:PORT]")]
        real: RealSpec,
    },
    /// List services and real servers (ipvsadm -L -n).
    List {
        /// Show traffic counters.
        #[arg(long)]
        stats: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Daemon status: version, interfaces, queues, XDP mode, counters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes for failures before the daemon answered.
const EXIT_CONNECT: u8 = 69;
const EXIT_PROTOCOL: u8 = 76;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (req, json, stats) = match cli.cmd {
        Cmd::AddService { service, scheduler } => (
            Request::AddService {
                service: service.key(),
                scheduler,
            },
            false,
            false,
        ),
        Cmd::DelService { service } => (
            Request::DelService {
                service: service.key(),
            },
            false,
            false,
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
            false,
            false,
        ),
        Cmd::DelServer { service, real } => (
            Request::DelServer {
                service: service.key(),
                real,
            },
            false,
            false,
        ),
        Cmd::List { stats, json } => (Request::List {}, json, stats),
        Cmd::Status { json } => (Request::Status {}, json, false),
    };
    let resp = match call(&cli.socket, &req) {
        Ok(r) => r,
        Err((code, msg)) => {
            eprintln!("lvc-ctl: {msg}");
            return ExitCode::from(code);
        }
    };
    match resp.result {
        Response::Ok => ExitCode::SUCCESS,
        Response::Error(e) => {
            eprintln!("lvc-ctl: {}", e.message);
            ExitCode::from(e.code.exit_code() as u8)
        }
        Response::Listing(l) if json => print_json(&l),
        Response::Listing(l) => {
            print!("{}", format::listing(&l, stats));
            ExitCode::SUCCESS
        }
        Response::Status(s) if json => print_json(&s),
        Response::Status(s) => {
            print!("{}", format::status(&s));
            ExitCode::SUCCESS
        }
    }
}

fn print_json(v: &impl serde::Serialize) -> ExitCode {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
    ExitCode::SUCCESS
}

/// Sends one request and reads one response line.
fn call(socket: &PathBuf, req: &Request) -> Result<ResponseEnvelope, (u8, String)> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                "is lvc-dataplane running?".to_owned()
            }
            std::io::ErrorKind::PermissionDenied => {
                "permission denied: run as root or as a member of the socket's group".to_owned()
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
            format!("unreadable answer from lvc-dataplane ({e}); are lvc-ctl and lvc-dataplane the same release?"),
        )
    })
}
