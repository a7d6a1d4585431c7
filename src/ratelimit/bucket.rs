//! Lock-free token buckets (GCRA) and the bounded, interned key table they live in.
//!
//! Owns: the arithmetic of one limit ([`Limit`]) over one atomic word, and [`Table`], a
//! fixed-capacity open-addressing table of [`Slot`]s keyed by a 64-bit key hash.
//!
//! Why GCRA on one `AtomicU64` per key and not per-core shares: a token bucket is fully
//! described by its "theoretical arrival time" (TAT): the instant at which the bucket would
//! be full again. Admitting `n` units is one compare-and-swap that moves the TAT forward by
//! `n × interval`; the bucket refills by itself as time passes, so no timer and no refill
//! thread exist. Every core reads and writes the same word, so a limit of N/s admits exactly
//! N/s (plus the burst) whether the connections land on one core or on all of them, which a
//! per-core split with rebalancing can only approximate. The price is one contended cache line
//! per key; a CAS on it costs tens of nanoseconds even when two cores race, far below the
//! per-request budget, and keys that differ never share a line (`Slot` is cache-line aligned).
//!
//! Invariants:
//! * No lock, no allocation after [`Table::new`]; a lookup probes at most [`PROBE_SLOTS`].
//! * The table never grows: when a key finds neither its slot nor a free or idle one in its
//!   probe window it is charged to the shared overflow slot (counted), so memory is bounded
//!   by `keys_max` whatever the clients send.
//! * A slot is reclaimed for a new key only when the old key has been idle (its buckets full)
//!   for `idle_reclaim_ns`; an idle bucket is indistinguishable from a fresh one, so reuse
//!   needs no reset. Trade-off: a lookup racing with the reclaim of its own (long idle) key can
//!   charge one admission to the new key; documented in docs/ratelimit.md.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Slots probed from a key's home position before it goes to the overflow slot.
pub const PROBE_SLOTS: usize = 16;

/// Nanoseconds since the process's rate-limit epoch (monotonic).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Offset by a second so a TAT of 0 ("never used") is always in the past.
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1_000_000_000
}

/// One rate: `limit` units per `period_ns`, with a burst of `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Units per period, as configured (reported in `x-ratelimit-limit-*`).
    pub limit: u64,
    pub period_ns: u64,
    pub burst: u64,
    /// Nanoseconds per unit.
    pub interval_ns: u64,
    /// `burst × interval_ns`: how far ahead of now the TAT may run.
    pub tolerance_ns: u64,
}

/// The outcome of one admission attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    /// Units left in the bucket after this decision.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset_ns: u64,
    /// When refused: time until the request would fit (0 when admitted).
    pub retry_after_ns: u64,
}

impl Limit {
    pub fn new(limit: u64, period_ns: u64, burst: u64) -> Limit {
        let limit = limit.max(1);
        let burst = burst.max(1);
        let interval_ns = (period_ns / limit).max(1);
        Limit {
            limit,
            period_ns,
            burst,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst),
        }
    }

    fn state(&self, tat: u64, now: u64) -> (u64, u64) {
        let ahead = tat.saturating_sub(now);
        let remaining = self.tolerance_ns.saturating_sub(ahead) / self.interval_ns;
        (remaining, ahead)
    }

    /// Take `n` units from the bucket whose TAT is `tat`, or refuse without taking any.
    pub fn take(&self, tat: &AtomicU64, now: u64, n: u64) -> Decision {
        let cost = n.saturating_mul(self.interval_ns);
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let base = cur.max(now);
            let new = base.saturating_add(cost);
            if new - now > self.tolerance_ns {
                let (remaining, ahead) = self.state(cur, now);
                return Decision {
                    admitted: false,
                    remaining,
                    reset_ns: ahead,
                    retry_after_ns: (new - now - self.tolerance_ns).max(1),
                };
            }
            match tat.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    let (remaining, ahead) = self.state(new, now);
                    return Decision {
                        admitted: true,
                        remaining,
                        reset_ns: ahead,
                        retry_after_ns: 0,
                    };
                }
                Err(x) => cur = x,
            }
        }
    }

    /// Charge `n` more units without refusing (usage above the reservation): the bucket may
    /// run past its burst, and later requests wait until it has drained.
    pub fn charge(&self, tat: &AtomicU64, now: u64, n: u64) {
        let cost = n.saturating_mul(self.interval_ns);
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let new = cur.max(now).saturating_add(cost);
            match tat.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Give back `n` units (a reservation larger than the actual usage, or a refusal later in
    /// the chain). A full bucket stays full.
    pub fn refund(&self, tat: &AtomicU64, now: u64, n: u64) {
        let cost = n.saturating_mul(self.interval_ns);
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            if cur <= now {
                return;
            }
            let new = cur.saturating_sub(cost).max(now);
            match tat.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return,
                Err(x) => cur = x,
            }
        }
    }

    /// Remaining units and time to full, without taking any.
    pub fn peek(&self, tat: &AtomicU64, now: u64) -> (u64, u64) {
        self.state(tat.load(Ordering::Relaxed), now)
    }
}

/// One key's state. Cache-line aligned so two keys never contend on one line.
#[repr(align(64))]
#[derive(Default)]
pub struct Slot {
    /// Key hash; 0 = free.
    pub tag: AtomicU64,
    /// GCRA TAT of the requests bucket (local rules).
    pub tat_requests: AtomicU64,
    /// GCRA TAT of the tokens bucket (local rules).
    pub tat_tokens: AtomicU64,
    /// Leased units not yet used (global rules); may go negative when usage exceeds a
    /// reservation.
    pub lease_requests: AtomicI64,
    pub lease_tokens: AtomicI64,
    /// Last admission (ns), for idle reclaim and lease expiry.
    pub last_ns: AtomicU64,
    /// Global rules: a refill is queued for this slot (at most one at a time).
    pub refill_pending: AtomicBool,
    /// Global rules: don't ask Redis again before this instant (it had nothing to give).
    pub next_ask_ns: AtomicU64,
    /// Global rules: tokens a waiting request needs beyond the balance.
    pub want_tokens: AtomicU64,
    /// Global rules: units left in the shared bucket at the last lease (for the headers).
    pub remote_requests: AtomicU64,
    pub remote_tokens: AtomicU64,
}

/// A bounded table of slots, one per key.
pub struct Table {
    slots: Box<[Slot]>,
    mask: usize,
    /// Shared by every key that found no slot.
    pub overflow: Slot,
    idle_reclaim_ns: u64,
    /// Keys that fell into the overflow slot.
    pub overflowed: AtomicU64,
}

/// Where a key's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRef {
    Index(u32),
    Overflow,
}

impl Table {
    /// A table for at least `keys_max` keys (capacity: the next power of two of twice that).
    pub fn new(keys_max: usize, idle_reclaim_ns: u64) -> Table {
        let cap = (keys_max.max(1) * 2).next_power_of_two();
        let slots: Vec<Slot> = (0..cap).map(|_| Slot::default()).collect();
        Table {
            slots: slots.into_boxed_slice(),
            mask: cap - 1,
            overflow: Slot::default(),
            idle_reclaim_ns,
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn get(&self, r: SlotRef) -> &Slot {
        match r {
            SlotRef::Index(i) => &self.slots[i as usize],
            SlotRef::Overflow => &self.overflow,
        }
    }

    /// The slot of `hash` (interned on first use). `hash` 0 is mapped to 1.
    pub fn lookup(&self, hash: u64, now: u64) -> SlotRef {
        let tag = hash.max(1);
        let home = (tag as usize) & self.mask;
        let mut idle: Option<(usize, u64)> = None;
        for i in 0..PROBE_SLOTS.min(self.slots.len()) {
            let idx = (home + i) & self.mask;
            let s = &self.slots[idx];
            let t = s.tag.load(Ordering::Acquire);
            if t == tag {
                return SlotRef::Index(idx as u32);
            }
            if t == 0 {
                match s
                    .tag
                    .compare_exchange(0, tag, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return SlotRef::Index(idx as u32),
                    Err(x) if x == tag => return SlotRef::Index(idx as u32),
                    Err(_) => continue,
                }
            }
            if idle.is_none() && self.is_idle(s, now) {
                idle = Some((idx, t));
            }
        }
        if let Some((idx, old)) = idle {
            let s = &self.slots[idx];
            if s.tag
                .compare_exchange(old, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                s.lease_requests.store(0, Ordering::Relaxed);
                s.lease_tokens.store(0, Ordering::Relaxed);
                s.next_ask_ns.store(0, Ordering::Relaxed);
                return SlotRef::Index(idx as u32);
            }
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        SlotRef::Overflow
    }

    fn is_idle(&self, s: &Slot, now: u64) -> bool {
        let last = s.last_ns.load(Ordering::Relaxed);
        last.saturating_add(self.idle_reclaim_ns) < now
            && s.tat_requests.load(Ordering::Relaxed) <= now
            && s.tat_tokens.load(Ordering::Relaxed) <= now
            && !s.refill_pending.load(Ordering::Relaxed)
    }

    /// Occupied slots (for tests and metrics).
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.tag.load(Ordering::Relaxed) != 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_rate() {
        let l = Limit::new(10, S, 10);
        let tat = AtomicU64::new(0);
        let t0 = 10 * S;
        for i in 0..10 {
            let d = l.take(&tat, t0, 1);
            assert!(d.admitted, "{i}");
            assert_eq!(d.remaining, 9 - i);
        }
        let d = l.take(&tat, t0, 1);
        assert!(!d.admitted);
        assert_eq!(d.retry_after_ns, S / 10);
        // 100 ms later exactly one more fits.
        assert!(l.take(&tat, t0 + S / 10, 1).admitted);
        assert!(!l.take(&tat, t0 + S / 10, 1).admitted);
        // After a second idle, the bucket is full again.
        let d = l.take(&tat, t0 + 2 * S, 1);
        assert!(d.admitted);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn reservation_charge_and_refund() {
        let l = Limit::new(600, 60 * S, 600); // 600 tokens per minute
        let tat = AtomicU64::new(0);
        let now = 100 * S;
        assert!(l.take(&tat, now, 500).admitted);
        assert_eq!(l.peek(&tat, now).0, 100);
        // Actual usage was 200: 300 come back.
        l.refund(&tat, now, 300);
        assert_eq!(l.peek(&tat, now).0, 400);
        // Usage above the reservation is charged even past the burst.
        l.charge(&tat, now, 1000);
        assert_eq!(l.peek(&tat, now).0, 0);
        assert!(!l.take(&tat, now, 1).admitted);
        // Larger than the burst: never admitted, retry says how long.
        let fresh = AtomicU64::new(0);
        let d = l.take(&fresh, now, 601);
        assert!(!d.admitted);
        // A refund never makes a bucket more than full.
        l.refund(&fresh, now, 50);
        assert_eq!(l.peek(&fresh, now).0, 600);
    }

    #[test]
    fn exact_across_threads() {
        // 4 threads hammer one key at a fixed instant: exactly the burst is admitted.
        let l = Limit::new(1000, S, 1000);
        let tat = Arc::new(AtomicU64::new(0));
        let admitted = Arc::new(AtomicU64::new(0));
        let now = 5 * S;
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let tat = tat.clone();
                let admitted = admitted.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if l.take(&tat, now, 1).admitted {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn table_interns_bounds_and_reclaims() {
        let t = Table::new(4, S);
        assert_eq!(t.capacity(), 8);
        let now = 10 * S;
        let a = t.lookup(42, now);
        assert_eq!(t.lookup(42, now), a);
        assert_ne!(t.lookup(43, now), a);
        // Fill every slot with recently used keys.
        for k in 0..100u64 {
            if let SlotRef::Index(_) = t.lookup(1000 + k, now) {
                t.get(t.lookup(1000 + k, now))
                    .last_ns
                    .store(now, Ordering::Relaxed);
            }
        }
        t.get(a).last_ns.store(now, Ordering::Relaxed);
        assert_eq!(t.len(), 8);
        assert_eq!(t.lookup(7777, now), SlotRef::Overflow);
        assert!(t.overflowed.load(Ordering::Relaxed) > 0);
        // Two seconds later every key is idle: a new key reclaims a slot.
        assert!(matches!(t.lookup(7777, now + 3 * S), SlotRef::Index(_)));
    }
}
