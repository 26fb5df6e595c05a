//! Health checks of real servers (the paper's `mon`, keepalived's
//! checkers), run from the director's own network stack on one thread of
//! their own: never on the packet path, never under the control lock.
//!
//! - [`Health`]: one server's state, shared by the checker (which writes
//!   it), the control plane (which publishes a down server with weight 0)
//!   and the workers (which drop the connections of a server that failed
//!   with `--on-fail remove`). It outlives configuration changes, like the
//!   server's counters.
//! - [`Checker`]: a tokio current-thread runtime with one task per checked
//!   server; [`Checker::set`] hands it the servers to check (after every
//!   configuration change) and it starts, restarts or stops tasks to match.
//! - [`probe`]: the probes themselves (tcp, http, udp, exec).
//!
//! A server starts up (as with keepalived: adding servers does not take a
//! service down for `rise` intervals); `fall` consecutive failures take it
//! down, `rise` consecutive successes bring it back. Every change calls
//! the daemon's handler (which republishes the service table) and runs the
//! service's `--alert` command.

pub mod probe;

use lvc_proto::ServiceKey;
use lvc_proto::health::{Check, CheckKind, HealthInfo, OnFail};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One real server's health.
#[derive(Debug)]
pub struct Health {
    /// Takes new connections as far as its check is concerned.
    up: AtomicBool,
    /// Down with `--on-fail remove`: its connections are dropped.
    evict: AtomicBool,
    record: Mutex<Record>,
}

#[derive(Debug)]
struct Record {
    /// The check run (`None`: not checked).
    check: Option<String>,
    last: String,
    since: Instant,
    checks: u64,
    failures: u64,
    transitions: u64,
    /// Consecutive successes / failures.
    oks: u32,
    fails: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            evict: AtomicBool::new(false),
            record: Mutex::new(Record {
                check: None,
                last: String::new(),
                since: Instant::now(),
                checks: 0,
                failures: 0,
                transitions: 0,
                oks: 0,
                fails: 0,
            }),
        }
    }
}

impl Health {
    /// Whether the server takes new connections (its check passes, or it
    /// is not checked).
    #[inline]
    pub fn up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Whether its connections are to be dropped (down, `--on-fail
    /// remove`). Read by the workers for every packet of a connection.
    #[inline]
    pub fn evicting(&self) -> bool {
        self.evict.load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `list` shows; `None` if the server is not checked.
    pub fn info(&self) -> Option<HealthInfo> {
        let r = self.lock();
        Some(HealthInfo {
            up: self.up(),
            check: r.check.clone()?,
            last: r.last.clone(),
            since_secs: r.since.elapsed().as_secs(),
            checks: r.checks,
            failures: r.failures,
            transitions: r.transitions,
        })
    }

    /// Checks `check` from now on; an unchecked server is up.
    fn begin(&self, check: &Check) {
        let mut r = self.lock();
        let name = check.kind.to_string();
        if check.kind == CheckKind::None {
            r.check = None;
            r.since = Instant::now();
            self.up.store(true, Relaxed);
            self.evict.store(false, Relaxed);
        } else {
            if r.check.as_deref() != Some(&name) {
                r.check = Some(name);
                r.last = "not checked yet".into();
                (r.oks, r.fails) = (0, 0);
            }
            // `--on-fail` changed while the server is down: its
            // connections go (or stay) from now on.
            self.evict
                .store(!self.up() && check.on_fail == OnFail::Remove, Relaxed);
        }
    }

    /// Records one probe's result; returns the new state if it changed.
    pub fn record(&self, check: &Check, result: &Result<(), String>) -> Option<bool> {
        let mut r = self.lock();
        r.checks += 1;
        match result {
            Ok(()) => {
                r.last = "ok".into();
                r.oks = r.oks.saturating_add(1);
                r.fails = 0;
            }
            Err(why) => {
                r.last.clone_from(why);
                r.failures += 1;
                r.fails = r.fails.saturating_add(1);
                r.oks = 0;
            }
        }
        let up = self.up();
        let next = if up {
            r.fails < check.fall
        } else {
            r.oks >= check.rise
        };
        if next == up {
            return None;
        }
        r.transitions += 1;
        r.since = Instant::now();
        self.evict
            .store(!next && check.on_fail == OnFail::Remove, Relaxed);
        self.up.store(next, Relaxed);
        Some(next)
    }
}

/// A server to check.
#[derive(Clone, Debug)]
pub struct Target {
    pub service: ServiceKey,
    /// The server as configured (its identity).
    pub server: SocketAddr,
    /// Where probes go (the server's address, the check's port).
    pub probe: SocketAddr,
    pub check: Check,
    pub health: Arc<Health>,
    /// The service's `--alert` command.
    pub alert: Option<String>,
}

/// A server's change of state, for the daemon's handler.
#[derive(Clone, Debug)]
pub struct Transition {
    pub service: ServiceKey,
    pub server: SocketAddr,
    pub up: bool,
    /// The last probe's result.
    pub reason: String,
    pub health: Arc<Health>,
}

/// Called (on a blocking thread) for every change of state.
pub type OnChange = Arc<dyn Fn(Transition) + Send + Sync>;

/// The health-check thread.
pub struct Checker {
    tx: mpsc::UnboundedSender<Vec<Target>>,
}

/// Longest an `--alert` command may run before it is killed.
const ALERT_TIMEOUT: Duration = Duration::from_secs(30);

impl Checker {
    /// Starts the thread; it ends when the `Checker` is dropped.
    pub fn start(on_change: OnChange) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("lvc-health-io")
            .build()?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("lvc-health".into())
            .spawn(move || rt.block_on(supervise(rx, on_change)))?;
        Ok(Self { tx })
    }

    /// Checks exactly `targets` from now on (servers whose check did not
    /// change keep their task and their count of consecutive results).
    pub fn set(&self, targets: Vec<Target>) {
        let _ = self.tx.send(targets);
    }
}

/// Keeps one task per checked server, as the latest set says.
async fn supervise(mut rx: mpsc::UnboundedReceiver<Vec<Target>>, on_change: OnChange) {
    type Key = (ServiceKey, SocketAddr);
    let mut tasks: HashMap<Key, (Target, tokio::task::AbortHandle)> = HashMap::new();
    while let Some(mut targets) = rx.recv().await {
        // Only the newest set matters.
        while let Ok(newer) = rx.try_recv() {
            targets = newer;
        }
        let mut wanted: HashMap<Key, Target> = HashMap::new();
        for t in targets {
            t.health.begin(&t.check);
            if t.check.kind != CheckKind::None {
                wanted.insert((t.service, t.server), t);
            }
        }
        tasks.retain(|k, (old, handle)| {
            let same = wanted.get(k).is_some_and(|t| {
                t.check == old.check
                    && t.probe == old.probe
                    && t.alert == old.alert
                    && Arc::ptr_eq(&t.health, &old.health)
            });
            if same {
                wanted.remove(k);
            } else {
                handle.abort();
            }
            same
        });
        for (k, t) in wanted {
            let handle = tokio::spawn(run(t.clone(), on_change.clone())).abort_handle();
            tasks.insert(k, (t, handle));
        }
    }
    for (_, (_, h)) in tasks {
        h.abort();
    }
}

/// Checks one server until aborted.
async fn run(t: Target, on_change: OnChange) {
    let every = t.check.interval.duration();
    // Spread the first probes over one interval, so that a thousand
    // servers added at once are not probed in one burst.
    // (A random seed: a random offset per task.)
    let h = ahash::RandomState::new().hash_one((t.service, t.server));
    let first = every.mul_f64((h % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let timeout = t.check.timeout.duration();
        let result = match tokio::time::timeout(timeout, probe::probe(&t)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", t.check.timeout)),
        };
        let Some(up) = t.health.record(&t.check, &result) else {
            continue;
        };
        let reason = match &result {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.clone(),
        };
        tracing::warn!(
            service = %t.service, server = %t.server, up, reason = %reason,
            "real server health changed"
        );
        let tr = Transition {
            service: t.service,
            server: t.server,
            up,
            reason,
            health: t.health.clone(),
        };
        if let Some(cmd) = &t.alert {
            tokio::spawn(alert(cmd.clone(), tr.clone()));
        }
        let cb = on_change.clone();
        // The handler takes the control lock and republishes: not on this
        // thread, whose probes must keep their timing.
        let _ = tokio::task::spawn_blocking(move || cb(tr)).await;
    }
}

/// Runs a service's `--alert` command for a change of state: `sh -c CMD`
/// with `LVC_SERVICE`, `LVC_SERVER`, `LVC_STATE` (up/down) and
/// `LVC_REASON` in its environment (mon's alerts get the same facts).
async fn alert(cmd: String, tr: Transition) {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(&cmd)
        .env("LVC_SERVICE", tr.service.to_string())
        .env("LVC_SERVER", tr.server.to_string())
        .env("LVC_STATE", if tr.up { "up" } else { "down" })
        .env("LVC_REASON", &tr.reason)
        .stdin(std::process::Stdio::null());
    match probe::run_bounded(c, ALERT_TIMEOUT).await {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(%cmd, status = %s, "alert command failed"),
        Err(e) => tracing::warn!(%cmd, error = %e, "alert command failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32, on_fail: OnFail) -> Check {
        let mut c = lvc_proto::health::CheckSpec {
            kind: Some(CheckKind::Tcp),
            rise: Some(rise),
            fall: Some(fall),
            on_fail: Some(on_fail),
            ..Default::default()
        }
        .resolve();
        c.interval = lvc_proto::health::Secs::from_millis(1000);
        c
    }

    #[test]
    fn fall_failures_take_it_down_and_rise_successes_bring_it_back() {
        let h = Health::default();
        let c = check(2, 3, OnFail::Quiesce);
        h.begin(&c);
        let bad = Err("connection refused".to_owned());
        assert!(h.up());
        assert_eq!(h.record(&c, &bad), None);
        assert_eq!(h.record(&c, &Ok(())), None, "a success resets the count");
        assert_eq!(h.record(&c, &bad), None);
        assert_eq!(h.record(&c, &bad), None);
        assert_eq!(h.record(&c, &bad), Some(false));
        assert!(!h.up() && !h.evicting(), "quiesced, not evicted");
        assert_eq!(h.record(&c, &Ok(())), None);
        assert_eq!(h.record(&c, &Ok(())), Some(true));
        let info = h.info().unwrap();
        assert_eq!((info.checks, info.failures, info.transitions), (7, 4, 2));
        assert_eq!(info.last, "ok");
    }

    #[test]
    fn on_fail_remove_evicts_until_it_recovers() {
        let h = Health::default();
        let c = check(1, 1, OnFail::Remove);
        h.begin(&c);
        assert_eq!(h.record(&c, &Err("x".into())), Some(false));
        assert!(h.evicting());
        assert_eq!(h.record(&c, &Ok(())), Some(true));
        assert!(!h.evicting());
        // No check any more: up, and listed as unchecked.
        h.record(&c, &Err("x".into()));
        h.begin(&check(1, 1, OnFail::Remove).with_kind(CheckKind::None));
        assert!(h.up() && !h.evicting() && h.info().is_none());
    }

    trait WithKind {
        fn with_kind(self, k: CheckKind) -> Self;
    }
    impl WithKind for Check {
        fn with_kind(mut self, k: CheckKind) -> Self {
            self.kind = k;
            self
        }
    }
}
