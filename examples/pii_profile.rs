//! Deterministic driver for `Engine::scan`: instruction-count profiling (callgrind) on the same
//! corpora as `benches/pii.rs`, and a findings digest for checking that an optimisation keeps
//! every finding bit for bit.
//!
//! ```sh
//! cargo build --release --example pii_profile
//! valgrind --tool=callgrind target/release/examples/pii_profile dense 10
//! target/release/examples/pii_profile digest   # compare the output before/after a change
//! ```
//! Modes: `dense` / `clean` (64 KiB each, scanned N times, default 10) print the findings count
//! and digest of the last scan; `digest` scans the accuracy corpus and a seeded stress corpus
//! (PII fragments, context words, digit runs and separators glued at random) with three engine
//! configs and `scan_from` at random offsets, and prints one digest per config.

#[path = "../benches/common/pii_corpus.rs"]
mod pii_corpus;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use sluice::pii::{Engine, Finding, PiiConfig};

/// Corpus size, as in the `scan/*_64k` benches.
const CORPUS_BYTES: usize = 64 * 1024;
/// Stress texts generated per engine config in `digest` mode.
const STRESS_TEXTS: usize = 20_000;
/// Tokens per stress text.
const STRESS_TOKENS_MAX: u64 = 40;

/// Fragments glued at random: entities, near-misses and context words.
const FRAGMENTS: &[&str] = &[
    "123-45-6789",
    "123 45 6789",
    "123456789",
    "078-05-1120",
    "666-12-3456",
    "123-45-67890",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "378282246310005",
    "3782 822463 10005",
    "5500 0000 0000 0004",
    "4222222222222",
    "4111 1111-1111 1111",
    "(212) 555-0142",
    "212-555-0142",
    "212.555.0142",
    "+1 212 555 0142",
    "+12125550142",
    "1-212-555-0142",
    "212 555 0142",
    "2125550142",
    "+44 20 7946 0958",
    "+49 30 901820",
    "+44 (0)20 7946 0958",
    "+81-3-1234-5678",
    "10.20.30.40",
    "192.168.1.1",
    "1.2.3.4.5",
    "256.1.1.1",
    "10.0.0.1:8080",
    "2001:db8::1",
    "fe80::1ff:fe23:4567:890a",
    "12:30:45",
    "DE89 3704 0044 0532 0130 00",
    "DE89370400440532013000",
    "GB82 WEST 1234 5698 7654 32",
    "NL91ABNA0417164300",
    "jane.doe@example.com",
    "a@b.co",
    "icon@2x.png",
    "x@1.2",
    "AKIAIOSFODNN7EXAMPLE",
    "ASIA1234567890ABCDEF",
    "sk-proj-abcDEF1234567890abcdefGHIJ",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc-_123",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n-----END RSA PRIVATE KEY-----",
    "EMP-123456",
    "Acme Corp",
    "globex",
    "T12345",
    "ssn",
    "social security",
    "ss#",
    "tax id",
    "tin",
    "card",
    "cc",
    "visa",
    "payment",
    "cardholder",
    "phone",
    "call",
    "tel",
    "text me",
    "reach",
    "ip",
    "ip address",
    "host",
    "server",
    "ipv4",
    "iban",
    "account",
    "bank",
    "order",
    "invoice",
    "version",
    "ver",
    "build",
    "v",
    "po",
    "lot",
    "serial",
    "the",
    "and",
    "words",
    "x",
    "DE",
    "AB",
    "version 1.2.3.4",
    "v2",
    "2024",
    "12",
    "1",
    "0",
    "99",
    "555",
    "0142",
];
const GLUE: &[&str] = &[
    " ", " ", " ", "", ".", "-", ",", "\n", ":", "/", "(", ")", "+", "@", "é", "_",
];

fn digest_findings(h: &mut DefaultHasher, e: &Engine, f: &[Finding]) {
    f.len().hash(h);
    for x in f {
        (
            e.entity_name(x.entity),
            x.start,
            x.end,
            x.confidence.to_bits(),
        )
            .hash(h);
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn stress_text(r: &mut Rng, s: &mut String) {
    s.clear();
    for _ in 0..=r.below(STRESS_TOKENS_MAX) {
        match r.below(8) {
            0 => {
                for _ in 0..=r.below(20) {
                    s.push(char::from(b'0' + r.below(10) as u8));
                }
            }
            1 => s.push(char::from(b'A' + r.below(26) as u8)),
            _ => s.push_str(FRAGMENTS[r.below(FRAGMENTS.len() as u64) as usize]),
        }
        s.push_str(GLUE[r.below(GLUE.len() as u64) as usize]);
    }
}

fn digest_mode() {
    let configs = [
        "{}",
        r#"{"entities":["SSN","PHONE","IP_ADDRESS","EMAIL"],"context":{"window_bytes":16}}"#,
        r#"{"custom_patterns":[{"name":"EMPLOYEE_ID","pattern":"EMP-[0-9]{6}","anchor":"EMP-"},
            {"name":"TICKET","pattern":"\\bT[0-9]{5}\\b","unanchored_ok":true}],
            "dictionaries":[{"name":"CUSTOMER","terms":["Acme Corp","Globex"]}],
            "context":{"positive":{"IP_ADDRESS":["box"],"SSN":["id"]},"negative":["example"]}}"#,
    ];
    let corpus = match std::fs::read_to_string("tests/pii_corpus/corpus.jsonl") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tests/pii_corpus/corpus.jsonl (run from the repository root): {e}");
            std::process::exit(2);
        }
    };
    for (k, c) in configs.iter().enumerate() {
        let cfg: PiiConfig = match serde_json::from_str(c) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("config {k}: {e}");
                std::process::exit(2);
            }
        };
        let engine = match Engine::new(&cfg) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("engine {k}: {e}");
                std::process::exit(2);
            }
        };
        let mut h = DefaultHasher::new();
        let mut out = Vec::new();
        let mut n = 0usize;
        // `PII_PROFILE_DUMP=1`: also print every stress text's findings, to diff two builds
        let dump = std::env::var_os("PII_PROFILE_DUMP").is_some();
        for text in [
            pii_corpus::dense(CORPUS_BYTES),
            pii_corpus::prose(CORPUS_BYTES),
        ]
        .iter()
        .map(String::as_str)
        .chain(corpus.lines())
        {
            engine.scan(text, &mut out);
            n += out.len();
            digest_findings(&mut h, &engine, &out);
        }
        let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ k as u64);
        let mut s = String::new();
        for _ in 0..STRESS_TEXTS {
            stress_text(&mut r, &mut s);
            engine.scan(&s, &mut out);
            n += out.len();
            digest_findings(&mut h, &engine, &out);
            if dump {
                let f: Vec<_> = out
                    .iter()
                    .map(|x| (engine.entity_name(x.entity), x.start, x.end, x.confidence))
                    .collect();
                println!("{k}\t{s:?}\t{f:?}");
            }
            let mut from = r.below(s.len() as u64 + 1) as usize;
            while !s.is_char_boundary(from) {
                from -= 1;
            }
            engine.scan_from(&s, from, &mut out);
            n += out.len();
            digest_findings(&mut h, &engine, &out);
        }
        println!("config {k}: {n} findings, digest {:016x}", h.finish());
    }
}

/// `request N`: `redact_request` N times on `pii_corpus::chat_body` (the body of
/// `redact_request/chat_4k` in `benches/pii.rs`): the JSON-aware request path, for instruction
/// counts.
fn request_mode(reps: usize) {
    let body = pii_corpus::chat_body();
    let engine = match Engine::new(&PiiConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine: {e}");
            std::process::exit(2);
        }
    };
    let mut n = 0;
    for _ in 0..reps {
        match sluice::pii::redact_request(&engine, std::hint::black_box(&body), None) {
            Ok(o) => n += o.findings().len(),
            Err(e) => {
                eprintln!("redact_request: {e}");
                std::process::exit(2);
            }
        }
    }
    println!("request: {} bytes, {n} findings", body.len());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "dense".into());
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let text = match which.as_str() {
        "dense" => pii_corpus::dense(CORPUS_BYTES),
        "clean" => pii_corpus::prose(CORPUS_BYTES),
        "digest" => return digest_mode(),
        "request" => return request_mode(reps),
        other => {
            eprintln!("unknown mode {other:?} (dense | clean | digest | request)");
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
    let mut out = Vec::new();
    for _ in 0..reps {
        engine.scan(std::hint::black_box(&text), &mut out);
    }
    let mut h = DefaultHasher::new();
    digest_findings(&mut h, &engine, &out);
    println!(
        "{which}: {} bytes, {} findings, digest {:016x}",
        text.len(),
        out.len(),
        h.finish()
    );
}
