//! Start-up and shutdown: checks, XDP program, sockets, threads.
//!
//! ```text
//! main ──┬─ worker q0 … qN-1   (AF_XDP rx → pipeline → tx; one per queue)
//!        ├─ route             (rtnetlink: routes, neighbours, addresses)
//!        ├─ housekeeping      (conntrack ageing, once a second)
//!        ├─ health            (real-server checks: tokio, one task per server)
//!        ├─ sync              (connections from peer directors, --sync-listen)
//!        ├─ control           (lvc-ctl socket, one thread per client)
//!        └─ waits for SIGINT/SIGTERM, then stops and joins everything
//! ```

use crate::control::{Control, ControlDeps, ControlSocket, ServedInterface, housekeeping, metrics};
use crate::io::steer::{AttachMode, Steering};
use crate::io::xsk::{IoConfig, WorkerIo, ZeroCopy};
use crate::journal::{self, Journal};
use crate::net::route::RouteMonitor;
use crate::offload::{OffloadStats, Offloader};
use crate::pipeline::conntrack::Conntrack;
use crate::pipeline::services::ServiceTable;
use crate::shape::ShapeTable;
use crate::stats::WorkerStats;
use crate::sync::ConnSync;
use crate::worker::{Shared, Worker};
use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use lvc_proto::config::ConfigFile;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Daemon options (the command line).
#[derive(Clone, Debug)]
pub struct Options {
    pub ifaces: Vec<String>,
    pub queues: Option<u32>,
    pub socket: PathBuf,
    pub config: Option<PathBuf>,
    pub conntrack_size: usize,
    /// Group allowed to use the control socket (besides root).
    pub socket_group: Option<String>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
    /// Forward established flows in the XDP program (`--offload on`).
    pub offload: bool,
    /// Nice value of the worker threads (`--worker-nice`).
    pub worker_nice: i32,
    /// Real-time priority of the worker threads, 0 for none
    /// (`--worker-rt-priority`).
    pub worker_rt_priority: i32,
    /// How long a worker naps while frames come often (`--coalesce-usecs`;
    /// zero: never).
    pub coalesce: std::time::Duration,
    /// AF_XDP zero-copy binding (`--zero-copy`).
    pub zero_copy: ZeroCopy,
    /// The connection journal (`--state-file`; none: connections are not
    /// taken over by the next process).
    pub state_file: Option<PathBuf>,
    /// Where the XDP links are pinned while the daemon runs (`--bpf-dir`;
    /// none: not pinned, the program goes with the process).
    pub bpf_dir: Option<PathBuf>,
    /// Connection sync with peer directors: where to listen, and the peers.
    pub sync_listen: Option<std::net::SocketAddr>,
    pub sync_peers: Vec<std::net::SocketAddr>,
    /// VIP announcement: a TUN device of this name carries a route to
    /// each VIP served (for bird2/FRR to export by BGP).
    pub announce_dev: Option<String>,
}

/// Number of active rx queues of an interface (from sysfs).
pub fn rx_queues(iface: &str) -> anyhow::Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(&dir)
        .with_context(|| format!("interface `{iface}` does not exist"))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n.max(1) as u32)
}

/// What start-up checks decide before anything is touched.
struct Plan {
    /// Rx queues served on every interface (one worker each).
    queues: u32,
    /// The `--config` file, parsed and validated.
    initial: Option<ConfigFile>,
    socket_gid: Option<u32>,
}

/// Checks the options: privileges, interfaces, queues, the configuration
/// file and the socket group. Errors here leave the machine untouched.
fn plan(opts: &Options) -> anyhow::Result<Plan> {
    if !nix_is_root() {
        bail!("lvc-dataplane must run as root (it loads an XDP program and opens AF_XDP sockets)");
    }
    if opts.ifaces.is_empty() {
        bail!("give at least one --iface");
    }
    if opts.ifaces.len() > lvc_ebpf::MAX_IFACES as usize {
        bail!("at most {} interfaces", lvc_ebpf::MAX_IFACES);
    }
    let mut queues = u32::MAX;
    for iface in &opts.ifaces {
        queues = queues.min(rx_queues(iface)?);
    }
    if let Some(q) = opts.queues {
        if q == 0 || q > queues {
            bail!("--queues {q}: the interfaces have {queues} rx queue(s)");
        }
        queues = q;
    }
    let queues = queues.min(lvc_ebpf::MAX_QUEUES);
    for iface in &opts.ifaces {
        let have = rx_queues(iface)?;
        if have > queues {
            tracing::warn!(
                iface,
                active_queues = have,
                served_queues = queues,
                "VIP traffic that lands on an unserved rx queue goes to the kernel, not to lvc: \
                 make every interface use {queues} queue(s) (ethtool -L {iface} combined {queues})"
            );
        }
    }
    Ok(Plan {
        queues,
        initial: opts.config.as_deref().map(read_config).transpose()?,
        socket_gid: opts.socket_group.as_deref().map(group_id).transpose()?,
    })
}

/// The flags signals raise.
struct Signals {
    /// SIGINT, SIGTERM, SIGQUIT: stop.
    shutdown: Arc<AtomicBool>,
    /// SIGHUP: re-read the configuration file.
    reload: Arc<AtomicBool>,
    /// SIGQUIT: stop for a restart — the XDP links stay pinned (the
    /// program stays attached) for the next process to take over.
    handover: Arc<AtomicBool>,
}

fn signals() -> anyhow::Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let s = Signals {
        shutdown: Arc::default(),
        reload: Arc::default(),
        handover: Arc::default(),
    };
    let register = |sig, flag: &Arc<AtomicBool>| {
        signal_hook::flag::register(sig, flag.clone()).context("cannot install signal handlers")
    };
    for sig in [SIGINT, SIGTERM, SIGQUIT] {
        register(sig, &s.shutdown)?;
    }
    register(SIGHUP, &s.reload)?;
    register(SIGQUIT, &s.handover)?;
    Ok(s)
}

/// Opens one worker per queue (its AF_XDP sockets entered in the XSKMAP),
/// then attaches the XDP program to every interface: until the program is
/// attached the kernel keeps all traffic; once attached every queue has
/// its socket.
fn open_workers(
    opts: &Options,
    queues: u32,
    ifindexes: &[u32],
    steering: &mut Steering,
    shared: &Shared,
) -> anyhow::Result<(Vec<Worker>, Vec<ServedInterface>)> {
    let mut workers = Vec::new();
    for q in 0..queues {
        let io = WorkerIo::open(
            &opts.ifaces,
            q,
            IoConfig {
                zero_copy: opts.zero_copy,
                ..IoConfig::default()
            },
        )?;
        for slot in 0..io.ports() {
            steering.set_socket(slot as u32, q, io.socket_fd(slot))?;
        }
        workers.push(Worker {
            io,
            pieces: Vec::with_capacity(64),
            replies: steering.replies(),
            port_ifindex: ifindexes.to_vec(),
            shared: shared.clone(),
            stats: Arc::new(WorkerStats::default()),
            icmp_limit: Default::default(),
            coalesce: crate::worker::Coalesce::new(opts.coalesce),
        });
    }
    let mut served = Vec::new();
    for (iface, &ifindex) in opts.ifaces.iter().zip(ifindexes) {
        let mode = steering.attach(iface, opts.bpf_dir.as_deref())?;
        tracing::info!(
            iface,
            ifindex,
            queues,
            mode = mode.name(),
            "XDP program attached"
        );
        served.push(ServedInterface {
            name: iface.clone(),
            ifindex,
            queues,
            mode,
            // (Every queue binds alike: the first worker's socket says.)
            zero_copy: workers
                .first()
                .is_some_and(|w| w.io.zero_copy(served.len())),
        });
    }
    Ok((workers, served))
}

/// Starts a named thread.
fn spawn(
    threads: &mut Vec<std::thread::JoinHandle<()>>,
    name: impl Into<String>,
    f: impl FnOnce() + Send + 'static,
) -> anyhow::Result<()> {
    threads.push(std::thread::Builder::new().name(name.into()).spawn(f)?);
    Ok(())
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let plan = plan(&opts)?;
    let Signals {
        shutdown,
        reload,
        handover,
    } = signals()?;

    let (routes, route_sync) =
        RouteMonitor::start().context("cannot read routes and neighbours over rtnetlink")?;
    // Room for the flows of every connection the table may hold.
    let conns = u32::try_from(opts.conntrack_size).unwrap_or(u32::MAX / 2);
    let mut steering = Steering::load_for(conns.max(1024))?;
    let mut ifindexes = Vec::new();
    for (slot, iface) in opts.ifaces.iter().enumerate() {
        let link = routes
            .table
            .load()
            .link_by_name(iface)
            .cloned()
            .with_context(|| format!("interface `{iface}` does not exist"))?;
        steering.set_slot(link.ifindex, slot as u32)?;
        ifindexes.push(link.ifindex);
    }

    // What the previous process left: its nat connections' replies are
    // steered to lvc before XDP is attached (none reaches the client
    // untranslated); the connections are taken over once the
    // configuration is applied, before the workers start.
    let (journal, left) = match &opts.state_file {
        Some(path) => {
            let (j, left) = Journal::open(path, opts.conntrack_size).with_context(|| {
                format!("cannot open the connection journal {}", path.display())
            })?;
            (Some(j), left)
        }
        None => (None, Vec::new()),
    };
    for key in journal::reply_keys(&left) {
        if let Err(e) = steering.replies().add(key) {
            tracing::warn!(error = %e, "cannot steer a journaled connection's replies");
        }
    }
    let sync = match opts.sync_listen {
        Some(listen) => Some(
            ConnSync::bind(listen, opts.sync_peers.clone())
                .with_context(|| format!("cannot listen for connection sync on {listen}"))?,
        ),
        None => None,
    };
    let conntrack = Conntrack::new(opts.conntrack_size);
    let conntrack = Arc::new(if journal.is_some() || sync.is_some() {
        conntrack.with_journal()
    } else {
        conntrack
    });
    let services = Arc::new(ArcSwap::from_pointee(ServiceTable::default()));
    let shaping = Arc::new(ArcSwap::from_pointee(ShapeTable::default()));
    let (neigh_tx, neigh_rx) = crossbeam_channel::bounded(4096);
    let (offload_tx, offload_rx) = crossbeam_channel::bounded(65536);
    let shared = Shared {
        offload: opts.offload.then_some(offload_tx),
        flow_slots: opts.offload.then(|| steering.flow_slots()),
        services: services.clone(),
        shaping: shaping.clone(),
        routes: routes.table.clone(),
        conntrack: conntrack.clone(),
        neigh_requests: neigh_tx,
        shutdown: shutdown.clone(),
        epoch: Instant::now(),
    };
    let (mut workers, served) =
        open_workers(&opts, plan.queues, &ifindexes, &mut steering, &shared)?;
    let worker_stats = workers.iter().map(|w| w.stats.clone()).collect();
    let offload_stats = Arc::new(OffloadStats::default());
    // XDP_TX and redirects need driver-mode XDP on every served interface
    // (a generic-mode egress drops them silently): no offload otherwise.
    let offload = opts.offload && served.iter().all(|i| i.mode == AttachMode::Driver);
    if opts.offload && !offload {
        tracing::warn!(
            "an interface runs XDP in skb (generic) mode: offload off, every packet goes through lvc's workers"
        );
    }
    if !offload {
        for w in &mut workers {
            w.shared.offload = None;
            w.shared.flow_slots = None;
        }
    }
    let offloader = if offload {
        for (slot, &ifindex) in ifindexes.iter().enumerate() {
            steering.set_egress(slot as u32, ifindex)?;
        }
        let map = steering
            .take_flows()
            .context("the XDP program's flow map is gone")?;
        Some(Offloader {
            map,
            slots: steering.flow_slots(),
            clean_at: 0,
            clean_until: 0,
            rx: offload_rx,
            routes: routes.table.clone(),
            shaping: shaping.clone(),
            epoch: shared.epoch,
            stats: offload_stats.clone(),
            conntrack: conntrack.clone(),
            installs: 0,
            syncs: 0,
        })
    } else {
        None
    };
    let steering = Arc::new(Mutex::new(steering));
    let announcer = match &opts.announce_dev {
        Some(dev) => Some(
            crate::net::announce::Announcer::new(dev)
                .with_context(|| format!("cannot create the announcement device `{dev}`"))?,
        ),
        None => None,
    };

    let control = Arc::new(Control::new(ControlDeps {
        steering: steering.clone(),
        services: services.clone(),
        shaping,
        conntrack: conntrack.clone(),
        workers: worker_stats,
        interfaces: served,
        routes: routes.table.clone(),
        neigh_requests: shared.neigh_requests.clone(),
        epoch: shared.epoch,
        offload: offload_stats,
        sync: sync.as_ref().map(|s| s.stats.clone()),
        announcer,
    }));
    if let Some(file) = &plan.initial {
        control
            .replace(file)
            .map_err(|e| anyhow::anyhow!("configuration rejected: {}", e.message))?;
    }
    let mut journal = journal;
    if !left.is_empty() {
        let replies = steering.lock().unwrap_or_else(|p| p.into_inner()).replies();
        let now = shared.epoch.elapsed().as_secs() as u32;
        let r = journal::restore(
            left,
            &services.load(),
            &conntrack,
            &replies,
            journal.as_mut(),
            now,
        );
        tracing::info!(
            connections = r.conns,
            dropped = r.dropped,
            "took over the connections of the previous process"
        );
    }
    // Everything that needs privileges is done once the sockets are bound:
    // from here on lvc keeps only what it needs to run (see `privs`), and
    // every thread started after this inherits that.
    let metrics_listener = match opts.metrics {
        Some(addr) => Some((
            addr,
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?,
        )),
        None => None,
    };
    let socket = ControlSocket::bind(&opts.socket, plan.socket_gid)?;
    // The workers run at `--worker-nice`, and real-time at
    // `--worker-rt-priority`. Both take CAP_SYS_NICE, which goes with the
    // drop below: so the main thread takes them now, the workers inherit
    // them, and the main thread goes back before it starts any other
    // thread.
    let base_nice = crate::io::sys::thread_nice();
    let reniced = opts.worker_nice != base_nice
        && crate::io::sys::set_thread_nice(opts.worker_nice)
            .inspect_err(|e| {
                tracing::warn!(nice = opts.worker_nice, error = %e,
                    "cannot set the workers' priority: they run at the default one");
            })
            .is_ok();
    let realtime = opts.worker_rt_priority > 0
        && crate::io::sys::set_thread_realtime(opts.worker_rt_priority)
            .inspect_err(|e| {
                tracing::warn!(priority = opts.worker_rt_priority, error = %e,
                    "cannot make the workers real-time: they run at their nice value");
            })
            .is_ok();
    let dropped = crate::privs::drop_to_runtime().context("cannot drop capabilities")?;
    tracing::info!(
        kept = ?crate::privs::KEPT,
        dropped = dropped.len(),
        "capabilities dropped after setup"
    );
    let mut threads = Vec::new();
    // A worker that panics stops the whole daemon (and so detaches XDP):
    // half a dataplane silently passing a queue's VIP traffic to the kernel
    // is worse than a clean, visible exit that a supervisor restarts.
    let failed = Arc::new(AtomicBool::new(false));
    for (q, w) in workers.into_iter().enumerate() {
        let (shutdown, failed) = (shutdown.clone(), failed.clone());
        spawn(&mut threads, format!("lvc-worker-{q}"), move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_err() {
                failed.store(true, Relaxed);
                shutdown.store(true, Relaxed);
            }
        })?;
    }
    if realtime {
        crate::io::sys::set_thread_realtime(0)
            .context("cannot set the main thread's scheduling class back")?;
    }
    if reniced {
        crate::io::sys::set_thread_nice(base_nice)
            .context("cannot set the main thread's priority back")?;
    }
    control
        .start_health_checks()
        .context("cannot start the health-check thread")?;
    if let Some(o) = offloader {
        let shutdown = shutdown.clone();
        spawn(&mut threads, "lvc-offload", move || o.run(&shutdown))?;
    }
    {
        let shutdown = shutdown.clone();
        spawn(&mut threads, "lvc-route", move || {
            route_sync.run(neigh_rx, shutdown)
        })?;
    }
    if let Some(s) = &sync {
        let r = s.receiver(crate::sync::ReceiverDeps {
            services: services.clone(),
            conntrack: conntrack.clone(),
            replies: steering.lock().unwrap_or_else(|p| p.into_inner()).replies(),
            epoch: shared.epoch,
        })?;
        let shutdown = shutdown.clone();
        spawn(&mut threads, "lvc-sync", move || r.run(&shutdown))?;
        // What the peers made while this director was away (failback).
        s.ask_for_dump();
        tracing::info!(peers = ?opts.sync_peers, "connection sync with peer directors");
    }
    {
        let (control, shutdown, epoch) = (control.clone(), shutdown.clone(), shared.epoch);
        let replies = steering.lock().unwrap_or_else(|p| p.into_inner()).replies();
        spawn(&mut threads, "lvc-housekeeping", move || {
            housekeeping::run(
                &conntrack,
                &replies,
                &control,
                journal,
                sync.as_ref(),
                &shutdown,
                epoch,
            )
        })?;
    }
    if let Some((addr, listener)) = metrics_listener {
        let (control, shutdown) = (control.clone(), shutdown.clone());
        spawn(&mut threads, "lvc-metrics", move || {
            metrics::serve(listener, control, shutdown)
        })?;
        tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
    }
    tracing::info!(socket = %opts.socket.display(), "lvc-dataplane ready");
    {
        let (control, shutdown) = (control.clone(), shutdown.clone());
        spawn(&mut threads, "lvc-control", move || {
            socket.serve(control, shutdown)
        })?;
    }

    wait_for_signals(&opts, &control, &shutdown, &reload);
    tracing::info!("shutting down");
    for t in threads {
        let _ = t.join();
    }
    if handover.load(Relaxed) {
        // (The journal was written as the housekeeping thread stopped.)
        steering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep_pins();
        tracing::info!("SIGQUIT: the XDP program stays attached for the next process");
    }
    // Dropping the steering handle closes the bpf_links: XDP detached
    // (unless they stay pinned).
    drop(steering);
    if failed.load(Relaxed) {
        bail!("a worker thread panicked; the dataplane stopped and detached XDP");
    }
    Ok(())
}

/// Waits for shutdown; on SIGHUP re-reads `--config` (all or nothing).
fn wait_for_signals(opts: &Options, control: &Control, shutdown: &AtomicBool, reload: &AtomicBool) {
    while !shutdown.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if !reload.swap(false, Relaxed) {
            continue;
        }
        let Some(path) = &opts.config else {
            tracing::warn!("SIGHUP: no --config file to reload");
            continue;
        };
        match read_config(path).and_then(|f| {
            control
                .replace(&f)
                .map_err(|e| anyhow::anyhow!("{}", e.message))
        }) {
            Ok(()) => tracing::info!(file = %path.display(), "SIGHUP: configuration reloaded"),
            Err(e) => tracing::error!(
                file = %path.display(),
                "SIGHUP: configuration rejected, the running one stays: {e:#}"
            ),
        }
    }
}

/// Reads and validates a configuration file.
fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    ConfigFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The id of group `name` (from /etc/group), or `name` itself if numeric.
fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?.parse::<u32>().ok()?))
        })
        .find(|(n, _)| *n == name)
        .map(|(_, gid)| gid)
        .with_context(|| format!("--socket-group {name}: no such group"))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
