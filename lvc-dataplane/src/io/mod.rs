//! Frames in and out: the AF_XDP sockets and their UMEM (`xsk`), the XDP
//! program that steers frames to them (`steer`), the reply table and the
//! offloaded-flow table shared with it (`replymap`, `flowslots`), and
//! shared memory (`sys`: those tables' and the connection journal's
//! mapping). `xsk` and `sys` are the only modules
//! with `unsafe` code. Nothing here decides what happens to a packet.

pub mod flowslots;
pub mod replymap;
pub mod steer;
#[allow(unsafe_code)]
pub mod sys;
#[allow(unsafe_code)]
pub mod xsk;
