//! lvc's dataplane.
//!
//! The per-packet path, one module per stage, each working on a batch:
//!
//! ```text
//! rx (xsk) → parse → conntrack → schedule → rewrite → tx (xsk)
//! ```
//!
//! `worker` drives the stages; `steer` owns the XDP program and its maps;
//! `route` follows the kernel's routes and neighbours; `control` answers
//! `lvc-ctl`. Only `xsk` contains `unsafe` code.

#![deny(unsafe_code)]

pub mod addr;
pub mod checksum;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod icmp;
pub mod metrics;
pub mod parse;
pub mod rewrite;
pub mod route;
pub mod schedule;
pub mod services;
pub mod shape;
pub mod snat;
pub mod stats;
pub mod steer;
pub mod worker;
#[allow(unsafe_code)]
pub mod xsk;
