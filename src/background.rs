//! Background threads: the priority of every sluice thread that is not a worker.
//!
//! Owns: the nice value those threads run at ([`set_nice`], from the config's
//! `background_thread_nice`, read once at start-up) and [`lower_priority`], which each of them
//! calls first: telemetry, OTLP export, admin (and its connection threads, which inherit it),
//! the config/DNS watcher and reloads, the signal thread, TLS file watching, the Redis lease
//! client and the BPE warm-up.
//!
//! Why: a sidecar usually gets fewer cores than it has threads, and in `compare` the whole
//! process is pinned to one core. At equal priority a telemetry batch (a few hundred records
//! every `telemetry.flush_interval_ms`), a `/metrics` render or a reload that wakes up while a
//! request is in flight takes the core from the worker for its whole slice, and that request's
//! latency grows by it: a tail that a byte relay does not have. At nice 10 the scheduler
//! weighs such a thread at about a tenth of a worker (CFS/EEVDF weights 1024 against 110), so a
//! runnable worker keeps the core, while the background work still gets its share when the
//! workers are saturated (it is delayed, never starved: telemetry batches are bounded and
//! counted when dropped). Workers keep the process's own priority.
//!
//! Invariant: only raises the calling thread's nice value (any user may), never lowers it;
//! Linux applies `setpriority(PRIO_PROCESS, tid)` to that one thread. A failure is logged and
//! ignored: priority is an optimisation, never a reason not to run.

use std::sync::atomic::{AtomicI32, Ordering};

/// Default nice value of background threads (`background_thread_nice`).
pub const BACKGROUND_THREAD_NICE_DEFAULT: i32 = 10;
/// Largest nice value Linux accepts.
pub const BACKGROUND_THREAD_NICE_MAX: i32 = 19;

static NICE: AtomicI32 = AtomicI32::new(BACKGROUND_THREAD_NICE_DEFAULT);

/// Sets the nice value for background threads started from now on (0: leave them alone).
pub fn set_nice(nice: i32) {
    NICE.store(nice.clamp(0, BACKGROUND_THREAD_NICE_MAX), Ordering::Relaxed);
}

/// Lowers the calling thread's priority to the configured nice value. Call it first in every
/// background thread.
pub fn lower_priority() {
    let nice = NICE.load(Ordering::Relaxed);
    if nice <= 0 {
        return;
    }
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; with
    // PRIO_PROCESS and a thread id Linux changes only that thread's nice value.
    let rc = unsafe {
        let tid = libc::gettid();
        let current = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if current >= nice {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::debug!(
            nice,
            error = %std::io::Error::last_os_error(),
            "background thread: cannot lower its priority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_nice() -> i32 {
        // SAFETY: as in `lower_priority`; reads the calling thread's own nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn a_background_thread_runs_at_the_configured_nice_and_the_caller_does_not() {
        let before = current_nice();
        set_nice(7);
        let inner = std::thread::spawn(|| {
            lower_priority();
            current_nice()
        })
        .join()
        .expect("thread");
        assert_eq!(inner, before.max(7));
        assert_eq!(current_nice(), before, "only the calling thread changes");
        set_nice(BACKGROUND_THREAD_NICE_DEFAULT);
    }
}
