//! Protocol sniffing: what a redirected connection speaks, from its first bytes.
//!
//! Owns: [`classify`] (pure: HTTP/1.x, TLS, or anything else) and [`sniff`] (the bounded wait
//! for those bytes on an accepted socket).
//!
//! Invariants:
//! * No byte is lost. The wait is on read *readiness* (a poll, cancel-safe on io_uring and
//!   epoll alike), and bytes are taken with a non-blocking `recv` only once they are there, so
//!   the timeout can fire at any moment without dropping data in flight (monoio loses the
//!   data of a cancelled read). What was taken is handed on as a prefix: replayed to the
//!   upstream for pass-through, or the first bytes of the HTTP read buffer.
//! * Bounded: at most [`SNIFF_HTTP_BYTES_MAX`] bytes decide HTTP; a TLS ClientHello is read up
//!   to [`SNIFF_TLS_BYTES_MAX`]; the whole sniff ends by the listener's `sniff_timeout_ms`.
//! * A client that sends nothing before the timeout (a server-first protocol: SMTP, MySQL) is
//!   passed through as TCP, so it still works, only later by the timeout.
//!
//! Why not a `MSG_PEEK` sniff: peeking cannot wait for *more* bytes without spinning (the
//! socket stays readable); taking the bytes and replaying them is as cheap and always ends.

use std::io;
use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

use super::clienthello::{self, ClientHello, Parsed};

/// Bytes enough to tell an HTTP/1.x request line by its method and the space after it
/// (`OPTIONS ` and `CONNECT ` are the longest).
pub const SNIFF_HTTP_BYTES_MAX: usize = 8;
/// Largest ClientHello flight buffered while looking for the server name: the handshake
/// message bound plus the headers of the records it may be split into.
pub const SNIFF_TLS_BYTES_MAX: usize = clienthello::CLIENT_HELLO_BYTES_MAX + 1024;
/// Initial capacity of the sniff buffer (also the first read buffer of an HTTP connection).
pub const SNIFF_READ_BYTES: usize = 4 * 1024;

/// HTTP/1.x request methods recognised by the sniffer. `PRI` (the HTTP/2 prior-knowledge
/// preface) is deliberately absent: sluice does not speak HTTP/2, so it is passed through.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
    b"CONNECT ",
    b"TRACE ",
];

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Http,
    Tls,
    Tcp,
    /// Not decided yet: more bytes are needed.
    NeedMore,
}

/// Classify the first bytes of a connection.
pub fn classify(b: &[u8]) -> Class {
    let Some(&first) = b.first() else {
        return Class::NeedMore;
    };
    if first == 0x16 {
        // A TLS handshake record: 0x16 0x03 <minor>.
        return match b.get(1) {
            None => Class::NeedMore,
            Some(3) => Class::Tls,
            Some(_) => Class::Tcp,
        };
    }
    let mut maybe = false;
    for m in METHODS {
        if b.starts_with(m) {
            return Class::Http;
        }
        if m.starts_with(b) {
            maybe = true;
        }
    }
    if maybe {
        Class::NeedMore
    } else {
        Class::Tcp
    }
}

/// The protocol a connection was found to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Tls,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The result of sniffing one connection.
#[derive(Debug)]
pub struct Sniffed {
    pub protocol: Protocol,
    /// The bytes taken from the socket, to be handed on unchanged.
    pub prefix: Vec<u8>,
    /// For TLS: the ClientHello, when it was complete and well-formed.
    pub hello: Option<ClientHello>,
    /// The client half-closed (sent FIN) during the sniff.
    pub client_eof: bool,
    /// The sniff ended by the timeout (nothing or not enough arrived).
    pub timed_out: bool,
}

/// Wait (at most until `deadline`) for the first bytes of `stream` and classify them.
/// `Ok(None)`: the client closed without sending anything.
pub async fn sniff(
    stream: &TcpStream,
    deadline: monoio::time::Instant,
) -> io::Result<Option<Sniffed>> {
    let mut buf: Vec<u8> = Vec::with_capacity(SNIFF_READ_BYTES);
    let mut eof = false;
    let mut timed_out = false;
    loop {
        let class = classify(&buf);
        let decided = match class {
            Class::Http => Some(Protocol::Http),
            Class::Tcp => Some(Protocol::Tcp),
            Class::Tls => match clienthello::parse(&buf) {
                Ok(Parsed::Complete(h)) => {
                    return Ok(Some(Sniffed {
                        protocol: Protocol::Tls,
                        prefix: buf,
                        hello: Some(h),
                        client_eof: eof,
                        timed_out,
                    }))
                }
                Ok(Parsed::Incomplete) if buf.len() < SNIFF_TLS_BYTES_MAX && !eof && !timed_out => {
                    None
                }
                // Malformed, too large, cut short or too slow: still TLS to the destination,
                // which will judge it; we just have no name for it.
                Ok(Parsed::Incomplete) | Err(_) => Some(Protocol::Tls),
            },
            Class::NeedMore if eof || timed_out => {
                if buf.is_empty() && eof {
                    return Ok(None);
                }
                Some(Protocol::Tcp)
            }
            Class::NeedMore => None,
        };
        if let Some(protocol) = decided {
            return Ok(Some(Sniffed {
                protocol,
                prefix: buf,
                hello: None,
                client_eof: eof,
                timed_out,
            }));
        }
        match fill(stream, &mut buf, deadline).await? {
            Fill::Data => {}
            Fill::Eof => eof = true,
            Fill::Timeout => timed_out = true,
        }
    }
}

/// What [`fill`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// More bytes were appended.
    Data,
    /// The client half-closed.
    Eof,
    /// The deadline passed; nothing was lost.
    Timeout,
}

/// Wait (at most until `deadline`) for more bytes and append them to `buf`. Cancel-safe in
/// the same way as [`sniff`].
pub async fn fill(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    deadline: monoio::time::Instant,
) -> io::Result<Fill> {
    loop {
        match crate::proxy::timer::timeout_at(deadline, stream.readable(false)).await {
            Err(_) => return Ok(Fill::Timeout),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
        }
        match recv_nonblocking(stream, buf) {
            Ok(0) => return Ok(Fill::Eof),
            Ok(_) => return Ok(Fill::Data),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether an HTTP/1.x request head asks to switch protocols (`Upgrade`: WebSocket, h2c).
/// The exchange does not switch protocols, so such a connection is passed through whole.
pub fn wants_upgrade(head: &crate::http1::RequestHead) -> bool {
    head.header("upgrade").is_some()
}

/// One non-blocking `recv` into the spare capacity of `buf` (doubled when full; the caller
/// stops reading at [`SNIFF_TLS_BYTES_MAX`], so it stays below twice that).
fn recv_nonblocking(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity().max(SNIFF_READ_BYTES));
    }
    let spare = buf.capacity() - buf.len();
    // SAFETY: writes at most `spare` bytes into the vector's allocated, unused tail; the
    // length is only extended by what the kernel reports written.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().add(buf.len()) as *mut libc::c_void,
            spare,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n <= spare` bytes after the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http_tls_and_the_rest() {
        assert_eq!(classify(b""), Class::NeedMore);
        assert_eq!(classify(b"G"), Class::NeedMore);
        assert_eq!(classify(b"GET"), Class::NeedMore);
        assert_eq!(classify(b"GET "), Class::Http);
        assert_eq!(classify(b"POST /v1/chat HTTP/1.1\r\n"), Class::Http);
        assert_eq!(classify(b"OPTIONS"), Class::NeedMore);
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Class::Http);
        assert_eq!(classify(b"GETX"), Class::Tcp);
        assert_eq!(classify(b"get / HTTP/1.1"), Class::Tcp);
        // HTTP/2 prior knowledge is not HTTP/1.x.
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Class::Tcp);
        assert_eq!(classify(b"P"), Class::NeedMore);
        assert_eq!(classify(&[0x16]), Class::NeedMore);
        assert_eq!(classify(&[0x16, 3, 1, 2, 0]), Class::Tls);
        assert_eq!(classify(&[0x16, 9]), Class::Tcp);
        // RESP (redis), binary, SSH.
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Class::Tcp);
        assert_eq!(classify(&[0, 1, 2, 3]), Class::Tcp);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6\r\n"), Class::Tcp);
    }

    use crate::testing::rt;

    /// Accept one connection whose client (on its own thread) runs `client`; sniff it.
    fn sniff_with<F: FnOnce(std::net::TcpStream) + Send + 'static>(
        timeout_ms: u64,
        client: F,
    ) -> (Option<Sniffed>, TcpStream, std::thread::JoinHandle<()>) {
        rt().block_on(async move {
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            let h = std::thread::spawn(move || client(std::net::TcpStream::connect(a).unwrap()));
            let (s, _) = l.accept().await.unwrap();
            let deadline =
                monoio::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
            let r = sniff(&s, deadline).await.unwrap();
            (r, s, h)
        })
    }

    #[test]
    fn a_silent_client_is_tcp_after_the_timeout_and_loses_nothing() {
        use monoio::io::AsyncReadRent;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        rt().block_on(async move {
            let l = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            let h = std::thread::spawn(move || {
                use std::io::Write;
                let mut c = std::net::TcpStream::connect(a).unwrap();
                rx.recv().unwrap();
                c.write_all(b"late bytes").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
            });
            let (mut s, _) = l.accept().await.unwrap();
            let deadline = monoio::time::Instant::now() + std::time::Duration::from_millis(100);
            let r = sniff(&s, deadline).await.unwrap().unwrap();
            assert_eq!(r.protocol, Protocol::Tcp);
            assert!(r.timed_out && r.prefix.is_empty());
            tx.send(()).unwrap();
            // What arrives after the timeout is still on the socket.
            let (n, b) = s.read(Vec::with_capacity(64)).await;
            assert_eq!(&b[..n.unwrap()], b"late bytes");
            h.join().unwrap();
        });
    }

    #[test]
    fn http_split_over_writes_and_tls_hello_split_are_recognised() {
        let (r, _s, h) = sniff_with(2000, |mut c| {
            use std::io::Write;
            c.set_nodelay(true).unwrap();
            c.write_all(b"PO").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            c.write_all(b"ST /v1/chat HTTP/1.1\r\n").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
        let r = r.unwrap();
        assert_eq!(r.protocol, Protocol::Http);
        assert!(r.prefix.starts_with(b"PO"));
        assert!(!r.timed_out);
        h.join().unwrap();

        let hello = crate::transparent::clienthello::tests_support::hello("split.test");
        let (r, _s, h) = sniff_with(2000, move |mut c| {
            use std::io::Write;
            c.set_nodelay(true).unwrap();
            let (a, b) = hello.split_at(hello.len() / 2);
            c.write_all(a).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            c.write_all(b).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
        let r = r.unwrap();
        assert_eq!(r.protocol, Protocol::Tls);
        assert_eq!(r.hello.unwrap().server_name.as_deref(), Some("split.test"));
        h.join().unwrap();
    }

    #[test]
    fn a_client_that_closes_at_once_is_none_and_one_that_half_closes_is_kept() {
        let (r, _s, h) = sniff_with(2000, drop);
        assert!(r.is_none());
        h.join().unwrap();
        let (r, _s, h) = sniff_with(2000, |mut c| {
            use std::io::Write;
            c.write_all(b"G").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        });
        let r = r.unwrap();
        assert_eq!(r.protocol, Protocol::Tcp);
        assert!(r.client_eof);
        assert_eq!(r.prefix, b"G");
        h.join().unwrap();
    }

    #[test]
    fn every_method_prefix_waits_and_the_bound_suffices() {
        for m in METHODS {
            assert!(m.len() <= SNIFF_HTTP_BYTES_MAX);
            for k in 1..m.len() {
                assert_eq!(classify(&m[..k]), Class::NeedMore, "{:?}", &m[..k]);
            }
            assert_eq!(classify(m), Class::Http);
        }
    }
}
