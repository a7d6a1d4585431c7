//! A TCP stream that first replays bytes already read from it.
//!
//! Owns: [`Replay`], the socket under every accepted TLS stream. Two producers of "bytes read
//! too early" exist: protocol sniffing (the transparent listener reads the ClientHello to see
//! that it is TLS, then hands the connection over) and the handshake itself (the read that
//! completes it may carry the first application records). Both go into the prefix, and the
//! TLS layer reads them before the socket.
//!
//! Invariant: bytes come out in exactly the order they arrived; the prefix is freed once
//! drained, so a long-lived connection holds no extra memory. Cost on the hot path: one length
//! comparison per read.

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;

pub struct Replay {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl Replay {
    pub fn new(inner: TcpStream, prefix: Vec<u8>) -> Self {
        Replay {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// Put `bytes` back in front of whatever is still to be replayed.
    pub fn unread(&mut self, mut bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        bytes.extend_from_slice(&self.prefix[self.pos..]);
        self.prefix = bytes;
        self.pos = 0;
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    /// Copy up to `cap` replayed bytes to `dst`. Returns the count.
    ///
    /// # Safety
    /// `dst` must be valid for `cap` bytes of writes.
    unsafe fn take(&mut self, dst: *mut u8, cap: usize) -> usize {
        let n = cap.min(self.prefix.len() - self.pos);
        std::ptr::copy_nonoverlapping(self.prefix.as_ptr().add(self.pos), dst, n);
        self.pos += n;
        if self.pos == self.prefix.len() {
            self.prefix = Vec::new();
            self.pos = 0;
        }
        n
    }
}

impl AsyncReadRent for Replay {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.pos < self.prefix.len() {
            // SAFETY: write_ptr is valid for bytes_total bytes (IoBufMut contract).
            let n = unsafe { self.take(buf.write_ptr(), buf.bytes_total()) };
            unsafe { buf.set_init(n) };
            return (Ok(n), buf);
        }
        self.inner.read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.pos < self.prefix.len() {
            // SAFETY: the raw buffer points into `buf`, which outlives this synchronous copy.
            let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
                Some(mut raw) => unsafe {
                    let n = self.take(raw.write_ptr(), raw.bytes_total());
                    raw.set_init(n);
                    n
                },
                None => 0,
            };
            unsafe { buf.set_init(n) };
            return (Ok(n), buf);
        }
        self.inner.readv(buf).await
    }
}

impl AsyncWriteRent for Replay {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.writev(buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}
