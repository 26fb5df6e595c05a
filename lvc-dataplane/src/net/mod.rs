//! The kernel's view of the network, mirrored for the workers: links,
//! addresses, routes and neighbours (the route thread).

pub mod announce;
pub mod route;
