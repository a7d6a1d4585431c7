//! Prints JSON accuracy (per entity) and scan throughput of `sluice::pii` on a JSONL corpus, for
//! `scripts/presidio_compare.py`. Usage: `cargo run --release --example pii_eval -- CORPUS`.

use std::time::Instant;

use sluice::pii::fuzzing::corpus_metrics;
use sluice::pii::{Engine, PiiConfig};

/// Minimum measured scanning volume for a stable throughput number.
const MEASURE_BYTES_MIN: usize = 64 * 1024 * 1024;

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/pii_corpus/corpus.jsonl".into());
    let corpus = match std::fs::read_to_string(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("read {path}: {e}");
            std::process::exit(2);
        }
    };
    let engine = match Engine::new(&PiiConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine: {e}");
            std::process::exit(2);
        }
    };
    let (m, _) = corpus_metrics(&engine, &corpus);
    let texts: Vec<String> = corpus
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    let total: usize = texts.iter().map(String::len).sum();
    let mut found = Vec::new();
    let mut scanned = 0usize;
    let mut hits = 0usize;
    let c0 = thread_cpu_secs();
    let t0 = Instant::now();
    while scanned < MEASURE_BYTES_MIN {
        for t in &texts {
            engine.scan(t, &mut found);
            hits += found.len();
        }
        scanned += total;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu_secs = thread_cpu_secs().zip(c0).map(|(a, b)| a - b);
    let mut ents = serde_json::Map::new();
    for (k, c) in &m {
        ents.insert(
            k.clone(),
            serde_json::json!({"tp": c.tp, "fp": c.fp, "fn": c.fn_, "precision": c.precision(), "recall": c.recall()}),
        );
    }
    let out = serde_json::json!({
        "entities": ents,
        "snippets": texts.len(),
        "corpus_bytes": total,
        "mb_per_s": scanned as f64 / secs / 1e6,
        "mb_per_cpu_s": cpu_secs.map(|c| scanned as f64 / c.max(1e-9) / 1e6),
        "findings_checksum": hits,
    });
    println!("{out}");
}

/// CPU time of this thread (user + system) from `/proc/thread-self/stat`, in seconds (10 ms
/// ticks). The machine is shared, so wall-clock throughput understates per-core speed.
fn thread_cpu_secs() -> Option<f64> {
    /// Linux USER_HZ.
    const TICKS_PER_SEC: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // fields after ")" start at field 3 (state); utime = field 14, stime = field 15
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / TICKS_PER_SEC)
}
