//! Unit tests for the HTTP/1.1 codec.
//!
//! Every head fixture is checked at every split position (each prefix must give `Ok(None)` or
//! the same result as the whole), and every body fixture is decoded whole, split at every
//! position, and byte-by-byte, with identical payload / consumed / done / error.

use super::fuzzing::{check_body, run_body};
use super::*;
use crate::error::Classify;
use proptest::prelude::*;

type ReqResult = Result<Option<(RequestHead, usize)>, CodecError>;
type RespResult = Result<Option<(ResponseHead, usize)>, CodecError>;

/// Parse `buf` whole and check every prefix is `Ok(None)` or identical to the whole result.
fn req_split(buf: &[u8]) -> ReqResult {
    req_split_limits(buf, &HeadLimits::default())
}

fn req_split_limits(buf: &[u8], limits: &HeadLimits) -> ReqResult {
    let whole = parse_request(buf, limits);
    for k in 0..buf.len() {
        let p = parse_request(&buf[..k], limits);
        match (&p, &whole) {
            (Ok(None), _) => {}
            (Err(a), Err(b)) => assert_eq!(a, b, "prefix {k}"),
            (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "prefix {k}"),
            _ => panic!("prefix {k}: {p:?} vs whole {whole:?}"),
        }
    }
    whole
}

fn resp_split(buf: &[u8]) -> RespResult {
    let limits = HeadLimits::default();
    let whole = parse_response(buf, &limits);
    for k in 0..buf.len() {
        let p = parse_response(&buf[..k], &limits);
        match (&p, &whole) {
            (Ok(None), _) => {}
            (Err(a), Err(b)) => assert_eq!(a, b, "prefix {k}"),
            (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b, "prefix {k}"),
            _ => panic!("prefix {k}: {p:?} vs whole {whole:?}"),
        }
    }
    whole
}

fn req_ok(buf: &[u8]) -> (RequestHead, usize) {
    match req_split(buf) {
        Ok(Some(x)) => x,
        other => panic!(
            "expected a head for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn req_err(buf: &[u8]) -> CodecError {
    match req_split(buf) {
        Err(e) => e,
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn resp_ok(buf: &[u8]) -> (ResponseHead, usize) {
    match resp_split(buf) {
        Ok(Some(x)) => x,
        other => panic!(
            "expected a head for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

/// Decode at every split position and byte-by-byte; all must agree. Returns the whole run.
fn body_all_splits(kind: BodyKind, input: &[u8]) -> (Vec<u8>, usize, bool, Option<CodecError>) {
    // Every position for normal fixtures; the multi-KiB limit fixtures get a dense sample
    // (both ends plus a stride) to keep the debug test run short.
    let n = input.len();
    let splits: Vec<usize> = if n <= 2048 {
        (0..=n).collect()
    } else {
        (0..64)
            .chain(n - 64..=n)
            .chain((0..n).step_by(61))
            .collect()
    };
    for k in splits {
        check_body(kind, input, k);
    }
    let r = run_body(kind, input, &[]);
    (r.payload, r.consumed, r.done, r.err)
}

const OPENAI_REQ: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n\
Host: api.openai.com\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.54.4\r\n\
X-Stainless-Lang: python\r\n\
Authorization: Bearer sk-test\r\n\
Content-Length: 17\r\n\
\r\n\
{\"model\":\"gpt-x\"}";

// ---------------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_simple_get() {
    let buf =
        b"GET /v1/models?limit=2 HTTP/1.1\r\nHost: example.com:8080\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
    let (h, n) = req_ok(buf);
    assert_eq!(n, buf.len());
    assert_eq!(h.method(), Method::Get);
    assert_eq!(h.method_str(), "GET");
    assert_eq!(h.target(), "/v1/models?limit=2");
    assert_eq!(h.path(), "/v1/models?limit=2");
    assert_eq!(h.version(), Version::Http11);
    assert_eq!(h.host(), Some("example.com:8080"));
    assert_eq!(h.header("x-a"), Some(&b"1"[..]));
    assert_eq!(h.header("HOST"), Some(&b"example.com:8080"[..]));
    assert_eq!(h.header("missing"), None);
    assert_eq!(h.header_count(), 3);
    let names: Vec<&str> = h.headers().map(|(n, _)| n).collect();
    assert_eq!(names, ["Host", "X-A", "x-a"]);
    assert_eq!(h.body_kind(), BodyKind::Empty);
    assert!(h.keep_alive());
    assert!(!h.expect_continue());
    assert_eq!(h.raw(), &buf[..]);
}

#[test]
fn parses_openai_post() {
    let (h, n) = req_ok(OPENAI_REQ);
    assert_eq!(&OPENAI_REQ[n..], b"{\"model\":\"gpt-x\"}");
    assert_eq!(h.method(), Method::Post);
    assert_eq!(h.body_kind(), BodyKind::Length(17));
    assert_eq!(h.header("authorization"), Some(&b"Bearer sk-test"[..]));
    assert_eq!(h.connection_tokens().collect::<Vec<_>>(), ["keep-alive"]);
    assert_eq!(h.header_count(), 9);
}

#[test]
fn header_values_are_trimmed_and_may_be_empty() {
    let (h, _) = req_ok(b"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Pad: \t a b \t\r\n\r\n");
    assert_eq!(h.header("x-empty"), Some(&b""[..]));
    assert_eq!(h.header("x-pad"), Some(&b"a b"[..]));
}

#[test]
fn obs_text_in_values_is_accepted() {
    let (h, _) = req_ok(b"GET / HTTP/1.1\r\nHost: h\r\nX-U: caf\xc3\xa9 \xff\r\n\r\n");
    assert_eq!(h.header("x-u"), Some(&b"caf\xc3\xa9 \xff"[..]));
}

#[test]
fn absolute_form_target() {
    let (h, _) = req_ok(b"GET http://api.example:80/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(h.target(), "http://api.example:80/v1/x?q=1");
    assert_eq!(h.path(), "/v1/x?q=1");
    assert_eq!(h.host(), Some("api.example:80"), "authority wins over Host");
    let (h, _) = req_ok(b"GET https://api.example HTTP/1.1\r\nHost: api.example\r\n\r\n");
    assert_eq!(h.path(), "/");
    assert_eq!(h.host(), Some("api.example"));
    for bad in [
        &b"GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET 1http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET x HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        assert!(matches!(req_err(bad), CodecError::Malformed(_)));
    }
}

#[test]
fn asterisk_and_authority_forms() {
    let (h, _) = req_ok(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.path(), "*");
    let (h, _) = req_ok(b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n");
    assert_eq!(h.method(), Method::Connect);
    assert_eq!(h.path(), "");
    assert_eq!(h.host(), Some("api.example:443"));
    assert!(matches!(
        req_err(b"GET * HTTP/1.1\r\nHost: h\r\n\r\n"),
        CodecError::Malformed(_)
    ));
    assert!(matches!(
        req_err(b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n"),
        CodecError::Malformed(_)
    ));
}

#[test]
fn methods_are_case_sensitive_tokens() {
    let (h, _) = req_ok(b"get / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.method(), Method::Other);
    assert_eq!(h.method_str(), "get");
    let (h, _) = req_ok(b"PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(h.method(), Method::Other);
    for (m, want) in [
        ("HEAD", Method::Head),
        ("PUT", Method::Put),
        ("DELETE", Method::Delete),
        ("PATCH", Method::Patch),
        ("TRACE", Method::Trace),
        ("OPTIONS", Method::Options),
    ] {
        let buf = format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(req_ok(buf.as_bytes()).0.method(), want);
    }
}

#[test]
fn keep_alive_rules() {
    let ka = |b: &[u8]| req_ok(b).0.keep_alive();
    assert!(ka(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\n\r\n"
    ));
    assert!(!ka(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: x, close\r\n\r\n"
    ));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
    ));
    let (h, _) = req_ok(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: , X-Foo ,,Upgrade\r\nconnection: te\r\n\r\n",
    );
    assert_eq!(
        h.connection_tokens().collect::<Vec<_>>(),
        ["X-Foo", "Upgrade", "te"]
    );
}

#[test]
fn expect_continue_only_on_http11() {
    let (h, _) =
        req_ok(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
    assert!(h.expect_continue());
    let (h, _) = req_ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert!(!h.expect_continue());
}

#[test]
fn http10_without_host_is_fine() {
    let (h, _) = req_ok(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(h.version(), Version::Http10);
    assert_eq!(h.host(), None);
    assert_eq!(h.header_count(), 0);
}

#[test]
fn leading_empty_lines_are_skipped() {
    let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\nrest";
    let (h, n) = req_ok(buf);
    assert_eq!(&buf[n..], b"rest");
    assert_eq!(h.raw(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        req_err(b"\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        CodecError::Malformed("bare LF")
    );
    assert_eq!(
        req_err(b"\r\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        CodecError::Malformed("bare CR")
    );
}

#[test]
fn incomplete_heads_need_more() {
    let l = HeadLimits::default();
    assert_eq!(parse_request(b"", &l), Ok(None));
    assert_eq!(parse_request(b"\r\n", &l), Ok(None));
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n", &l),
        Ok(None)
    );
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nHost: h\r\n\r", &l),
        Ok(None)
    );
    assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", &l), Ok(None));
}

#[test]
fn limits() {
    // Exactly at the limit is fine; one byte more is 431.
    let buf = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let at = HeadLimits {
        header_bytes_max: buf.len(),
        headers_count_max: 1,
    };
    assert!(matches!(req_split_limits(buf, &at), Ok(Some(_))));
    let under = HeadLimits {
        header_bytes_max: buf.len() - 1,
        headers_count_max: 1,
    };
    assert_eq!(req_split_limits(buf, &under), Err(CodecError::HeadTooLarge));
    // No terminator within the limit.
    let mut big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
    big.resize(HEADER_BYTES_MAX_DEFAULT + 1, b'a');
    let e = parse_request(&big, &HeadLimits::default()).unwrap_err();
    assert_eq!(e, CodecError::HeadTooLarge);
    assert_eq!(e.status(), 431);
    assert_eq!(
        parse_request(&big[..HEADER_BYTES_MAX_DEFAULT], &HeadLimits::default()),
        Ok(None)
    );
    // Header count.
    let mut many = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..HEADERS_COUNT_MAX_DEFAULT {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let e = req_err(&many);
    assert_eq!(e, CodecError::TooManyHeaders);
    assert_eq!(e.status(), 431);
    let two = HeadLimits {
        header_bytes_max: 1024,
        headers_count_max: 2,
    };
    assert!(matches!(
        req_split_limits(b"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\r\n", &two),
        Ok(Some(_))
    ));
    assert_eq!(
        req_split_limits(b"GET / HTTP/1.1\r\nHost: h\r\nA: b\r\nC: d\r\n\r\n", &two),
        Err(CodecError::TooManyHeaders)
    );
    // A limit above the stack slot count uses the heap path.
    let lots = HeadLimits {
        header_bytes_max: 1 << 20,
        headers_count_max: 500,
    };
    let (h, _) = parse_request(&many, &lots).unwrap().unwrap();
    assert_eq!(h.header_count(), HEADERS_COUNT_MAX_DEFAULT + 1);
    assert_eq!(h.header("x-99"), Some(&b"v"[..]));
}

/// The smuggling / malformed table: every entry must be rejected with the given error class
/// (and the same error for every prefix that is not `Ok(None)`).
#[test]
fn smuggling_table() {
    use CodecError as E;
    #[allow(clippy::type_complexity)]
    let table: &[(&str, &[u8], fn(&E) -> bool)] = &[
        ("CL+TE", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE+CL", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE+bad CL", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("differing CL", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", |e| *e == E::Smuggling("conflicting Content-Length values")),
        ("differing CL list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n", |e| *e == E::Smuggling("conflicting Content-Length values")),
        ("CL non-numeric", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL negative", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL plus sign", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL inner space", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL empty", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL empty element", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("CL overflow", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n", |e| *e == E::Smuggling("Content-Length overflow")),
        ("TE chunked, identity", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE chunked;x", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE gzip only", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE empty", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n", |e| matches!(e, E::Smuggling(_))),
        ("TE vertical tab", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("TE on 1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", |e| *e == E::Smuggling("Transfer-Encoding in HTTP/1.0 request")),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n  folded\r\n\r\n", |e| *e == E::Smuggling("obs-fold (line folding)")),
        ("obs-fold tab", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tfolded\r\n\r\n", |e| *e == E::Smuggling("obs-fold (line folding)")),
        ("space before first header", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", |e| *e == E::Smuggling("obs-fold (line folding)")),
        ("space before colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n", |e| *e == E::Smuggling("whitespace between header name and colon")),
        ("tab before colon", b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", |e| *e == E::Smuggling("whitespace between header name and colon")),
        ("NUL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("CR in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("DEL in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("bare LF in value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: b\r\n\r\n", |e| *e == E::Malformed("bare LF")),
        ("bare LF line ends", b"GET / HTTP/1.1\nHost: h\n\n", |e| *e == E::Malformed("bare LF")),
        ("bare LF end of head", b"GET / HTTP/1.1\r\nHost: h\r\n\n", |e| *e == E::Malformed("bare LF")),
        ("empty header name", b"GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("invalid name byte", b"GET / HTTP/1.1\r\nHost: h\r\nX(A): v\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("no colon", b"GET / HTTP/1.1\r\nHost: h\r\nnocolon\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("garbage request line", b"HELLO\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("double space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("trailing space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("lowercase version", b"GET / http/1.1\r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("missing version", b"GET /\r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("fragment in target", b"GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("non-ascii target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", |e| matches!(e, E::Malformed(_))),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", |e| *e == E::UnsupportedVersion),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", |e| *e == E::UnsupportedVersion),
        ("HTTP/0.9", b"GET / HTTP/0.9\r\n\r\n", |e| *e == E::UnsupportedVersion),
        ("HTTP/3.0", b"GET / HTTP/3.0\r\n\r\n", |e| *e == E::UnsupportedVersion),
        ("missing Host", b"GET / HTTP/1.1\r\nX: y\r\n\r\n", |e| *e == E::Malformed("missing Host header")),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", |e| *e == E::Malformed("multiple Host headers")),
        ("bad Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", |e| *e == E::Malformed("invalid Host header")),
        ("Host with path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", |e| *e == E::Malformed("invalid Host header")),
    ];
    for (name, buf, want) in table {
        let e = req_err(buf);
        assert!(want(&e), "{name}: got {e:?}");
        let status = e.status();
        let expected = match e {
            E::UnsupportedVersion => 505,
            E::HeadTooLarge | E::TooManyHeaders => 431,
            _ => 400,
        };
        assert_eq!(status, expected, "{name}");
        assert_eq!(e.side(), crate::error::Side::Downstream);
    }
}

#[test]
fn accepted_framing_variants() {
    let kind = |b: &[u8]| req_ok(b).0.body_kind();
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
        BodyKind::Length(5)
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n"),
        BodyKind::Length(5)
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n"),
        BodyKind::Length(7)
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
        BodyKind::Length(0)
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n"),
        BodyKind::Length(u64::MAX)
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
        BodyKind::Chunked
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n"),
        BodyKind::Chunked
    );
    assert_eq!(
        kind(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        BodyKind::Chunked
    );
    assert_eq!(kind(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\ntransfer-encoding: ,chunked ,\r\n\r\n"), BodyKind::Chunked);
    assert_eq!(kind(b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"), BodyKind::Empty);
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[test]
fn response_framing() {
    let (h, n) = resp_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(n, 38);
    assert_eq!(
        (h.status(), h.reason(), h.version()),
        (200, "OK", Version::Http11)
    );
    assert_eq!(h.body_kind(Method::Post), BodyKind::Length(3));
    assert_eq!(h.body_kind(Method::Head), BodyKind::Empty);
    assert!(h.keep_alive() && !h.must_close() && !h.is_informational());

    for s in [
        b"100 Continue".as_slice(),
        b"101 Switching Protocols",
        b"103 Early Hints",
        b"204 No Content",
        b"304 Not Modified",
    ] {
        let mut buf = b"HTTP/1.1 ".to_vec();
        buf.extend_from_slice(s);
        buf.extend_from_slice(b"\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n");
        let (h, _) = resp_ok(&buf);
        assert_eq!(
            h.body_kind(Method::Get),
            BodyKind::Empty,
            "{}",
            String::from_utf8_lossy(s)
        );
    }
    let (h, _) = resp_ok(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(h.is_informational());

    let (h, _) = resp_ok(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
    assert_eq!(h.body_kind(Method::Post), BodyKind::CloseDelimited);
    let (h, _) = resp_ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(h.body_kind(Method::Post), BodyKind::CloseDelimited);
    let (h, _) = resp_ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    assert_eq!(h.body_kind(Method::Post), BodyKind::CloseDelimited);
    let (h, _) = resp_ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n");
    assert_eq!(h.body_kind(Method::Post), BodyKind::Chunked);
    assert!(h.keep_alive());

    // CL + TE: TE wins, connection must close.
    let (h, _) =
        resp_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(h.body_kind(Method::Get), BodyKind::Chunked);
    assert!(h.must_close() && !h.keep_alive());
    // TE on 1.0: faulty framing, read to close.
    let (h, _) =
        resp_ok(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(h.body_kind(Method::Get), BodyKind::CloseDelimited);
    assert!(h.must_close() && !h.keep_alive());
    // CONNECT 2xx is a tunnel.
    let (h, _) = resp_ok(b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(h.body_kind(Method::Connect), BodyKind::Empty);
    // 1.0 keep-alive.
    let (h, _) = resp_ok(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!h.keep_alive());
    let (h, _) = resp_ok(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert!(h.keep_alive());
    let (h, _) = resp_ok(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    assert!(!h.keep_alive());
    assert_eq!(h.connection_tokens().collect::<Vec<_>>(), ["close"]);
}

#[test]
fn response_status_lines() {
    let (h, _) = resp_ok(b"HTTP/1.1 404\r\n\r\n");
    assert_eq!((h.status(), h.reason()), (404, ""));
    let (h, _) = resp_ok(b"HTTP/1.1 200 \r\n\r\n");
    assert_eq!(h.reason(), "");
    let (h, _) = resp_ok(b"HTTP/1.1 500 Internal  Server Error\r\n\r\n");
    assert_eq!(h.reason(), "Internal  Server Error");
    let (h, _) = resp_ok(b"HTTP/1.1 200 \xffbad\r\n\r\n");
    assert_eq!(h.reason(), "");
    assert_eq!(h.header("x"), None);
    let err = |b: &[u8]| resp_split(b).unwrap_err();
    assert!(matches!(
        err(b"HTTP/1.1 099 Low\r\n\r\n"),
        CodecError::Malformed(_)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 20 OK\r\n\r\n"),
        CodecError::Malformed(_)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 2000 OK\r\n\r\n"),
        CodecError::Malformed(_)
    ));
    assert_eq!(
        err(b"HTTP/2.0 200 OK\r\n\r\n"),
        CodecError::UnsupportedVersion
    );
    assert_eq!(
        err(b"\r\nHTTP/1.1 200 OK\r\n\r\n"),
        CodecError::Malformed("empty line before status line")
    );
    assert!(matches!(
        err(b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n"),
        CodecError::Smuggling(_)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n"),
        CodecError::Smuggling(_)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        CodecError::Smuggling(_)
    ));
    assert!(matches!(
        err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"),
        CodecError::Smuggling(_)
    ));
    assert_eq!(
        err(b"HTTP/1.1 200 OK\nX: y\n\n"),
        CodecError::Malformed("bare LF")
    );
}

#[test]
fn informational_then_final_response_in_one_buffer() {
    let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\n";
    let (h1, n1) = resp_ok(buf);
    assert!(h1.is_informational());
    let (h2, n2) = resp_ok(&buf[n1..]);
    assert_eq!(h2.status(), 200);
    let body = &buf[n1 + n2..];
    let (payload, consumed, done, err) = body_all_splits(h2.body_kind(Method::Post), body);
    assert_eq!(
        (payload.as_slice(), consumed, done, err),
        (&b"hi"[..], 2, true, None)
    );
    let (h3, n3) = resp_ok(&body[consumed..]);
    assert_eq!(h3.status(), 204);
    assert_eq!(n1 + n2 + consumed + n3, buf.len());
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n";
    let body = b"5;name=value;q=\"quoted str\"\r\nhello\r\n6 ; ext\r\n world\r\n0;last\r\nX-Checksum: abc\r\nX-Other:\r\n\r\nHTTP/1.1 200 OK\r\n";
    let mut buf = head.to_vec();
    buf.extend_from_slice(body);
    let (h, n) = resp_ok(&buf);
    assert_eq!(h.body_kind(Method::Get), BodyKind::Chunked);
    let (payload, consumed, done, err) = body_all_splits(BodyKind::Chunked, &buf[n..]);
    assert_eq!(err, None);
    assert_eq!(payload, b"hello world");
    assert!(done);
    assert_eq!(&buf[n + consumed..], b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn close_delimited_body() {
    let (payload, consumed, done, err) =
        body_all_splits(BodyKind::CloseDelimited, b"data: {}\n\ndata: [DONE]\n\n");
    assert_eq!((consumed, done, err), (24, false, None));
    assert_eq!(payload, b"data: {}\n\ndata: [DONE]\n\n");
    let mut d = BodyDecoder::new(BodyKind::CloseDelimited);
    assert_eq!(
        d.advance(b"abc", |_| {}).unwrap(),
        Progress {
            consumed: 3,
            done: false
        }
    );
    assert!(!d.is_done());
    assert_eq!(d.on_eof(), Ok(()));
    assert!(d.is_done());
    assert_eq!(
        d.advance(b"more", |_| panic!("no data after done"))
            .unwrap(),
        Progress {
            consumed: 0,
            done: true
        }
    );
    assert_eq!(d.kind(), BodyKind::CloseDelimited);
    assert_eq!(d.bytes_remaining_hint(), None);
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_and_zero_length_are_done_immediately() {
    for kind in [BodyKind::Empty, BodyKind::Length(0)] {
        let mut d = BodyDecoder::new(kind);
        assert!(d.is_done());
        assert_eq!(d.bytes_remaining_hint(), Some(0));
        assert_eq!(
            d.advance(b"GET /", |_| panic!("no data")).unwrap(),
            Progress {
                consumed: 0,
                done: true
            }
        );
        assert_eq!(d.on_eof(), Ok(()));
    }
}

#[test]
fn length_body() {
    let (payload, consumed, done, err) =
        body_all_splits(BodyKind::Length(5), b"helloGET / HTTP/1.1\r\n");
    assert_eq!(
        (payload.as_slice(), consumed, done, err),
        (&b"hello"[..], 5, true, None)
    );
    let mut d = BodyDecoder::new(BodyKind::Length(10));
    assert_eq!(d.bytes_remaining_hint(), Some(10));
    assert_eq!(
        d.advance(b"abcd", |_| {}).unwrap(),
        Progress {
            consumed: 4,
            done: false
        }
    );
    assert_eq!(d.bytes_remaining_hint(), Some(6));
    assert_eq!(d.on_eof(), Err(CodecError::Truncated));
    assert_eq!(d.advance(b"x", |_| {}), Err(CodecError::Truncated));
    assert_eq!(CodecError::Truncated.status(), 400);
    let mut d = BodyDecoder::new(BodyKind::Length(u64::MAX));
    assert_eq!(
        d.advance(&[0u8; 100], |_| {}).unwrap(),
        Progress {
            consumed: 100,
            done: false
        }
    );
}

#[test]
fn chunked_valid_fixtures() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"0\r\n\r\n", b""),
        (b"1\r\na\r\n0\r\n\r\n", b"a"),
        (b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", b"abcde"),
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
        (b"0001\r\nx\r\n000\r\n\r\n", b"x"),
        (b"0000000000000001\r\nx\r\n0\r\n\r\n", b"x"),
        (b"1;a=b\r\nx\r\n0;c\r\n\r\n", b"x"),
        (b"1 ;ext\r\nx\r\n0\t;e\r\n\r\n", b"x"),
        (b"1;\r\nx\r\n0\r\n\r\n", b"x"),
        (b"1;a=\"q;\\\"uoted\"\r\nx\r\n0\r\n\r\n", b"x"),
        (b"1;\xff\r\nx\r\n0\r\n\r\n", b"x"),
        (b"2\r\n\r\n\r\n0\r\n\r\n", b"\r\n"),
        (b"1\r\nx\r\n0\r\nTrailer-A: 1\r\nb:\r\n\r\n", b"x"),
        (b"0\r\nX: a\tb \xff\r\n\r\n", b""),
    ];
    for (enc, want) in cases {
        let mut input = enc.to_vec();
        input.extend_from_slice(b"NEXT");
        let (payload, consumed, done, err) = body_all_splits(BodyKind::Chunked, &input);
        assert_eq!(err, None, "{}", String::from_utf8_lossy(enc));
        assert!(done);
        assert_eq!(consumed, enc.len(), "{}", String::from_utf8_lossy(enc));
        assert_eq!(payload, *want);
    }
}

#[test]
fn chunked_invalid_fixtures() {
    let ext_max = {
        let mut v = b"1;".to_vec();
        v.resize(CHUNK_EXT_BYTES_MAX + 2, b'e');
        v.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        v
    };
    let trailer_max = {
        let mut v = b"0\r\nX: ".to_vec();
        v.resize(TRAILER_BYTES_MAX + 10, b'v');
        v.extend_from_slice(b"\r\n\r\n");
        v
    };
    let cases: &[(&str, &[u8])] = &[
        ("0x prefix", b"0x1\r\nx\r\n0\r\n\r\n"),
        ("negative", b"-1\r\nx\r\n0\r\n\r\n"),
        ("17 hex digits", b"00000000000000001\r\nx\r\n0\r\n\r\n"),
        ("empty size", b"\r\nx\r\n0\r\n\r\n"),
        ("plus sign", b"+1\r\nx\r\n0\r\n\r\n"),
        ("leading space", b" 1\r\nx\r\n0\r\n\r\n"),
        ("space without ext", b"1 \r\nx\r\n0\r\n\r\n"),
        ("space then garbage", b"1 x\r\nx\r\n0\r\n\r\n"),
        ("non-hex", b"g\r\nx\r\n0\r\n\r\n"),
        ("bare LF after size", b"1\nx\r\n0\r\n\r\n"),
        ("bare CR after size", b"1\rx\r\n0\r\n\r\n"),
        ("LF in ext", b"1;a\nx\r\n0\r\n\r\n"),
        ("NUL in ext", b"1;a\x00\r\nx\r\n0\r\n\r\n"),
        ("data too long", b"1\r\nxy\r\n0\r\n\r\n"),
        ("missing CRLF after data", b"1\r\nx0\r\n\r\n"),
        ("LF only after data", b"1\r\nx\n0\r\n\r\n"),
        ("CR only after data", b"1\r\nx\r0\r\n\r\n"),
        ("bare LF final", b"0\r\n\n"),
        ("CR without LF final", b"0\r\n\rX"),
        ("obs-fold trailer", b"0\r\nA: b\r\n c\r\n\r\n"),
        ("trailer without colon", b"0\r\nAb\r\n\r\n"),
        ("trailer space before colon", b"0\r\nA : b\r\n\r\n"),
        ("trailer bare LF", b"0\r\nA: b\n\r\n"),
        ("trailer NUL", b"0\r\nA: b\x00\r\n\r\n"),
        ("ext too long", &ext_max),
        ("trailer too large", &trailer_max),
    ];
    for (name, enc) in cases {
        let (_, _, _, err) = body_all_splits(BodyKind::Chunked, enc);
        match err {
            Some(CodecError::BadChunk(_)) => {}
            other => panic!("{name}: expected BadChunk, got {other:?}"),
        }
    }
    // Exactly at the limits is accepted.
    let mut ok = b"1;".to_vec();
    ok.resize(CHUNK_EXT_BYTES_MAX + 1, b'e');
    ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    let (_, _, done, err) = body_all_splits(BodyKind::Chunked, &ok);
    assert!(done && err.is_none());
}

#[test]
fn chunked_truncation_and_stickiness() {
    let mut d = BodyDecoder::new(BodyKind::Chunked);
    let mut got = Vec::new();
    let p = d
        .advance(b"5\r\nhel", |s| got.extend_from_slice(s))
        .unwrap();
    assert_eq!(
        p,
        Progress {
            consumed: 6,
            done: false
        }
    );
    assert_eq!(got, b"hel");
    assert_eq!(d.bytes_remaining_hint(), None);
    assert_eq!(d.on_eof(), Err(CodecError::Truncated));
    let mut d = BodyDecoder::new(BodyKind::Chunked);
    let e = d.advance(b"zz", |_| {}).unwrap_err();
    assert!(matches!(e, CodecError::BadChunk(_)));
    assert_eq!(d.advance(b"0\r\n\r\n", |_| {}), Err(e));
    assert_eq!(d.on_eof(), Err(e));
    assert_eq!(d.kind(), BodyKind::Chunked);
}

#[test]
fn huge_chunk_size_streams_without_overflow() {
    let mut d = BodyDecoder::new(BodyKind::Chunked);
    let p = d.advance(b"ffffffffffffffff\r\nabc", |_| {}).unwrap();
    assert_eq!(
        p,
        Progress {
            consumed: 21,
            done: false
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Pipelining
// ---------------------------------------------------------------------------------------------

/// Walk a buffer of pipelined requests; returns (method, path, payload) per request and checks
/// that the whole buffer is consumed exactly.
fn walk_requests(buf: &[u8]) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (h, n) = req_ok(&buf[at..]);
        at += n;
        let (payload, consumed, done, err) = body_all_splits(h.body_kind(), &buf[at..]);
        assert!(done && err.is_none());
        at += consumed;
        out.push((h.method_str().to_string(), h.path().to_string(), payload));
    }
    assert_eq!(at, buf.len());
    out
}

#[test]
fn pipelined_requests() {
    let buf = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x\r\nabc\r\n0\r\nT: v\r\n\r\n\
\r\nGET /d HTTP/1.1\r\nHost: h\r\n\r\n\
POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
    let got = walk_requests(buf);
    let want: Vec<(String, String, Vec<u8>)> = vec![
        ("GET".into(), "/a".into(), vec![]),
        ("POST".into(), "/b".into(), b"hello".to_vec()),
        ("POST".into(), "/c".into(), b"abc".to_vec()),
        ("GET".into(), "/d".into(), vec![]),
        ("POST".into(), "/e".into(), vec![]),
    ];
    assert_eq!(got, want);
    // Exact offsets for the first two.
    let (_, n1) = req_ok(buf);
    assert_eq!(n1, 28);
    assert!(buf[n1..].starts_with(b"POST /b"));
}

#[test]
fn smuggled_request_in_chunked_body_is_not_a_request() {
    // A body that contains something looking like a request stays body.
    let buf = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
20\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n\r\n0\r\n\r\n";
    let got = walk_requests(buf);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2, b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n");
}

// ---------------------------------------------------------------------------------------------
// Writers
// ---------------------------------------------------------------------------------------------

#[test]
fn writers() {
    let mut out = Vec::new();
    write_chunk(&mut out, b"");
    assert!(out.is_empty());
    write_chunk(&mut out, b"hello");
    write_chunk(&mut out, &[b'x'; 26]);
    write_last_chunk(&mut out);
    let mut want = b"5\r\nhello\r\n1a\r\n".to_vec();
    want.extend_from_slice(&[b'x'; 26]);
    want.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(out, want);
    let (payload, consumed, done, _) = body_all_splits(BodyKind::Chunked, &out);
    assert_eq!(payload.len(), 31);
    assert!(done && consumed == out.len());

    let mut out = Vec::new();
    write_status_line(&mut out, 200, "", Version::Http11);
    write_status_line(&mut out, 429, "Slow Down", Version::Http10);
    write_status_line(&mut out, 599, "", Version::Http11);
    write_status_line(&mut out, 200, "O\r\nK", Version::Http11);
    write_status_line(&mut out, 42, "Weird", Version::Http11);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nHTTP/1.0 429 Slow Down\r\nHTTP/1.1 599 \r\nHTTP/1.1 200 O  K\r\nHTTP/1.1 500 Internal Server Error\r\n"
    );

    let mut out = Vec::new();
    write_request_line(&mut out, "POST", "/v1/chat/completions", Version::Http11);
    write_request_line(&mut out, "GE T", "/a b\r\n", Version::Http10);
    assert_eq!(
        out,
        b"POST /v1/chat/completions HTTP/1.1\r\nGE_T /a%20b%0D%0A HTTP/1.0\r\n"
    );

    let mut out = Vec::new();
    write_header(&mut out, "Content-Type", b"application/json");
    write_header(&mut out, "X-Inj\r\nEvil", b"a\r\nEvil: 1\x00");
    finish_head(&mut out);
    assert_eq!(
        out,
        b"Content-Type: application/json\r\nX-Inj__Evil: a  Evil: 1 \r\n\r\n"
    );
    assert!(
        is_valid_header_name("X-Foo")
            && !is_valid_header_name("X Foo")
            && !is_valid_header_name("")
    );
    assert!(is_valid_header_value(b"a\tb \xff") && !is_valid_header_value(b"a\nb"));
}

#[test]
fn written_head_round_trips() {
    let (h, _) = req_ok(OPENAI_REQ);
    let mut out = Vec::new();
    write_request_line(&mut out, h.method_str(), h.target(), h.version());
    for (n, v) in h.headers().filter(|(n, _)| !is_hop_by_hop(n)) {
        write_header(&mut out, n, v);
    }
    finish_head(&mut out);
    let (h2, n2) = req_ok(&out);
    assert_eq!(n2, out.len());
    assert_eq!(h2.header_count(), h.header_count() - 1);
    assert_eq!(h2.body_kind(), BodyKind::Length(17));
    assert_eq!(h2.header("user-agent"), h.header("user-agent"));
}

#[test]
fn hop_by_hop_and_reasons() {
    for n in [
        "Connection",
        "keep-alive",
        "PROXY-CONNECTION",
        "te",
        "Trailer",
        "transfer-encoding",
        "Upgrade",
        "proxy-authenticate",
        "Proxy-Authorization",
    ] {
        assert!(is_hop_by_hop(n), "{n}");
    }
    for n in [
        "content-length",
        "trailers",
        "t",
        "",
        "host",
        "authorization",
    ] {
        assert!(!is_hop_by_hop(n), "{n}");
    }
    assert_eq!(canonical_reason(200), "OK");
    assert_eq!(canonical_reason(431), "Request Header Fields Too Large");
    assert_eq!(canonical_reason(799), "");
}

#[test]
fn classify() {
    use CodecError as E;
    let cases = [
        (E::HeadTooLarge, 431, "head_too_large"),
        (E::TooManyHeaders, 431, "too_many_headers"),
        (E::Malformed("x"), 400, "malformed_request"),
        (E::Smuggling("x"), 400, "ambiguous_framing"),
        (E::BadChunk("x"), 400, "bad_chunked_encoding"),
        (E::UnsupportedVersion, 505, "unsupported_http_version"),
        (E::Truncated, 400, "truncated_body"),
    ];
    for (e, status, code) in cases {
        assert_eq!(e.status(), status);
        assert_eq!(e.code(), code);
        assert_eq!(e.side(), crate::error::Side::Downstream);
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

/// One chunk of a random valid encoding.
#[derive(Debug, Clone)]
struct ChunkSpec {
    len: usize,
    zeros: usize,
    upper: bool,
    ext: String,
}

fn ext_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        1 => "[a-z]{1,8}".prop_map(|n| format!(";{n}")),
        1 => ("[a-z]{1,8}", "[a-zA-Z0-9]{0,8}").prop_map(|(n, v)| format!(";{n}={v}")),
        1 => ("[a-z]{1,8}", "[ a-z;=]{0,10}").prop_map(|(n, v)| format!(" \t; {n}=\"{v}\"")),
    ]
}

fn encode(
    payload: &[u8],
    chunks: &[ChunkSpec],
    last: &ChunkSpec,
    trailers: &[(String, String)],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = payload;
    for c in chunks {
        if rest.is_empty() {
            break;
        }
        let n = c.len.clamp(1, rest.len());
        let size = if c.upper {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        let zeros = c.zeros.min(16 - size.len());
        out.extend_from_slice("0".repeat(zeros).as_bytes());
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(c.ext.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        write_chunk(&mut out, rest);
    }
    out.extend_from_slice("0".repeat(last.zeros.clamp(1, 16)).as_bytes());
    out.extend_from_slice(last.ext.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in trailers {
        out.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn chunk_spec() -> impl Strategy<Value = ChunkSpec> {
    (1usize..300, 0usize..4, any::<bool>(), ext_strategy()).prop_map(|(len, zeros, upper, ext)| {
        ChunkSpec {
            len,
            zeros,
            upper,
            ext,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn prop_chunked_round_trip(
        payload in proptest::collection::vec(any::<u8>(), 0..2000),
        chunks in proptest::collection::vec(chunk_spec(), 0..20),
        last in chunk_spec(),
        trailers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..3),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        next in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let enc = encode(&payload, &chunks, &last, &trailers);
        let mut input = enc.clone();
        input.extend_from_slice(&next);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let whole = run_body(BodyKind::Chunked, &input, &[]);
        let split = run_body(BodyKind::Chunked, &input, &cuts);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(whole.err, None);
        prop_assert!(whole.done);
        prop_assert_eq!(whole.consumed, enc.len());
        prop_assert_eq!(&whole.payload, &payload);
    }

    #[test]
    fn prop_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let l = HeadLimits::default();
        let _ = parse_request(&data, &l);
        let _ = parse_response(&data, &l);
        for kind in [BodyKind::Chunked, BodyKind::Length(7), BodyKind::CloseDelimited] {
            let mut d = BodyDecoder::new(kind);
            if let Ok(p) = d.advance(&data, |_| {}) {
                prop_assert!(p.consumed <= data.len());
            }
            let _ = d.on_eof();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz bodies under proptest (so CI runs them without libFuzzer)
// ---------------------------------------------------------------------------------------------

const SEEDS: &[&[u8]] = &[
    OPENAI_REQ,
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.0 200 OK\r\n\r\nrest",
    b"5;a=b\r\nhello\r\nA\r\n0123456789\r\n0\r\nX: y\r\n\r\n",
];

/// Valid-looking seeds with a few random byte edits: reaches deep paths that pure random bytes
/// never do.
fn fuzz_input() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        0..SEEDS.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
    )
        .prop_map(|(s, edits)| {
            let mut v = SEEDS[s].to_vec();
            for (at, b, op) in edits {
                let i = at.index(v.len() + 1);
                match op {
                    0 if i < v.len() => v[i] = b,
                    1 => v.insert(i, b),
                    _ if i < v.len() => {
                        v.remove(i);
                    }
                    _ => {}
                }
            }
            v
        });
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        3 => mutated,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_request_body_under_proptest(data in fuzz_input()) {
        fuzzing::fuzz_request(&data);
    }

    #[test]
    fn fuzz_response_body_under_proptest(sel in any::<u8>(), data in fuzz_input()) {
        let mut v = vec![sel];
        v.extend_from_slice(&data);
        fuzzing::fuzz_response(&v);
    }

    #[test]
    fn fuzz_chunked_body_under_proptest(sel in any::<u8>(), data in fuzz_input()) {
        let mut v = vec![sel];
        v.extend_from_slice(&data);
        fuzzing::fuzz_chunked(&v);
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the fuzz bodies
// ---------------------------------------------------------------------------------------------

#[test]
fn regression_non_utf8_connection_token_is_skipped() {
    let (h, _) = req_ok(b"GET / HTTP/1.1\r\nHost: h\r\nConnection:\x80keep-alive, close\r\n\r\n");
    assert_eq!(h.connection_tokens().collect::<Vec<_>>(), ["close"]);
}

#[test]
fn regression_error_after_partial_progress_is_split_invariant() {
    // "5\0": the error comes after one digit was consumed in an earlier call.
    let (_, _, _, err) = body_all_splits(BodyKind::Chunked, b"5\x00\nhello\r\n0\r\n\r\n");
    assert!(matches!(err, Some(CodecError::BadChunk(_))));
}

#[test]
fn header_error_refinement_reports_the_first_offending_line() {
    // The first bad line is an invalid name, not the later obs-fold.
    assert_eq!(
        req_err(b"GET / HTTP/1.1\r\nHost: h\r\nX(A): v\r\n folded\r\n\r\n"),
        CodecError::Malformed("invalid header name")
    );
    assert_eq!(
        req_err(b"GET / HTTP/1.1\r\nHost: h\r\nX-A : v\r\n folded\r\n\r\n"),
        CodecError::Smuggling("whitespace between header name and colon")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Anything the writers emit parses back to the same start line and header list (values
    /// compared after OWS trimming, which is what a recipient sees), at every prefix `Ok(None)`.
    #[test]
    fn prop_written_heads_parse_back(
        method in "[A-Z]{1,8}",
        path in "/[!-~&&[^#]]{0,40}",
        headers in proptest::collection::vec(
            ("[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?"),
            0..20,
        ),
        status in 200u16..600,
    ) {
        let mut out = Vec::new();
        write_request_line(&mut out, &method, &path, Version::Http11);
        write_header(&mut out, "Host", b"example.com");
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(n, _)| {
                let n = n.to_ascii_lowercase();
                !matches!(n.as_str(), "host" | "content-length" | "transfer-encoding")
            })
            .collect();
        for (n, v) in &headers {
            write_header(&mut out, n, v.as_bytes());
        }
        finish_head(&mut out);
        let (h, n) = match req_split(&out) {
            Ok(Some(x)) => x,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(h.method_str(), method.as_str());
        prop_assert_eq!(h.path(), path.as_str());
        let got: Vec<(String, Vec<u8>)> = h.headers().skip(1).map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        let want: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| (n.clone(), v.clone().into_bytes())).collect();
        prop_assert_eq!(got, want);

        let mut out = Vec::new();
        write_status_line(&mut out, status, "", Version::Http11);
        for (n, v) in &headers {
            write_header(&mut out, n, v.as_bytes());
        }
        finish_head(&mut out);
        let (r, n) = match resp_split(&out) {
            Ok(Some(x)) => x,
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(n, out.len());
        prop_assert_eq!(r.status(), status);
        prop_assert_eq!(r.reason(), canonical_reason(status));
        prop_assert_eq!(r.header_count(), headers.len());
    }
}
