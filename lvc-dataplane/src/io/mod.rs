//! Frames in and out: the AF_XDP sockets and their UMEM (`xsk`, the only
//! module with `unsafe` code) and the XDP program that steers frames to
//! them (`steer`). Nothing here decides what happens to a packet.

pub mod steer;
#[allow(unsafe_code)]
pub mod xsk;
