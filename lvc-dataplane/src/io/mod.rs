//! Frames in and out: the AF_XDP sockets and their UMEM (`xsk`), the XDP
//! program that steers frames to them (`steer`) and the reply table shared
//! with it (`replymap`). `xsk` and `replymap` are the only modules with
//! `unsafe` code. Nothing here decides what happens to a packet.

#[allow(unsafe_code)]
pub mod replymap;
pub mod steer;
#[allow(unsafe_code)]
pub mod xsk;
