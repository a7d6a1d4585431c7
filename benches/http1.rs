//! Criterion benchmarks for `sluice::http1`, reported as bytes/second.
//!
//! * `parse_request/openai_head`: a realistic OpenAI Python SDK request head (~15 headers).
//! * `parse_response/openai_head`: a realistic OpenAI streaming response head.
//! * `chunked/sse_small_chunks`: an SSE-like body of ~100-byte chunks, fed in 16 KiB reads.
//! * `chunked/large_16k_chunks`: a 1 MiB body of 16 KiB chunks, fed in 64 KiB reads.
//!
//! Run: `cargo bench --bench http1 -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::http1::{
    parse_request, parse_response, write_chunk, write_last_chunk, BodyDecoder, BodyKind, HeadLimits,
};

const OPENAI_REQUEST_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\n\
Host: api.openai.com\r\n\
Accept-Encoding: gzip, deflate\r\n\
Connection: keep-alive\r\n\
Accept: application/json\r\n\
Content-Type: application/json\r\n\
User-Agent: OpenAI/Python 1.54.4\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.4\r\n\
X-Stainless-OS: Linux\r\n\
X-Stainless-Arch: x64\r\n\
X-Stainless-Runtime: CPython\r\n\
X-Stainless-Runtime-Version: 3.12.7\r\n\
Authorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij\r\n\
X-Stainless-Async: false\r\n\
X-Stainless-Retry-Count: 0\r\n\
Content-Length: 1234\r\n\
\r\n";

const OPENAI_RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Sun, 29 Nov 2026 16:00:00 GMT\r\n\
Content-Type: text/event-stream; charset=utf-8\r\n\
Transfer-Encoding: chunked\r\n\
Connection: keep-alive\r\n\
access-control-expose-headers: X-Request-ID\r\n\
openai-organization: user-abc123\r\n\
openai-processing-ms: 187\r\n\
openai-version: 2020-10-01\r\n\
x-ratelimit-limit-requests: 10000\r\n\
x-ratelimit-limit-tokens: 2000000\r\n\
x-ratelimit-remaining-requests: 9999\r\n\
x-ratelimit-remaining-tokens: 1999950\r\n\
x-ratelimit-reset-requests: 6ms\r\n\
x-ratelimit-reset-tokens: 1ms\r\n\
x-request-id: req_0123456789abcdef0123456789abcdef\r\n\
strict-transport-security: max-age=31536000; includeSubDomains; preload\r\n\
\r\n";

fn sse_body(events: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..events {
        let ev = format!(
            "data: {{\"id\":\"chatcmpl-{i:06}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"delta\":{{\"content\":\"tok\"}}}}]}}\n\n"
        );
        write_chunk(&mut out, ev.as_bytes());
    }
    write_last_chunk(&mut out);
    out
}

fn large_body(total: usize, chunk: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
    let mut out = Vec::new();
    for _ in 0..total / chunk {
        write_chunk(&mut out, &data);
    }
    write_last_chunk(&mut out);
    out
}

/// Decode `body` fed in `read`-sized pieces, as the proxy would after each socket read.
fn decode(body: &[u8], read: usize) -> usize {
    let mut d = BodyDecoder::new(BodyKind::Chunked);
    let mut payload = 0usize;
    for piece in body.chunks(read) {
        match d.advance(piece, |s| payload += black_box(s).len()) {
            Ok(p) if p.done => break,
            Ok(_) => {}
            Err(e) => panic!("bench body invalid: {e}"),
        }
    }
    assert!(d.is_done());
    payload
}

fn benches(c: &mut Criterion) {
    let limits = HeadLimits::default();

    let mut g = c.benchmark_group("parse_request");
    g.throughput(Throughput::Bytes(OPENAI_REQUEST_HEAD.len() as u64));
    g.bench_function("openai_head", |b| {
        b.iter(|| {
            let r = parse_request(black_box(OPENAI_REQUEST_HEAD), &limits);
            black_box(r.ok().flatten().map(|(h, n)| (h.header_count(), n)))
        })
    });
    // Baseline: httparse alone (no copy, no framing checks), to show our overhead.
    g.bench_function("httparse_only_baseline", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            black_box(req.parse(black_box(OPENAI_REQUEST_HEAD)).is_ok())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("parse_response");
    g.throughput(Throughput::Bytes(OPENAI_RESPONSE_HEAD.len() as u64));
    g.bench_function("openai_head", |b| {
        b.iter(|| {
            let r = parse_response(black_box(OPENAI_RESPONSE_HEAD), &limits);
            black_box(r.ok().flatten().map(|(h, n)| (h.status(), n)))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("chunked");
    let sse = sse_body(2000);
    g.throughput(Throughput::Bytes(sse.len() as u64));
    g.bench_function("sse_small_chunks", |b| {
        b.iter(|| decode(black_box(&sse), 16 * 1024))
    });
    let large = large_body(1 << 20, 16 * 1024);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("large_16k_chunks", |b| {
        b.iter(|| decode(black_box(&large), 64 * 1024))
    });
    g.finish();
}

criterion_group!(http1, benches);
criterion_main!(http1);
