//! lvc's dataplane.
//!
//! The folders are the architecture:
//!
//! ```text
//! io/        rx/tx: AF_XDP sockets and UMEM (xsk), the XDP program and
//!            its maps (steer), the reply table shared with it (replymap),
//!            shared memory and the TUN device (sys); xsk and sys are the only `unsafe`
//! pipeline/  what runs per packet, no I/O:
//!            parse → conntrack → schedule → rewrite (+ icmp, fragments)
//! shape/     the shape stage between rewrite and tx
//! net/       the kernel's routes and neighbours, mirrored (route thread)
//! control/   never per packet: config edits, publication, queries, the
//!            control socket, metrics, housekeeping
//! worker     the loop that drives io → pipeline → shape → io
//! offload    puts established flows into XDP's flow map and back
//! journal    the connections a restarted dataplane takes over
//! health/    real-server health checks (their own thread)
//! daemon     start-up and thread wiring
//! ```

#![deny(unsafe_code)]

pub mod addr;
pub mod control;
pub mod daemon;
pub mod health;
pub mod io;
pub mod journal;
pub mod net;
pub mod offload;
pub mod pipeline;
pub mod privs;
pub mod shape;
pub mod stats;
pub mod sync;
pub mod wire;
pub mod worker;
