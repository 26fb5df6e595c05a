//! `lvc-dataplane`: the lvc daemon.

use clap::Parser;
use lvc_dataplane::daemon::{self, Options};
use lvc_dataplane::io::xsk::ZeroCopy;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc, not glibc's malloc: connections are allocated by the workers
/// and freed by whichever thread lets go last (the sweep, an eviction, the
/// offload thread). Under endless new flows glibc's arenas kept what an
/// expiry wave freed apart from what the workers allocated next, and the
/// daemon's memory climbed wave after wave (`lvc-bench soak`, 10 minutes:
/// 287 → 301 MiB after the first wave, even with `malloc_trim` after every
/// big sweep); with mimalloc it is flat after the first wave (two runs:
/// 258–283 and 287–303 MiB).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// lvc's dataplane: XDP steering + AF_XDP load balancing.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Interface to serve (repeat for a two-armed director: client side and
    /// server side).
    #[arg(long = "iface", required = true, value_name = "IF")]
    ifaces: Vec<String>,
    /// Rx queues (and worker threads) to use; default: all active queues.
    #[arg(long, value_name = "N")]
    queues: Option<u32>,
    /// Control socket for lvc-ctl.
    #[arg(long, value_name = "PATH", default_value = lvc_proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Configuration file (TOML) to apply at start.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Group (name or id) whose members may use the control socket.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9108).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Forward established flows in the XDP program itself (on), or every
    /// packet through lvc's workers (off).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    offload: bool,
    /// Nice value of the worker threads (-20 to 19): what places them
    /// above the kernel's NAPI threads (at 0) when they are not real-time
    /// (`--worker-rt-priority 0`, or refused). Where a NAPI thread shares
    /// a CPU with a worker, a busy worker at 0 gets half of it while NAPI
    /// fills its full ring with frames that are then dropped; at -10 it
    /// gets more. 0 leaves the workers at the default.
    #[arg(long, value_name = "N", default_value_t = -10, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    worker_nice: i32,
    /// Real-time priority of the worker threads (`SCHED_RR`, 1 to 99), or
    /// 0 to leave them at `--worker-nice`. A worker sleeps whenever its
    /// sockets are empty, so this only decides who runs when both it and a
    /// NAPI thread have work. A real-time worker woken by its first frame
    /// preempts the NAPI thread at once; at any nice value the NAPI thread
    /// runs on, up to a millisecond or more, filling the full ring with
    /// frames that are then dropped. Linux's real-time throttling keeps 5 %
    /// of each CPU for other threads.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(0..=99))]
    worker_rt_priority: i32,
    /// Interrupt moderation, as a NIC's adaptive rx-usecs: while frames
    /// reach a worker at least every N µs, it handles what came, then
    /// sleeps N µs before looking again instead of being woken by each
    /// frame (a wakeup is two context switches, the costliest part of a
    /// frame that lvc, not XDP, forwards). A frame then waits at most N µs
    /// longer; at lower rates nothing changes. 0 wakes the worker for
    /// every frame.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    coalesce_usecs: u32,
    /// Most connections tracked at once.
    #[arg(long, value_name = "N", default_value_t = 1 << 20)]
    conntrack_size: usize,
    /// AF_XDP zero-copy: where the driver supports it (auto; copy mode
    /// elsewhere, as on veth), required (on), or never (off).
    #[arg(long, value_name = "auto|on|off", default_value = "auto", value_parser = zero_copy)]
    zero_copy: ZeroCopy,
    /// The connection journal, which a restarted lvc-dataplane reads to
    /// take over the connections of the one before it (a file on tmpfs);
    /// none: no journal. Default: next to the socket, with `.conns`.
    #[arg(long, value_name = "PATH|none")]
    state_file: Option<PathBuf>,
    /// A bpffs directory where the XDP links are pinned while lvc runs, so
    /// that a process killed without a clean exit leaves its program
    /// attached (offloaded flows go on, the rest waits dropped) for the
    /// next one to take over; none: the program goes with the process.
    #[arg(long, value_name = "PATH|none", default_value = "/sys/fs/bpf/lvc")]
    bpf_dir: PathBuf,
    /// Connection sync with other directors (keepalived failover, failback
    /// included): the UDP address to listen on.
    #[arg(long, value_name = "ADDR:PORT", requires = "sync_peer")]
    sync_listen: Option<std::net::SocketAddr>,
    /// A peer director's sync address (repeat for several).
    #[arg(long, value_name = "ADDR:PORT", requires = "sync_listen")]
    sync_peer: Vec<std::net::SocketAddr>,
    /// Announce VIPs for ECMP: a TUN device of this name (made by lvc, gone
    /// with it) carries a host route to every VIP whose services all take
    /// connections; bird2 or FRR exports them by BGP (dist/bird.conf).
    #[arg(long, value_name = "NAME")]
    announce_dev: Option<String>,
}

fn zero_copy(s: &str) -> Result<ZeroCopy, String> {
    match s {
        "auto" => Ok(ZeroCopy::Auto),
        "on" => Ok(ZeroCopy::On),
        "off" => Ok(ZeroCopy::Off),
        _ => Err(format!("`{s}`: say auto, on or off")),
    }
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: say on or off")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LVC_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let state_file = match &a.state_file {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => Some(a.socket.with_extension("conns")),
    };
    let opts = Options {
        ifaces: a.ifaces,
        queues: a.queues,
        socket: a.socket,
        config: a.config,
        conntrack_size: a.conntrack_size,
        worker_nice: a.worker_nice,
        worker_rt_priority: a.worker_rt_priority,
        coalesce: std::time::Duration::from_micros(a.coalesce_usecs.into()),
        socket_group: a.socket_group,
        metrics: a.metrics,
        offload: a.offload,
        zero_copy: a.zero_copy,
        state_file,
        bpf_dir: Some(a.bpf_dir.clone()).filter(|p| p.as_os_str() != "none"),
        sync_listen: a.sync_listen,
        sync_peers: a.sync_peer.clone(),
        announce_dev: a.announce_dev.clone(),
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lvc-dataplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
