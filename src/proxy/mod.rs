//! The data plane of one worker: connection loop, exchanges, upstream pools, stream IO.
//!
//! * [`exchange`]: the downstream connection loop and the phases of one request/response.
//! * [`upstream`]: endpoint choice, connecting (TCP + TLS origination), the keep-alive pool.
//! * [`io`]: the plain/TLS stream enum and monoio owned-buffer idioms.
//! * [`error`]: the proxy boundary's error enum.

pub mod error;
pub mod exchange;
pub mod io;
pub mod timer;
pub mod upstream;
