//! Certificate rotation: one background thread re-reads certificate files when they change.
//!
//! Owns: the registry of things built from files ([`Reloadable`]: a listener's server config,
//! an upstream's client certificate, an interception CA) and the `sluice-tls-watch` thread
//! that polls their files' (device, inode, size, mtime) every [`TLS_WATCH_INTERVAL_MS`] and
//! calls [`Reloadable::reload`] when one changed. A reload builds the new state completely and
//! swaps an `ArcSwap` only on success, so:
//! * new handshakes use the new certificate; connections and streams already open are
//!   untouched (their rustls session keeps the old one);
//! * a half-written rotation (certificate written, key not yet) fails, is logged and counted,
//!   and the old certificate stays in use until the next change completes it.
//!
//! Why polling and not inotify: Kubernetes rotates Secret volumes by swapping a `..data`
//! symlink, which inotify on the files themselves misses; `stat` through the symlink sees a
//! new inode. Polling a handful of files once a second costs nothing.
//!
//! The registry holds `Weak` references: a snapshot replaced by a config reload drops its TLS
//! state and the watcher forgets it on its next pass. Workers never touch this module.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// How often watched certificate files are checked for changes.
pub const TLS_WATCH_INTERVAL_MS: u64 = 1_000;

/// Something built from files that can rebuild itself.
pub trait Reloadable: Send + Sync {
    /// What to name in logs (`listener inbound`, `upstream mesh`).
    fn describe(&self) -> String;
    fn files(&self) -> Vec<PathBuf>;
    /// Rebuild from the files and swap the result in; on error keep the current state.
    fn reload(&self) -> Result<(), String>;
}

/// What identifies one version of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(p: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

struct Watched {
    item: Weak<dyn Reloadable>,
    files: Vec<PathBuf>,
    stamps: Vec<Option<Stamp>>,
}

fn registry() -> &'static Mutex<Vec<Watched>> {
    static R: OnceLock<Mutex<Vec<Watched>>> = OnceLock::new();
    R.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("sluice-tls-watch".into())
            .spawn(|| {
                crate::background::lower_priority();
                loop {
                    std::thread::sleep(Duration::from_millis(TLS_WATCH_INTERVAL_MS));
                    poll_once();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the certificate watcher; certificates will not rotate");
        }
        Mutex::new(Vec::new())
    })
}

/// Start watching `item`'s files (their current versions are the baseline).
pub fn watch(item: &Arc<dyn Reloadable>) {
    let files = item.files();
    let stamps = files.iter().map(|f| stamp(f)).collect();
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.push(Watched {
        item: Arc::downgrade(item),
        files,
        stamps,
    });
}

/// One pass: reload whatever changed, forget what was dropped. Public for tests.
pub fn poll_once() {
    let mut due: Vec<Arc<dyn Reloadable>> = Vec::new();
    {
        let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
        r.retain_mut(|w| {
            let Some(item) = w.item.upgrade() else {
                return false;
            };
            let now: Vec<Option<Stamp>> = w.files.iter().map(|f| stamp(f)).collect();
            if now != w.stamps {
                w.stamps = now;
                due.push(item);
            }
            true
        });
    }
    // Reload outside the lock: building a config parses files and may mint nothing slow, but
    // nothing else needs to wait for it.
    for item in due {
        match item.reload() {
            Ok(()) => {
                super::stats::reloaded(true);
                tracing::info!(what = %item.describe(), "TLS certificate reloaded");
            }
            Err(e) => {
                super::stats::reloaded(false);
                tracing::warn!(what = %item.describe(), error = %e, "TLS certificate reload failed; keeping the previous one");
            }
        }
    }
}
