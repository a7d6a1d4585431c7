//! Byte-for-byte TCP pass-through between a redirected client and its destination.
//!
//! Owns: the bidirectional copy used for TLS that is not intercepted and for every protocol
//! that is not HTTP/1.x. Bytes are never looked at, changed, split differently on purpose or
//! held back: every read is written out at once.
//!
//! Invariants:
//! * Half-close is forwarded: a FIN from one side becomes a `shutdown(SHUT_WR)` towards the
//!   other, and the other direction keeps flowing until it ends too (request/response
//!   protocols that signal the end of a request with FIN keep working).
//! * A reset (or any read/write error) on one side resets the other (`SO_LINGER 0`), and both
//!   directions end: the peer sees a broken connection, never a clean end that did not happen.
//! * Idle timeout: when neither direction moved a byte for `idle` both sides are closed. One
//!   timer per connection, re-armed only when it fires (no timer per read).
//! * Buffers: one [`RELAY_BUFFER_BYTES`] buffer per direction, reused for every read.
//!
//! Why not splice(2): it would save a copy, but it needs a pipe pair per connection and
//! monoio 0.2.4 only offers it behind a feature the rest of sluice does not use; the relay
//! carries non-model traffic (databases, caches) where this copy is not the bottleneck.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::worker::LocalEvent;

/// Size of each direction's copy buffer, in bytes.
pub const RELAY_BUFFER_BYTES: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Closed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// One side reset or failed; the other was reset.
    Error,
}

#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Client → destination, including the sniffed prefix.
    pub bytes_in: u64,
    /// Destination → client.
    pub bytes_out: u64,
    pub end: RelayEnd,
}

/// Relay until both directions are closed, one fails, or nothing moves for `idle`.
/// `prefix` (bytes already read from the client) is written to `upstream` first; with
/// `client_eof` the client already half-closed.
pub async fn relay(
    client: TcpStream,
    mut upstream: TcpStream,
    prefix: Vec<u8>,
    client_eof: bool,
    idle: Duration,
) -> RelayStats {
    let cfd = client.as_raw_fd();
    let ufd = upstream.as_raw_fd();
    let bytes_in = Cell::new(0u64);
    let bytes_out = Cell::new(0u64);
    let mut stats = RelayStats {
        bytes_in: 0,
        bytes_out: 0,
        end: RelayEnd::Closed,
    };
    if !prefix.is_empty() {
        let n = prefix.len() as u64;
        let (res, _) = upstream.write_all(prefix).await;
        if res.is_err() {
            reset_on_close(cfd);
            stats.end = RelayEnd::Error;
            return stats;
        }
        bytes_in.set(n);
    }
    let last = Cell::new(monoio::time::Instant::now());
    let failed = LocalEvent::default();
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let end = {
        let up = async {
            if client_eof {
                let _ = uw.shutdown().await;
                return Ok(());
            }
            let r = copy(&mut cr, &mut uw, &last, &bytes_in).await;
            if r.is_err() {
                reset_on_close(ufd);
                failed.fire();
            }
            r
        };
        let down = async {
            let r = copy(&mut ur, &mut cw, &last, &bytes_out).await;
            if r.is_err() {
                reset_on_close(cfd);
                failed.fire();
            }
            r
        };
        monoio::select! {
            (a, b) = async { monoio::join!(up, down) } => {
                if a.is_ok() && b.is_ok() { RelayEnd::Closed } else { RelayEnd::Error }
            },
            _ = failed.wait() => RelayEnd::Error,
            _ = idle_watch(&last, idle) => RelayEnd::IdleTimeout,
        }
    };
    if end == RelayEnd::Error {
        // A dropped write half shuts its socket down (FIN) before the close: put the halves
        // back together so the close is the reset set up above, not a clean end.
        drop(cr.reunite(cw));
        drop(ur.reunite(uw));
    }
    stats.bytes_in = bytes_in.get();
    stats.bytes_out = bytes_out.get();
    stats.end = end;
    stats
}

/// Copy `r` into `w` until EOF (then half-close `w`) or an error.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    r: &mut R,
    w: &mut W,
    last: &Cell<monoio::time::Instant>,
    count: &Cell<u64>,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(RELAY_BUFFER_BYTES);
    loop {
        buf.clear();
        let (res, b) = r.read(buf).await;
        buf = b;
        let n = res?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        last.set(monoio::time::Instant::now());
        let (res, b) = w.write_all(buf).await;
        buf = b;
        res?;
        count.set(count.get() + n as u64);
    }
}

/// Resolves once nothing moved for `idle`.
async fn idle_watch(last: &Cell<monoio::time::Instant>, idle: Duration) {
    loop {
        let due = last.get() + idle;
        if monoio::time::Instant::now() >= due {
            return;
        }
        crate::proxy::timer::sleep_until(due).await;
    }
}

/// Make the next close of `fd` send RST (SO_LINGER 0).
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is a live socket owned by the caller's stream; setsockopt copies the struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::net::TcpListener;

    use crate::testing::rt;

    /// client <-> [relay] <-> server, over loopback. Returns (client side, server side, relay).
    async fn pair(
        prefix: Vec<u8>,
        idle: Duration,
    ) -> (TcpStream, TcpStream, monoio::task::JoinHandle<RelayStats>) {
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let back = TcpListener::bind("127.0.0.1:0").unwrap();
        let fa = front.local_addr().unwrap();
        let ba = back.local_addr().unwrap();
        let client = TcpStream::connect_addr(fa).await.unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let up = TcpStream::connect_addr(ba).await.unwrap();
        let (server, _) = back.accept().await.unwrap();
        let h = monoio::spawn(relay(accepted, up, prefix, false, idle));
        (client, server, h)
    }

    #[test]
    fn bytes_pass_both_ways_with_half_close() {
        rt().block_on(async {
            let (mut c, mut s, h) = pair(b"pre".to_vec(), Duration::from_secs(5)).await;
            let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let (r, _) = c.write_all(data.clone()).await;
            r.unwrap();
            c.shutdown().await.unwrap();
            // The server reads everything up to EOF, then answers and closes.
            let mut got = Vec::new();
            loop {
                let (r, b) = s.read(Vec::with_capacity(65536)).await;
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            assert_eq!(&got[..3], b"pre");
            assert_eq!(&got[3..], &data[..]);
            let (r, _) = s.write_all(b"answer after half-close".to_vec()).await;
            r.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            loop {
                let (r, b) = c.read(Vec::with_capacity(1024)).await;
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&b[..n]);
            }
            assert_eq!(back, b"answer after half-close");
            let st = h.await;
            assert_eq!(st.end, RelayEnd::Closed);
            assert_eq!(st.bytes_in, data.len() as u64 + 3);
            assert_eq!(st.bytes_out, 23);
        });
    }

    #[test]
    fn idle_connections_are_closed() {
        rt().block_on(async {
            let (mut c, _s, h) = pair(Vec::new(), Duration::from_millis(100)).await;
            let st = h.await;
            assert_eq!(st.end, RelayEnd::IdleTimeout);
            let (r, _) = c.read(Vec::with_capacity(16)).await;
            assert!(matches!(r, Ok(0) | Err(_)));
        });
    }

    #[test]
    fn a_reset_upstream_resets_the_client() {
        rt().block_on(async {
            let front = TcpListener::bind("127.0.0.1:0").unwrap();
            let back = TcpListener::bind("127.0.0.1:0").unwrap();
            // A plain blocking client: read only after the relay ended, so it cannot block it.
            let mut c = std::net::TcpStream::connect(front.local_addr().unwrap()).unwrap();
            let (accepted, _) = front.accept().await.unwrap();
            let up = TcpStream::connect_addr(back.local_addr().unwrap())
                .await
                .unwrap();
            let (s, _) = back.accept().await.unwrap();
            let h = monoio::spawn(relay(
                accepted,
                up,
                Vec::new(),
                false,
                Duration::from_secs(5),
            ));
            reset_on_close(s.as_raw_fd());
            drop(s);
            let st = h.await;
            assert_eq!(st.end, RelayEnd::Error);
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let r = c.read(&mut [0u8; 16]);
            assert_eq!(
                r.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionReset),
                "the client must see a reset"
            );
        });
    }
}
