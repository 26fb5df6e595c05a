//! The control plane's side of health checks: which servers the checker
//! probes (after every configuration change), and what a change of a
//! server's health does (republish; with `--on-fail remove`, drop its
//! connections).

use super::Control;
use super::config::Config;
use crate::health::{Checker, Target, Transition};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

impl Control {
    /// Starts the health-check thread and hands it the servers to check.
    pub fn start_health_checks(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        let checker = Checker::start(Arc::new(move |tr: Transition| {
            if let Some(control) = weak.upgrade() {
                control.health_changed(&tr);
            }
        }))?;
        let _ = self.checker.set(checker);
        let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_health(&cfg);
        Ok(())
    }

    /// Tells the checker what `cfg` checks (every server, so that one whose
    /// check was removed is up again).
    pub(super) fn sync_health(&self, cfg: &Config) {
        let Some(checker) = self.checker.get() else {
            return;
        };
        let targets = cfg
            .iter()
            .flat_map(|(key, s)| {
                s.servers.iter().map(move |r| {
                    let check = s.check_of(r).resolve();
                    let port = check.port.unwrap_or(r.addr.port());
                    Target {
                        service: *key,
                        server: r.addr,
                        probe: SocketAddr::new(r.addr.ip(), port),
                        check,
                        health: r.health.clone(),
                        alert: s.alert.clone(),
                    }
                })
            })
            .collect();
        checker.set(targets);
    }

    /// A server went down or came back: the service table is published
    /// again (a down server with weight 0, the sorry server taking over if
    /// none is left); a server down with `--on-fail remove` loses its
    /// connections now (those that send a packet meanwhile are dropped by
    /// the workers).
    pub(super) fn health_changed(&self, tr: &Transition) {
        // Many servers changing at once (a switch failing) must not cost
        // one publication each: a change that finds one pending leaves it
        // to the thread that will publish (it reads every server's health
        // after this change was recorded).
        if !self.health_pending.swap(true, SeqCst) {
            loop {
                let cfg = self.config.lock().unwrap_or_else(|p| p.into_inner());
                self.health_pending.store(false, SeqCst);
                if let Err(e) = self.publish(&cfg) {
                    tracing::error!(error = %e.message, "cannot publish a change of health");
                }
                drop(cfg);
                if !self.health_pending.load(SeqCst) {
                    break;
                }
            }
        }
        if !tr.up && tr.health.evicting() {
            let now = self.epoch.elapsed().as_secs() as u32;
            let n = self
                .conntrack
                .remove_where(now, |c| Arc::ptr_eq(&c.server.health, &tr.health));
            tracing::warn!(service = %tr.service, server = %tr.server, connections = n,
                "real server removed with its connections");
        }
    }
}
