//! Black-box tests of `sluice-loadtest mock` over real sockets: each dialect's JSON and SSE
//! (with event spacing), error injection, resets, framing, pipelining, the record endpoint
//! and TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_loadtest::http1::ChunkedDecoder;
use sluice_loadtest::mock::{self, MockConfig};

fn cfg() -> MockConfig {
    MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ttft_ms: 0,
        itl_ms: 0,
        tokens: 4,
        response_bytes: None,
        tls_cert: None,
        tls_key: None,
        record: 16,
    }
}

fn shared_mock() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| mock::start(cfg()).expect("mock starts").addr)
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Arrival time of every `data:` line, relative to the request.
    data_times: Vec<Duration>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_response<R: Read>(s: &mut R, start: Instant) -> std::io::Result<Resp> {
    read_response_carry(s, &mut Vec::new(), start)
}

/// Reads one response; bytes after it (pipelined responses) are left in `carry`.
fn read_response_carry<R: Read>(
    s: &mut R,
    carry: &mut Vec<u8>,
    start: Instant,
) -> std::io::Result<Resp> {
    let mut buf = std::mem::take(carry);
    let mut tmp = [0u8; 8192];
    let (status, headers, head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        if !buf.is_empty() {
            if let httparse::Status::Complete(len) = r.parse(&buf).unwrap() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (r.code.unwrap(), headers, len);
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let mut rest = buf.split_off(head_len);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let cl = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().unwrap());
    let mut body = Vec::new();
    let mut data_times = Vec::new();
    let count_data = |body: &[u8], times: &mut Vec<Duration>| {
        let seen = body.windows(5).filter(|w| w == b"data:").count();
        while times.len() < seen {
            times.push(start.elapsed());
        }
    };
    if chunked {
        let mut dec = ChunkedDecoder::new();
        loop {
            let used = dec.feed(&rest, Some(&mut body)).unwrap();
            count_data(&body, &mut data_times);
            if dec.is_done() {
                *carry = rest[used..].to_vec();
                break;
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            rest = tmp[..n].to_vec();
        }
    } else if let Some(cl) = cl {
        body = rest;
        while body.len() < cl {
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            body.extend_from_slice(&tmp[..n]);
        }
        *carry = body.split_off(cl);
    } else {
        body = rest;
        s.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
        data_times,
    })
}

fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let start = Instant::now();
    s.write_all(req.as_bytes())?;
    read_response(&mut s, start)
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: mock\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s, Instant::now()).unwrap()
}

const CHAT: &str =
    r#"{"model":"gpt-test","messages":[{"role":"user","content":"0123456789abcdef"}]}"#;

#[test]
fn openai_chat_json_and_sse() {
    let a = shared_mock();
    let r = post(a, "/v1/chat/completions", &[("x-mock-tokens", "5")], CHAT).unwrap();
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 9);
    assert_eq!(v["model"], "gpt-test");

    let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"0123456789abcdef"}]}"#;
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-itl-ms", "40"), ("x-mock-tokens", "4")],
        body,
    )
    .unwrap();
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["prompt_tokens"], 4);
    let content: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "Hello from the sluice");
    // Token events (index 1..=4) arrive spaced by the inter-token latency.
    let t = &r.data_times;
    assert!(t.len() >= 5, "{t:?}");
    for w in t[1..5].windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(30), "gap {gap:?} in {t:?}");
    }
}

#[test]
fn openai_completions_embeddings_models() {
    let a = shared_mock();
    let r = post(
        a,
        "/v1/completions",
        &[],
        r#"{"model":"m","prompt":"12345678"}"#,
    )
    .unwrap();
    assert_eq!(r.json()["usage"]["prompt_tokens"], 2);
    assert_eq!(r.json()["object"], "text_completion");
    let r = post(
        a,
        "/v1/completions",
        &[],
        r#"{"model":"m","prompt":"x","stream":true}"#,
    )
    .unwrap();
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let r = post(
        a,
        "/v1/embeddings",
        &[],
        r#"{"model":"e","input":["abcdefgh","ijkl"]}"#,
    )
    .unwrap();
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 3);
    let r = get(a, "/v1/models");
    assert_eq!(r.json()["object"], "list");
}

#[test]
fn anthropic_json_and_sse() {
    let a = shared_mock();
    let body = r#"{"model":"claude-x","max_tokens":10,"system":"abcd","messages":[{"role":"user","content":[{"type":"text","text":"abcdefgh"}]}]}"#;
    let r = post(a, "/v1/messages", &[("x-mock-tokens", "3")], body).unwrap();
    let v = r.json();
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["type"], "message");

    let body =
        r#"{"model":"claude-x","stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}"#;
    let r = post(
        a,
        "/v1/messages",
        &[("x-mock-tokens", "3"), ("x-mock-itl-ms", "30")],
        body,
    )
    .unwrap();
    let text = r.text();
    let kinds: Vec<&str> = text
        .split("\n\n")
        .filter_map(|e| e.lines().next()?.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(text.contains(r#""usage":{"input_tokens":2,"output_tokens":1}"#));
    assert!(text.contains(r#""usage":{"output_tokens":3}"#));
    let t = &r.data_times;
    assert!(t[4] - t[3] >= Duration::from_millis(20), "{t:?}");
}

#[test]
fn tgi_json_and_sse() {
    let a = shared_mock();
    let r = post(
        a,
        "/generate",
        &[("x-mock-tokens", "2")],
        r#"{"inputs":"abcdefgh"}"#,
    )
    .unwrap();
    assert_eq!(r.json()["details"]["generated_tokens"], 2);
    assert_eq!(r.json()["generated_text"], "Hello from");
    let r = post(
        a,
        "/generate_stream",
        &[("x-mock-tokens", "3"), ("x-mock-itl-ms", "30")],
        r#"{"inputs":"abcdefgh"}"#,
    )
    .unwrap();
    let text = r.text();
    let evs: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data:"))
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(evs.len(), 3);
    assert!(evs[0]["generated_text"].is_null());
    assert!(evs[0]["details"].is_null());
    assert_eq!(evs[2]["generated_text"], "Hello from the");
    assert_eq!(evs[2]["details"]["generated_tokens"], 3);
    assert!(r.data_times[2] - r.data_times[1] >= Duration::from_millis(20));
}

#[test]
fn error_injection_by_header_and_model_tag() {
    let a = shared_mock();
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
        CHAT,
    )
    .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    for code in [500u16, 503] {
        let r = post(
            a,
            "/v1/chat/completions",
            &[("x-mock-status", &code.to_string())],
            CHAT,
        )
        .unwrap();
        assert_eq!(r.status, code);
        assert_eq!(r.json()["error"]["type"], "server_error");
    }
    let r = post(
        a,
        "/v1/chat/completions",
        &[],
        r#"{"model":"mock-429","messages":[]}"#,
    )
    .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn reset_after_tokens() {
    let a = shared_mock();
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let err = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-reset-after", "2"), ("x-mock-tokens", "10")],
        body,
    )
    .err()
    .expect("stream must be cut");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
        ),
        "{err:?}"
    );
}

#[test]
fn framing_and_slow_first_byte() {
    let a = shared_mock();
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-framing", "chunked")],
        CHAT,
    )
    .unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-framing", "close")],
        CHAT,
    )
    .unwrap();
    assert!(r.header("content-length").is_none());
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-response-bytes", "1000")],
        CHAT,
    )
    .unwrap();
    assert_eq!(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        1000
    );
    let t = Instant::now();
    let r = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-slow-first-byte-ms", "150")],
        CHAT,
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(140));
}

#[test]
fn keepalive_pipelining_and_chunked_request() {
    let a = shared_mock();
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let chunked_body = "{\"inputs\":\"abcd\"}";
    let req = format!(
        "POST /generate HTTP/1.1\r\nhost: m\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunked_body}\r\n0\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nhost: m\r\ncontent-length: {}\r\n\r\n{CHAT}GET /__mock/health HTTP/1.1\r\nhost: m\r\n\r\n",
        chunked_body.len(),
        CHAT.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut carry = Vec::new();
    let r1 = read_response_carry(&mut s, &mut carry, Instant::now()).unwrap();
    assert_eq!(r1.json()["details"]["input_length"], 1);
    let r2 = read_response_carry(&mut s, &mut carry, Instant::now()).unwrap();
    assert_eq!(r2.json()["object"], "chat.completion");
    let r3 = read_response_carry(&mut s, &mut carry, Instant::now()).unwrap();
    assert_eq!(r3.status, 200);
}

#[test]
fn malformed_and_unknown() {
    let a = shared_mock();
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(b"GARBAGE\x01 / HTTP/9\r\n\r\n").unwrap();
    let r = read_response(&mut s, Instant::now()).unwrap();
    assert_eq!(r.status, 400);
    let r = post(a, "/v1/chat/completions", &[], "{not json").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = get(a, "/v2/unknown");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(
        b"POST /v1/messages HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, Instant::now()).unwrap().status, 400);
}

#[test]
fn record_endpoint() {
    let a = mock::start(cfg()).unwrap().addr;
    post(
        a,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-test")],
        CHAT,
    )
    .unwrap();
    let r = get(a, "/__mock/requests");
    let v = r.json();
    let items = v.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["method"], "POST");
    assert_eq!(items[0]["path"], "/v1/chat/completions");
    assert_eq!(items[0]["headers"]["authorization"], "Bearer sk-test");
    assert_eq!(items[0]["body"], CHAT);
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(b"DELETE /__mock/requests HTTP/1.1\r\nhost: m\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s, Instant::now()).unwrap().status, 200);
    assert_eq!(
        get(a, "/__mock/requests").json().as_array().unwrap().len(),
        0
    );
}

#[test]
fn tls_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("openssl not available; skipping TLS test");
        return;
    }
    let mut c = cfg();
    c.tls_cert = Some(cert.clone());
    c.tls_key = Some(key);
    let a = mock::start(c).unwrap().addr;

    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cc), "localhost".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(a).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    tls.write_all(req.as_bytes()).unwrap();
    let r = read_response(&mut tls, Instant::now()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 4);
}

#[test]
fn expect_continue_and_non_stream_reset() {
    let a = shared_mock();
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: m\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            CHAT.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(CHAT.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s, Instant::now()).unwrap().status, 200);

    let err = post(
        a,
        "/v1/chat/completions",
        &[("x-mock-reset-after", "0")],
        CHAT,
    )
    .err()
    .expect("non-streaming reset must not answer");
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
    ));
}
