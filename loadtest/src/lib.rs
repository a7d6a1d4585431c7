//! `sluice-loadtest`: a mock model server, a load generator and a side-by-side comparison tool
//! for the sluice proxy and its peers (Envoy, nginx).
//!
//! Module map: [`http1`] shared HTTP/1.1 framing; [`mock`] the mock upstream; [`run`] the load
//! generator (scheduler, client, statistics); [`scenario`] scenario files; [`compare`] starting
//! targets, interleaved rounds and the JSON/SVG report; [`report`] `docs/benchmarks.md`;
//! [`sys`] `/proc` accounting, CPU affinity and resource limits.

pub mod compare;
pub mod http1;
pub mod mock;
pub mod report;
pub mod run;
pub mod scenario;
pub mod svg;
pub mod sys;
