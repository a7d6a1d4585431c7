//! Benchmarks of `sluice::inspect` (criterion, byte/element throughput).
//!
//! * `sse/*`: SSE splitting of a realistic 64-token OpenAI chat stream (fed as one read and in
//!   1 KiB reads) and of a large stream (16 Ki events in 16 KiB reads; 4 KiB events).
//!   Goal: ≥ 2 GB/s per core.
//! * `usage/*`: full usage extraction (splitting + prefilter + the few JSON parses) per event;
//!   throughput is in events, so criterion's time per iteration / events = ns per event.
//! * `strip/*`: the include-usage stripper on a 64-token stream in 1 KiB reads.
//! * `estimate/*`: BPE token counting speed (and, printed once, the table build time).
//! * `request/*`: request inspection of a small chat body, simd-json (the shipped path) vs a
//!   `serde_json::Value` DOM doing the same extraction; and include-usage injection.
//!
//! Run: `cargo bench --bench inspect -- --warm-up-time 1 --measurement-time 3`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice::inspect::estimate;
use sluice::inspect::{
    inject_include_usage, inspect_request, Dialect, Forward, NdjsonSplitter, SseSplitter,
    UsageAccumulator, UsageChunkStripper,
};

fn chat_chunk(i: usize, content: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-AZ3kQ8pYc1xHt9Vn0Lr5mE2bW7uJd\",\"object\":\"chat.completion.chunk\",\
         \"created\":1732882400,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\
         \"system_fingerprint\":\"fp_0705bf87c0\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}{i}\"}},\
         \"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )
}

/// A realistic OpenAI chat stream with `n` content chunks, include_usage on.
fn openai_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    s.push_str("data: {\"id\":\"chatcmpl-AZ3kQ8pYc1xHt9Vn0Lr5mE2bW7uJd\",\"object\":\"chat.completion.chunk\",\"created\":1732882400,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n");
    for i in 0..n {
        s.push_str(&chat_chunk(i, " token"));
    }
    s.push_str("data: {\"id\":\"chatcmpl-AZ3kQ8pYc1xHt9Vn0Lr5mE2bW7uJd\",\"object\":\"chat.completion.chunk\",\"created\":1732882400,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":13,\"completion_tokens\":64,\"total_tokens\":77,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\ndata: [DONE]\n\n");
    s.into_bytes()
}

fn anthropic_stream(n: usize) -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
    for i in 0..n {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" word{i}\"}}}}\n\n"));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":64}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn ollama_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!("{{\"model\":\"llama3.2\",\"created_at\":\"2024-11-29T12:00:00.{i:03}Z\",\"message\":{{\"role\":\"assistant\",\"content\":\" w{i}\"}},\"done\":false}}\n"));
    }
    s.push_str("{\"model\":\"llama3.2\",\"created_at\":\"2024-11-29T12:00:09.912Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"total_duration\":4883583458,\"load_duration\":1334875,\"prompt_eval_count\":26,\"prompt_eval_duration\":342546000,\"eval_count\":64,\"eval_duration\":4535599000}\n");
    s.into_bytes()
}

fn count_sse(input: &[u8], read_bytes: usize) -> usize {
    let mut s = SseSplitter::new();
    let mut n = 0usize;
    for c in input.chunks(read_bytes) {
        s.feed(c, |e| n += e.data.len() & 1 | 1);
    }
    n
}

fn bench_sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    let small = openai_stream(64);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("openai_64_tokens/one_read", |b| {
        b.iter(|| count_sse(black_box(&small), usize::MAX))
    });
    g.bench_function("openai_64_tokens/1KiB_reads", |b| {
        b.iter(|| count_sse(black_box(&small), 1024))
    });
    let large = openai_stream(16 * 1024);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("openai_16Ki_events/16KiB_reads", |b| {
        b.iter(|| count_sse(black_box(&large), 16 * 1024))
    });
    let mut big_events = Vec::new();
    let payload = "x".repeat(4096);
    for _ in 0..1024 {
        big_events.extend_from_slice(format!("data: {{\"p\":\"{payload}\"}}\n\n").as_bytes());
    }
    g.throughput(Throughput::Bytes(big_events.len() as u64));
    g.bench_function("4KiB_events/16KiB_reads", |b| {
        b.iter(|| count_sse(black_box(&big_events), 16 * 1024))
    });
    let nd = ollama_stream(4096);
    g.throughput(Throughput::Bytes(nd.len() as u64));
    g.bench_function("ndjson_ollama_4Ki_lines/16KiB_reads", |b| {
        b.iter(|| {
            let mut s = NdjsonSplitter::new();
            let mut n = 0usize;
            for c in black_box(&nd).chunks(16 * 1024) {
                s.feed(c, |l| n += l.len() & 1 | 1);
            }
            n
        })
    });
    g.finish();
}

fn bench_usage(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage");
    let cases: [(&str, Dialect, Vec<u8>, u64); 3] = [
        (
            "openai_chat_64_tokens",
            Dialect::OpenAiChat,
            openai_stream(64),
            67,
        ),
        (
            "anthropic_64_tokens",
            Dialect::Anthropic,
            anthropic_stream(64),
            69,
        ),
        ("ollama_64_tokens", Dialect::Ollama, ollama_stream(64), 65),
    ];
    for (name, dialect, body, events) in cases {
        g.throughput(Throughput::Elements(events));
        g.bench_function(format!("{name}/per_event"), |b| {
            b.iter(|| {
                let mut acc = UsageAccumulator::new(dialect, true);
                acc.set_keep_content(false);
                for c in black_box(&body).chunks(1024) {
                    acc.on_body_bytes(c);
                }
                acc.finish(false)
            })
        });
    }
    g.finish();
}

const CHAT_BODY: &[u8] = br#"{"model":"gpt-4o-mini","stream":true,"max_completion_tokens":512,"temperature":0.2,"messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly."},{"role":"user","content":"What is the capital of France? Also, name two famous landmarks there."},{"role":"assistant","content":"Paris. The Eiffel Tower and the Louvre."},{"role":"user","content":[{"type":"text","text":"And what about Italy?"}]}]}"#;

/// (model, stream, max_tokens, message_count, prompt_bytes)
type Facts = (Option<String>, bool, Option<u64>, u32, u64);

/// The same extraction as `inspect_request(OpenAiChat, ..)`, on a `serde_json::Value` DOM.
fn serde_chat_facts(body: &[u8]) -> Option<Facts> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let o = v.as_object()?;
    let model = o.get("model").and_then(|m| m.as_str()).map(str::to_owned);
    let stream = o.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
    let max = o
        .get("max_completion_tokens")
        .or_else(|| o.get("max_tokens"))
        .and_then(|m| m.as_u64());
    let msgs = o.get("messages").and_then(|m| m.as_array());
    let mut bytes = 0u64;
    for m in msgs.into_iter().flatten() {
        match m.get("content") {
            Some(serde_json::Value::String(s)) => bytes += s.len() as u64,
            Some(serde_json::Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(|t| t.as_str()) {
                        bytes += t.len() as u64;
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        model,
        stream,
        max,
        msgs.map_or(0, |m| m.len() as u32),
        bytes,
    ))
}

fn bench_strip(c: &mut Criterion) {
    let mut g = c.benchmark_group("strip");
    let small = openai_stream(64);
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("openai_64_tokens/1KiB_reads", |b| {
        b.iter(|| {
            let mut s = UsageChunkStripper::new();
            let mut n = 0usize;
            for c in black_box(&small).chunks(1024) {
                s.feed(c, |f| match f {
                    Forward::Chunk(r) => n += r.len(),
                    Forward::Held(h) => n += h.len(),
                });
            }
            s.finish(|_| {});
            n
        })
    });
    g.finish();
}

fn bench_estimate(c: &mut Criterion) {
    let t = std::time::Instant::now();
    estimate::warm_up();
    eprintln!(
        "estimate::warm_up (build o200k_base + cl100k_base): {:?}",
        t.elapsed()
    );
    let mut g = c.benchmark_group("estimate");
    let text = "The sky appears blue because of Rayleigh scattering: shorter wavelengths of \
                sunlight are scattered more strongly by the molecules in the atmosphere. "
        .repeat(28);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("o200k_count/4KiB_text", |b| {
        b.iter(|| estimate::count_tokens(estimate::Encoding::O200kBase, black_box(&text)))
    });
    g.finish();
}

fn bench_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Bytes(CHAT_BODY.len() as u64));
    g.bench_function("inspect_small_chat/simd_json", |b| {
        b.iter(|| inspect_request(Dialect::OpenAiChat, black_box(CHAT_BODY)))
    });
    g.bench_function("inspect_small_chat/serde_json_value", |b| {
        b.iter(|| serde_chat_facts(black_box(CHAT_BODY)))
    });
    g.bench_function("inject_include_usage/small_chat", |b| {
        b.iter(|| inject_include_usage(black_box(CHAT_BODY)))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_sse,
    bench_usage,
    bench_strip,
    bench_estimate,
    bench_request
);
criterion_main!(benches);
