//! One worker: a monoio runtime pinned to a core, its listeners, its pools, its telemetry buffer.
//!
//! Owns: everything per-core. A worker shares nothing mutable with other workers: its state is
//! in `Rc`/`RefCell`/`Cell`, and the only cross-thread reads are of [`Shared`] (atomics and an
//! `ArcSwap` of the read-only [`Snapshot`]).
//!
//! Reload, the commit half (the precommit half is `Snapshot::build` on the control thread):
//! every request asks [`Worker::snapshot`] for the current snapshot; one relaxed atomic load
//! tells whether the generation moved, and only then is the `ArcSwap` read. An exchange keeps
//! the `Rc` it started with, so in-flight requests and streams finish on the configuration they
//! began with, while the next request on the same connection uses the new one. The worker's
//! tick reconciles listeners (binds new ones, closes removed ones) and evicts pools of changed
//! upstreams.
//!
//! Drain: when [`Shared::draining`] is set the tick closes the listeners (new connections are
//! refused by the kernel), fires the drain event (idle keep-alive connections close; busy ones
//! close after their current exchange), and the worker exits when no connection is left or
//! the drain timeout passes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use monoio::net::{ListenerOpts, TcpListener};

use crate::proxy::upstream::Pools;
use crate::snapshot::Snapshot;
use crate::telemetry::{LocalTelemetry, TelemetryMsg, TelemetryTx, WorkerGauges};

/// How often a worker checks for drain, reloads and telemetry flushes.
pub const TICK_INTERVAL_MS: u64 = 50;
/// Listen backlog of each worker's listener socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Pause after an accept error such as EMFILE before accepting again.
pub const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// How often idle pooled connections are checked for expiry.
pub const POOL_EVICT_INTERVAL_MS: u64 = 1_000;

/// Process-wide state that workers read. Written by the control thread.
pub struct Shared {
    pub current: ArcSwap<Snapshot>,
    pub generation: AtomicU64,
    pub draining: AtomicBool,
    /// Workers that have bound all their listeners.
    pub workers_ready: AtomicUsize,
    pub workers: usize,
    pub telemetry: TelemetryTx,
}

impl Shared {
    pub fn is_ready(&self) -> bool {
        self.workers_ready.load(Ordering::Acquire) >= self.workers
            && !self.draining.load(Ordering::Acquire)
    }
}

/// A one-shot, single-threaded event: `fire` wakes every waiter, now and later.
///
/// Every idle keep-alive connection waits on the worker's drain event, so waiters come and go
/// at request rate: a waiter registers under an id and removes itself when dropped, keeping
/// the set as large as the number of connections currently waiting (never growing with the
/// number of requests served).
#[derive(Default)]
pub struct LocalEvent {
    fired: Cell<bool>,
    next_id: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl LocalEvent {
    pub fn fire(&self) {
        self.fired.set(true);
        let ws: Vec<Waker> = self.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in ws {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> EventWait<'_> {
        EventWait { ev: self, id: None }
    }

    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.wakers.borrow().len()
    }
}

pub struct EventWait<'a> {
    ev: &'a LocalEvent,
    id: Option<u64>,
}

impl Future for EventWait<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.ev.fired.get() {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.ev.next_id.get();
                self.ev.next_id.set(id.wrapping_add(1));
                self.id = Some(id);
                id
            }
        };
        self.ev.wakers.borrow_mut().insert(id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for EventWait<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.ev.wakers.borrow_mut().remove(&id);
        }
    }
}

struct ListenerTask {
    addr: SocketAddr,
    mode: crate::transparent::ListenerMode,
    stop: Rc<LocalEvent>,
}

pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    /// `Rc<Arc<_>>` on purpose: each request clones the `Rc` (a plain increment on this core),
    /// never the `Arc` (an atomic on a cache line every core shares).
    #[allow(clippy::redundant_allocation)]
    snap: RefCell<Rc<Arc<Snapshot>>>,
    snap_generation: Cell<u64>,
    pub pools: RefCell<Pools>,
    pub telemetry: RefCell<LocalTelemetry>,
    /// Transparent listeners' per-core state: original-destination upstreams, counters.
    pub transparent: crate::transparent::PerCore,
    /// Fired once when draining starts: idle keep-alive connections close.
    pub drain: LocalEvent,
    /// Active downstream connections per listener name.
    active: RefCell<HashMap<Arc<str>, u64>>,
    /// Exchanges waiting on an upstream, and the spinner that busy-polls for them.
    pub busy: Rc<crate::busypoll::BusyPoll>,
    listeners: RefCell<HashMap<Arc<str>, ListenerTask>>,
}

/// Decrements the active-connection count of its listener when a connection ends.
pub struct ConnGuard {
    worker: Rc<Worker>,
    listener: Arc<str>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(n) = self.worker.active.borrow_mut().get_mut(&self.listener) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Worker {
    /// The current snapshot. One relaxed load per call unless a reload happened.
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.snap_generation.get() {
            let s = self.shared.current.load_full();
            self.snap_generation.set(s.generation);
            self.busy.set_budget_us(s.config.busy_poll_us);
            *self.snap.borrow_mut() = Rc::new(s);
        }
        self.snap.borrow().clone()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_fired()
    }

    fn conn_started(self: &Rc<Self>, listener: &Arc<str>) -> ConnGuard {
        *self
            .active
            .borrow_mut()
            .entry(listener.clone())
            .or_default() += 1;
        ConnGuard {
            worker: self.clone(),
            listener: listener.clone(),
        }
    }

    fn active_total(&self) -> u64 {
        self.active.borrow().values().sum()
    }

    /// Hand the buffered records (and, on ticks, the gauges) to the telemetry thread.
    pub fn flush_telemetry(&self, with_gauges: bool) {
        let records = {
            let mut t = self.telemetry.borrow_mut();
            if t.records.is_empty() && !with_gauges {
                return;
            }
            t.take()
        };
        let gauges = with_gauges.then(|| WorkerGauges {
            downstream_active: self
                .active
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            upstream_pool: self.pools.borrow().gauges(),
            transparent: {
                let s = self.transparent.stats.borrow();
                (!s.connections.is_empty()).then(|| Box::new(s.clone()))
            },
        });
        self.shared.telemetry.try_send(TelemetryMsg::Batch {
            worker: self.id,
            records,
            gauges,
        });
    }

    /// Bind listeners present in the snapshot and not yet running; stop those gone or moved.
    fn reconcile_listeners(self: &Rc<Self>, snap: &Snapshot) -> std::io::Result<()> {
        let mut running = self.listeners.borrow_mut();
        running.retain(|name, t| {
            let keep = snap
                .listeners
                .iter()
                .any(|l| &l.name == name && l.addr == t.addr && l.mode == t.mode);
            if !keep {
                t.stop.fire();
            }
            keep
        });
        for l in &snap.listeners {
            if running.contains_key(&l.name) {
                continue;
            }
            let opts = ListenerOpts::new()
                .reuse_port(true)
                .reuse_addr(true)
                .backlog(LISTEN_BACKLOG);
            let listener = TcpListener::bind_with_config(l.addr, &opts)?;
            let stop = Rc::new(LocalEvent::default());
            running.insert(
                l.name.clone(),
                ListenerTask {
                    addr: l.addr,
                    mode: l.mode,
                    stop: stop.clone(),
                },
            );
            monoio::spawn(accept_loop(
                self.clone(),
                l.name.clone(),
                listener,
                stop,
                l.mode,
            ));
        }
        Ok(())
    }
}

async fn accept_loop(
    w: Rc<Worker>,
    name: Arc<str>,
    listener: TcpListener,
    stop: Rc<LocalEvent>,
    mode: crate::transparent::ListenerMode,
) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = stop.wait() => None,
        };
        match accepted {
            None => break,
            Some(Ok((stream, peer))) => {
                let _ = stream.set_nodelay(true);
                let guard = w.conn_started(&name);
                if mode.is_transparent() {
                    monoio::spawn(crate::transparent::serve(
                        w.clone(),
                        name.clone(),
                        stream,
                        peer,
                        guard,
                    ));
                    continue;
                }
                let tls = w
                    .snapshot()
                    .listener(&name)
                    .and_then(|(_, l)| l.tls.clone());
                match tls {
                    Some(tls) => {
                        monoio::spawn(crate::tls::server::serve_tls(
                            w.clone(),
                            name.clone(),
                            stream,
                            peer,
                            guard,
                            tls,
                        ));
                    }
                    None => {
                        monoio::spawn(crate::proxy::exchange::serve_connection(
                            w.clone(),
                            name.clone(),
                            stream,
                            peer,
                            guard,
                        ));
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            }
        }
    }
    tracing::debug!(listener = %name, worker = w.id, "listener closed");
}

/// The ring's setup flags for `io_uring_task_run` (see `docs/configuration.md`).
fn uring_builder(t: crate::config::IoUringTaskRun) -> io_uring::Builder {
    use crate::config::IoUringTaskRun as T;
    let mut b = io_uring::IoUring::builder();
    match t {
        T::Interrupt => {}
        T::Coop => {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        T::Defer => {
            b.setup_single_issuer().setup_defer_taskrun();
        }
    }
    b
}

/// Run one worker until it has drained. `ready` reports the bind result once.
pub fn run_worker(
    id: usize,
    core: Option<usize>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    if let Some(core) = core {
        if let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
            tracing::warn!(worker = id, core, error = ?e, "could not pin worker to core");
        }
    }
    let task_run = shared.current.load().config.io_uring_task_run;
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .uring_builder(uring_builder(task_run))
        .build();
    // A kernel that refuses the flags (older than 5.19 / 6.1) gets the default ring.
    let rt = match rt {
        Err(e) if task_run != crate::config::IoUringTaskRun::Interrupt => {
            tracing::warn!(worker = id, ?task_run, error = %e,
                "io_uring_task_run refused by the kernel; using the default ring");
            monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
        }
        r => r,
    };
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {id}: cannot build runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let snap = shared.current.load_full();
        let access_log = snap.config.access_log.enabled;
        let w = Rc::new(Worker {
            id,
            shared: shared.clone(),
            snap_generation: Cell::new(snap.generation),
            snap: RefCell::new(Rc::new(snap.clone())),
            pools: RefCell::new(Pools::default()),
            telemetry: RefCell::new(LocalTelemetry::new(access_log)),
            transparent: crate::transparent::PerCore::default(),
            drain: LocalEvent::default(),
            active: RefCell::new(HashMap::new()),
            listeners: RefCell::new(HashMap::new()),
            busy: Rc::new(crate::busypoll::BusyPoll::default()),
        });
        w.busy.set_budget_us(snap.config.busy_poll_us);
        monoio::spawn(w.busy.clone().run());
        if let Err(e) = w.reconcile_listeners(&snap) {
            let _ = ready.send(Err(format!("worker {id}: cannot bind listener: {e}")));
            return;
        }
        shared.workers_ready.fetch_add(1, Ordering::AcqRel);
        let _ = ready.send(Ok(()));
        drop(snap);
        tick_loop(w).await;
    });
}

async fn tick_loop(w: Rc<Worker>) {
    let mut last_flush = Instant::now();
    let mut last_evict = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        monoio::time::sleep(Duration::from_millis(TICK_INTERVAL_MS)).await;
        let snap = w.snapshot();
        if w.shared.draining.load(Ordering::Acquire) && drain_deadline.is_none() {
            let timeout = Duration::from_millis(snap.config.drain_timeout_ms);
            drain_deadline = Some(Instant::now() + timeout);
            for (_, t) in w.listeners.borrow_mut().drain() {
                t.stop.fire();
            }
            w.drain.fire();
            w.pools.borrow_mut().clear_idle();
            tracing::info!(worker = w.id, active = w.active_total(), "draining");
        }
        if drain_deadline.is_none() {
            if let Err(e) = w.reconcile_listeners(&snap) {
                tracing::error!(worker = w.id, error = %e, "cannot bind a new listener");
            }
        }
        let flush_every = Duration::from_millis(snap.config.telemetry.flush_interval_ms);
        {
            let mut t = w.telemetry.borrow_mut();
            t.access_log = snap.config.access_log.enabled;
        }
        if last_flush.elapsed() >= flush_every
            || w.telemetry.borrow().records.len() >= crate::telemetry::LOCAL_RECORDS_MAX
        {
            last_flush = Instant::now();
            w.flush_telemetry(true);
        }
        if last_evict.elapsed() >= Duration::from_millis(POOL_EVICT_INTERVAL_MS) {
            last_evict = Instant::now();
            if w.transparent.has_upstreams() {
                let mut live = snap.upstreams.clone();
                live.extend(w.transparent.live_upstreams());
                w.pools.borrow_mut().evict(&live);
            } else {
                w.pools.borrow_mut().evict(&snap.upstreams);
            }
        }
        if let Some(deadline) = drain_deadline {
            let active = w.active_total();
            if active == 0 || Instant::now() >= deadline {
                if active > 0 {
                    tracing::warn!(
                        worker = w.id,
                        active,
                        "drain timeout: closing remaining connections"
                    );
                }
                w.flush_telemetry(true);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn event_waiters_deregister_on_drop_and_wake_on_fire() {
        let ev = LocalEvent::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..1000 {
            let mut w = Box::pin(ev.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(ev.waiters(), 0, "dropped waiters must not accumulate");
        let mut w = Box::pin(ev.wait());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert!(w.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ev.waiters(), 1);
        ev.fire();
        assert!(w.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(ev.wait()).as_mut().poll(&mut cx).is_ready());
    }
}
