//! What runs per packet, with no I/O: parse → conntrack → schedule →
//! rewrite, plus ICMP errors and fragments. Frames arrive as `&mut [u8]`;
//! the stages read tables (services, routes, connections) and return what
//! to do with the frame.

pub mod checksum;
pub mod conntrack;
pub mod icmp;
pub mod parse;
pub mod rewrite;
pub mod schedule;
pub mod services;
pub mod snat;
