//! Byte streams the proxy reads and writes: plain TCP or TLS over TCP, behind one enum.
//!
//! Owns: the two buffer idioms every other proxy module uses with monoio's owned-buffer IO:
//! [`Io::read_append`] (read into the spare capacity of a `Vec`, keeping what is there) and
//! [`Io::write_all`] / [`Io::write_range`] (write all or a sub-range of a buffer and get it back).
//!
//! Why an enum and not `dyn`: the set of stream kinds is closed, an enum dispatch is a
//! predictable branch, and monoio's IO traits use `async fn`, which is not object safe.
//!
//! Invariants: a buffer passed in is always handed back, also on error, so callers can keep
//! reusing one allocation per connection. A read of 0 bytes means the peer closed.

use std::io;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Smallest growth of a full read buffer before a read.
pub const READ_RESERVE_BYTES: usize = 4096;
/// A full read buffer doubles (a large body then moves in few, large reads) up to this size;
/// beyond it, it grows by this much per read.
pub const READ_GROW_BYTES_MAX: usize = 64 * 1024;

pub enum Io {
    Tcp(TcpStream),
    /// The raw fd is kept beside the stream: monoio-rustls does not expose the inner socket.
    TlsClient(
        Box<monoio_rustls::ClientTlsStream<TcpStream>>,
        std::os::fd::RawFd,
    ),
    /// A client connection accepted on a TLS listener (see `crate::tls::server`).
    TlsServer(
        Box<monoio_rustls::ServerTlsStream<crate::tls::replay::Replay>>,
        std::os::fd::RawFd,
    ),
}

impl Io {
    /// Read once, appending to `buf`. Returns the number of bytes read (0 = closed).
    pub async fn read_append(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.len() == buf.capacity() {
            let grow = buf
                .capacity()
                .clamp(READ_RESERVE_BYTES, READ_GROW_BYTES_MAX);
            buf.reserve(grow);
        }
        let len = buf.len();
        let slice = buf.slice_mut(len..);
        let (res, slice) = match self {
            Io::Tcp(s) => s.read(slice).await,
            Io::TlsClient(s, _) => s.read(slice).await,
            Io::TlsServer(s, _) => match s.read(slice).await {
                // A client that closes without TLS close_notify (most do) is a close, as on
                // plain TCP: HTTP/1.1 requests are always framed, so a truncated request is
                // still detected by the codec. (Upstream reads keep the error: a response may
                // be close-delimited, and a cut one must not pass for complete.)
                (Err(e), b) if e.kind() == io::ErrorKind::UnexpectedEof => (Ok(0), b),
                other => other,
            },
        };
        (res, slice.into_inner())
    }

    /// Write all of `buf`.
    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> (io::Result<()>, T) {
        let (res, buf) = match self {
            Io::Tcp(s) => s.write_all(buf).await,
            Io::TlsClient(s, _) => {
                let r = s.write_all(buf).await;
                // rustls buffers records: push them to the socket now, a stream chunk must
                // not wait for the next one.
                match r {
                    (Ok(n), b) => match s.flush().await {
                        Ok(()) => (Ok(n), b),
                        Err(e) => (Err(e), b),
                    },
                    other => other,
                }
            }
            Io::TlsServer(s, _) => match s.write_all(buf).await {
                (Ok(n), b) => match s.flush().await {
                    Ok(()) => (Ok(n), b),
                    Err(e) => (Err(e), b),
                },
                other => other,
            },
        };
        (res.map(|_| ()), buf)
    }

    /// Write `buf[start..end]` and hand `buf` back.
    pub async fn write_range(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (io::Result<()>, Vec<u8>) {
        if start >= end {
            return (Ok(()), buf);
        }
        let (res, slice) = self.write_all(buf.slice(start..end)).await;
        (res, slice.into_inner())
    }

    pub async fn shutdown(&mut self) {
        let _ = match self {
            Io::Tcp(s) => s.shutdown().await,
            Io::TlsClient(s, _) => s.shutdown().await,
            Io::TlsServer(s, _) => s.shutdown().await,
        };
    }

    /// Make the next close send RST instead of FIN (SO_LINGER 0): used when a response is cut
    /// short, so the peer cannot mistake the end for a complete close-delimited body.
    pub fn set_reset_on_close(&self) {
        use std::os::fd::AsRawFd;
        let fd = match self {
            Io::Tcp(s) => s.as_raw_fd(),
            Io::TlsClient(_, fd) | Io::TlsServer(_, fd) => *fd,
        };
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: fd is a live socket owned by self; setsockopt copies the struct.
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
}
