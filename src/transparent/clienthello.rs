//! A TLS ClientHello reader: the server name (SNI) and ALPN protocols of the first flight of a
//! TLS connection, without terminating it.
//!
//! Owns: parsing the bytes a client sends first on a TLS connection (RFC 8446 §4.1.2,
//! RFC 5246 §7.4.1.2, SNI from RFC 6066 §3, ALPN from RFC 7301 §3.1). Pure: no IO, no
//! allocation unless the handshake message is fragmented over several records (then its
//! fragments are joined once into a bounded buffer) and for the results themselves.
//!
//! Invariants:
//! * Never panics and never reads out of bounds, whatever the input (fuzzed: `fuzz/`).
//! * Split-stable: for any prefix of a complete ClientHello the answer is
//!   [`Parsed::Incomplete`], and the whole gives the same result however it was split. The
//!   caller feeds the bytes read so far; it never has to remember a parser state.
//! * Bounded: a handshake message longer than [`CLIENT_HELLO_BYTES_MAX`] is an error, so the
//!   bytes a sniffer buffers per connection are bounded.
//!
//! Why hand-written and not rustls: rustls parses a ClientHello only inside a server
//! connection, which would need a certificate and would own the stream. Here the bytes must
//! reach the original destination untouched; we only look.

use crate::error::{Classify, Side};

/// Largest ClientHello handshake message accepted, in bytes. Real ones are 200 B to ~2 KiB
/// (post-quantum key shares); 16 KiB leaves room for large session tickets and PSKs.
pub const CLIENT_HELLO_BYTES_MAX: usize = 16 * 1024;
/// Largest TLS record payload (RFC 8446 §5.1: 2^14 bytes of plaintext).
pub const TLS_RECORD_PAYLOAD_MAX: usize = 16 * 1024;
/// Longest server name kept (a DNS name is at most 253 characters).
pub const SERVER_NAME_BYTES_MAX: usize = 253;
/// ALPN protocols kept from one ClientHello; the rest are ignored.
pub const ALPN_PROTOCOLS_MAX: usize = 8;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// What the first flight of a TLS connection said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, lower-cased; `None` without one.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order (at most [`ALPN_PROTOCOLS_MAX`]).
    pub alpn: Vec<Vec<u8>>,
    /// Offset just past the ClientHello's last byte (record headers included).
    pub record_bytes: usize,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete ClientHello.
    Complete(ClientHello),
    /// A valid prefix: more bytes are needed.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientHelloError {
    #[error("not a TLS handshake record")]
    NotHandshake,
    #[error("unsupported TLS record version {0:#06x}")]
    Version(u16),
    #[error("TLS record longer than 2^14 bytes")]
    RecordTooLong,
    #[error("first handshake message is not a ClientHello (type {0})")]
    NotClientHello(u8),
    #[error("ClientHello longer than {CLIENT_HELLO_BYTES_MAX} bytes")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

impl Classify for ClientHelloError {
    fn side(&self) -> Side {
        Side::Downstream
    }
    fn status(&self) -> u16 {
        400
    }
    fn code(&self) -> &'static str {
        match self {
            ClientHelloError::NotHandshake => "tls_not_handshake",
            ClientHelloError::Version(_) => "tls_bad_version",
            ClientHelloError::RecordTooLong => "tls_record_too_long",
            ClientHelloError::NotClientHello(_) => "tls_not_client_hello",
            ClientHelloError::TooLarge => "tls_client_hello_too_large",
            ClientHelloError::Malformed(_) => "tls_client_hello_malformed",
        }
    }
}

/// Parse the ClientHello at the start of `buf` (the bytes received so far).
pub fn parse(buf: &[u8]) -> Result<Parsed, ClientHelloError> {
    // Walk the records: the handshake message may span several.
    let mut pos = 0usize;
    let mut msg_len: Option<usize> = None;
    // Handshake bytes seen so far, borrowed while they sit in one record, copied once a
    // second record is needed.
    let mut first: &[u8] = &[];
    let mut joined: Option<Vec<u8>> = None;
    loop {
        let Some(hdr) = buf.get(pos..pos + 5) else {
            check_partial_header(&buf[pos.min(buf.len())..])?;
            return Ok(Parsed::Incomplete);
        };
        if hdr[0] != RECORD_HANDSHAKE {
            return Err(ClientHelloError::NotHandshake);
        }
        let version = u16::from_be_bytes([hdr[1], hdr[2]]);
        if hdr[1] != 3 || hdr[2] > 4 {
            return Err(ClientHelloError::Version(version));
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len > TLS_RECORD_PAYLOAD_MAX {
            return Err(ClientHelloError::RecordTooLong);
        }
        if len == 0 {
            return Err(ClientHelloError::Malformed("empty handshake record"));
        }
        let avail = &buf[pos + 5..];
        let payload = &avail[..len.min(avail.len())];
        // Accumulate (only the part needed for the message).
        if joined.is_none() && pos == 0 {
            first = payload;
        } else {
            let j = joined.get_or_insert_with(|| first.to_vec());
            j.extend_from_slice(payload);
        }
        let have: &[u8] = joined.as_deref().unwrap_or(first);
        if msg_len.is_none() && have.len() >= 4 {
            if have[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(ClientHelloError::NotClientHello(have[0]));
            }
            let n = usize::from(have[1]) << 16 | usize::from(have[2]) << 8 | usize::from(have[3]);
            if n > CLIENT_HELLO_BYTES_MAX {
                return Err(ClientHelloError::TooLarge);
            }
            msg_len = Some(n);
        } else if msg_len.is_none() && !have.is_empty() && have[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(ClientHelloError::NotClientHello(have[0]));
        }
        if let Some(n) = msg_len {
            if have.len() >= 4 + n {
                let hello = parse_body(&have[4..4 + n])?;
                // Handshake bytes that came before this record, so where the message ends.
                let before = have.len() - payload.len();
                let record_bytes = pos + 5 + (4 + n - before);
                return Ok(Parsed::Complete(ClientHello {
                    record_bytes,
                    ..hello
                }));
            }
        }
        if payload.len() < len {
            return Ok(Parsed::Incomplete);
        }
        pos += 5 + len;
    }
}

/// The first bytes of a record header, checked as far as they go (so a wrong first byte is
/// an error at once, not after five bytes).
fn check_partial_header(h: &[u8]) -> Result<(), ClientHelloError> {
    if let Some(&t) = h.first() {
        if t != RECORD_HANDSHAKE {
            return Err(ClientHelloError::NotHandshake);
        }
    }
    if let Some(&major) = h.get(1) {
        if major != 3 {
            return Err(ClientHelloError::Version(u16::from(major) << 8));
        }
    }
    Ok(())
}

/// A bounds-checked cursor over a byte slice.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        if self.b.len() < n {
            return Err(ClientHelloError::Malformed(what));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ClientHelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ClientHelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], ClientHelloError> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
    fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
}

fn parse_body(body: &[u8]) -> Result<ClientHello, ClientHelloError> {
    let mut r = Reader { b: body };
    let version = r.u16("legacy_version")?;
    if version >> 8 != 3 {
        return Err(ClientHelloError::Version(version));
    }
    r.take(32, "random")?;
    let sid = r.vec8("session_id")?;
    if sid.len() > 32 {
        return Err(ClientHelloError::Malformed(
            "session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return Err(ClientHelloError::Malformed("cipher_suites"));
    }
    let comp = r.vec8("compression_methods")?;
    if comp.is_empty() {
        return Err(ClientHelloError::Malformed("compression_methods"));
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Ok(hello); // no extensions (old clients): no SNI
    }
    let mut exts = Reader {
        b: r.vec16("extensions")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after extensions"));
    }
    let mut seen_sni = false;
    let mut seen_alpn = false;
    while !exts.is_empty() {
        let ty = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        match ty {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err(ClientHelloError::Malformed("duplicate server_name"));
                }
                seen_sni = true;
                hello.server_name = parse_sni(data)?;
            }
            EXT_ALPN => {
                if seen_alpn {
                    return Err(ClientHelloError::Malformed("duplicate ALPN"));
                }
                seen_alpn = true;
                hello.alpn = parse_alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    if data.is_empty() {
        // A server's echo form; a client may send it empty too. No name.
        return Ok(None);
    }
    let mut r = Reader { b: data };
    let mut list = Reader {
        b: r.vec16("server_name_list")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after server_name_list"));
    }
    let mut name = None;
    while !list.is_empty() {
        let ty = list.u8("server name type")?;
        let n = list.vec16("server name")?;
        if ty != SNI_HOST_NAME || name.is_some() {
            continue;
        }
        if n.is_empty() || n.len() > SERVER_NAME_BYTES_MAX {
            return Err(ClientHelloError::Malformed("server name length"));
        }
        if !n
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(ClientHelloError::Malformed("server name characters"));
        }
        let s: String = n.iter().map(|&b| b.to_ascii_lowercase() as char).collect();
        name = Some(s.trim_end_matches('.').to_string());
    }
    Ok(name)
}

fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, ClientHelloError> {
    let mut r = Reader { b: data };
    let mut list = Reader {
        b: r.vec16("ALPN list")?,
    };
    if !r.is_empty() {
        return Err(ClientHelloError::Malformed("bytes after ALPN list"));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        let p = list.vec8("ALPN protocol")?;
        if p.is_empty() {
            return Err(ClientHelloError::Malformed("empty ALPN protocol"));
        }
        if out.len() < ALPN_PROTOCOLS_MAX {
            out.push(p.to_vec());
        }
    }
    Ok(out)
}

/// Invariants shared by the fuzz target (`fuzz/fuzz_targets/tls_client_hello.rs`) and the
/// unit tests: no panic; every prefix of the input gives `Incomplete` or the whole input's
/// own answer (an error or the same ClientHello), never a different one.
pub mod fuzzing {
    use super::*;

    pub fn fuzz_client_hello(data: &[u8]) {
        let whole = parse(data);
        if let Ok(Parsed::Complete(h)) = &whole {
            assert!(h.record_bytes <= data.len());
            if let Some(n) = &h.server_name {
                assert!(n.len() <= SERVER_NAME_BYTES_MAX);
            }
            assert!(h.alpn.len() <= ALPN_PROTOCOLS_MAX);
        }
        // Bounded number of prefixes so a long input stays fast.
        let step = (data.len() / 64).max(1);
        let mut k = 0;
        while k < data.len() {
            let p = parse(&data[..k]);
            match (&p, &whole) {
                (Ok(Parsed::Incomplete), _) => {}
                (a, b) if a == b => {}
                (Ok(Parsed::Complete(a)), Ok(Parsed::Complete(b))) => {
                    // The hello ended before the end of the input: same message.
                    assert_eq!(a, b, "prefix {k} parsed differently");
                }
                (Err(_), Err(_)) => {}
                (a, b) => panic!("prefix {k}: {a:?} but whole input: {b:?}"),
            }
            k += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it.
    fn rustls_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(cfg), sn).unwrap();
        let mut out = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        out
    }

    /// A minimal hand-built ClientHello with the given extensions, in one record.
    fn hello_with(exts: &[u8]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni_ext(name: &[u8]) -> Vec<u8> {
        let mut list = vec![0];
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        let mut e = vec![0, 0];
        e.extend_from_slice(&(data.len() as u16).to_be_bytes());
        e.extend_from_slice(&data);
        e
    }

    #[test]
    fn reads_sni_and_alpn_from_a_rustls_hello() {
        let b = rustls_hello("API.Example.com", &[b"h2", b"http/1.1"]);
        match parse(&b).unwrap() {
            Parsed::Complete(h) => {
                assert_eq!(h.server_name.as_deref(), Some("api.example.com"));
                assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
                assert_eq!(h.record_bytes, b.len());
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn every_split_point_is_incomplete_then_the_same_answer() {
        let b = rustls_hello("model.test", &[b"http/1.1"]);
        let whole = parse(&b).unwrap();
        assert!(matches!(whole, Parsed::Complete(_)));
        for k in 0..b.len() {
            assert_eq!(parse(&b[..k]).unwrap(), Parsed::Incomplete, "prefix {k}");
        }
        // Trailing bytes (the client's next flight) change nothing.
        let mut more = b.clone();
        more.extend_from_slice(&[0x17, 3, 3, 0, 1, 0]);
        assert_eq!(parse(&more).unwrap(), whole);
        fuzzing::fuzz_client_hello(&b);
        fuzzing::fuzz_client_hello(&more);
    }

    #[test]
    fn a_hello_fragmented_over_records_is_joined() {
        let one = rustls_hello("split.example", &[]);
        let hs = &one[5..];
        // Re-frame the handshake message as records of 7 bytes each.
        let mut b = Vec::new();
        for c in hs.chunks(7) {
            b.extend_from_slice(&[0x16, 3, 1]);
            b.extend_from_slice(&(c.len() as u16).to_be_bytes());
            b.extend_from_slice(c);
        }
        match parse(&b).unwrap() {
            Parsed::Complete(h) => {
                assert_eq!(h.server_name.as_deref(), Some("split.example"));
                assert_eq!(h.record_bytes, b.len());
            }
            p => panic!("{p:?}"),
        }
        for k in 0..b.len() {
            assert_eq!(parse(&b[..k]).unwrap(), Parsed::Incomplete, "prefix {k}");
        }
    }

    #[test]
    fn no_extensions_and_no_sni() {
        let b = hello_with(&[]);
        // Without the extensions block at all.
        let mut old = b.clone();
        old.truncate(old.len() - 2);
        old[4] -= 2;
        old[8] -= 2;
        assert_eq!(
            parse(&old).unwrap(),
            Parsed::Complete(ClientHello {
                record_bytes: old.len(),
                ..Default::default()
            })
        );
        match parse(&b).unwrap() {
            Parsed::Complete(h) => assert_eq!(h.server_name, None),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn rejects_what_is_not_a_client_hello() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(ClientHelloError::NotHandshake)
        );
        assert_eq!(parse(&[0x16, 2]), Err(ClientHelloError::Version(0x200)));
        assert_eq!(parse(&[0x16]), Ok(Parsed::Incomplete));
        assert_eq!(
            parse(&[0x16, 3, 1, 0x40, 1]),
            Err(ClientHelloError::RecordTooLong)
        );
        // ServerHello (type 2).
        assert_eq!(
            parse(&[0x16, 3, 3, 0, 4, 2, 0, 0, 0]),
            Err(ClientHelloError::NotClientHello(2))
        );
        // Declared longer than the bound.
        assert_eq!(
            parse(&[0x16, 3, 3, 0, 4, 1, 0x01, 0, 0]),
            Err(ClientHelloError::TooLarge)
        );
        // Bad SNI characters and lengths.
        assert!(matches!(
            parse(&hello_with(&sni_ext(b"bad name"))),
            Err(ClientHelloError::Malformed(_))
        ));
        assert!(matches!(
            parse(&hello_with(&sni_ext(&[b'a'; 254]))),
            Err(ClientHelloError::Malformed(_))
        ));
        // Duplicate SNI.
        let mut two = sni_ext(b"a.b");
        two.extend_from_slice(&sni_ext(b"c.d"));
        assert!(matches!(
            parse(&hello_with(&two)),
            Err(ClientHelloError::Malformed(_))
        ));
        // An extension claiming more than is there.
        assert!(matches!(
            parse(&hello_with(&[0, 0, 0, 9, 0])),
            Err(ClientHelloError::Malformed(_))
        ));
        let good = hello_with(&sni_ext(b"Model.Test."));
        match parse(&good).unwrap() {
            Parsed::Complete(h) => assert_eq!(h.server_name.as_deref(), Some("model.test")),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn fuzz_invariants_hold_on_random_mutations() {
        let base = rustls_hello("fuzz.example", &[b"h2"]);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut b = base.clone();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            if rng.bool() {
                b.truncate(rng.usize(..b.len()));
            }
            fuzzing::fuzz_client_hello(&b);
        }
    }
}
