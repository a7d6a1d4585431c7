//! Test support shared by unit tests (compiled for `cfg(test)` only).
//!
//! Owns: the one way a unit test builds a monoio runtime. The legacy (epoll) driver works in
//! every sandbox, including those that forbid io_uring, and the timer is on because the proxy's
//! code under test uses `monoio::time`.

/// A single-threaded monoio runtime on the legacy driver, with timers.
pub(crate) fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("test runtime")
}
