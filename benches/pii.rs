//! Criterion benches for `sluice::pii` (release, `Throughput::Bytes`):
//! * `scan/clean_4k`, `scan/clean_64k`: English prose without PII (goal >= 1 GB/s per core).
//! * `scan/dense_64k`: prose with an entity every ~60 bytes (goal >= 300 MB/s).
//! * `redact_request/chat_4k`: JSON request redaction of a 4 KiB chat body with a few entities.
//! * `stream/deltas_4k`: the stream redactor fed 4-byte deltas.
//!
//! Run: `cargo bench --bench pii -- --warm-up-time 1 --measurement-time 3`.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::pii::{redact_request, Engine, PiiConfig, StreamRedactor};

#[path = "common/pii_corpus.rs"]
mod pii_corpus;
use pii_corpus::{chat_body, dense, prose};

fn benches(c: &mut Criterion) {
    let engine = Arc::new(Engine::new(&PiiConfig::default()).expect("engine"));
    let mut g = c.benchmark_group("scan");
    for (name, text) in [
        ("clean_4k", prose(4096)),
        ("clean_64k", prose(65536)),
        ("dense_64k", dense(65536)),
    ] {
        let mut out = Vec::new();
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                engine.scan(black_box(&text), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();

    let body = chat_body();
    let mut g = c.benchmark_group("redact_request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("chat_4k", |b| {
        b.iter(|| {
            black_box(redact_request(&engine, black_box(&body), None).map(|o| o.findings().len()))
        })
    });
    g.finish();

    let text = format!("{} 4111 1111 1111 1111 {}", prose(2000), prose(2000));
    let mut g = c.benchmark_group("stream");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("deltas_4k", |b| {
        b.iter(|| {
            let mut r = StreamRedactor::new(Arc::clone(&engine));
            let mut n = 0;
            for chunk in text.as_bytes().chunks(4) {
                n += r.push(std::str::from_utf8(chunk).unwrap_or("")).len();
            }
            n + r.finish().len()
        })
    });
    g.finish();
}

criterion_group!(pii, benches);
criterion_main!(pii);
