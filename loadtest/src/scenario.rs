//! Scenario files (`loadtest/scenarios/*.yaml`): what to send and how hard.
//!
//! Owns: the YAML schema, its strict parsing and conversion into [`crate::run::RunConfig`]
//! pieces, plus generated bodies (the 32 KiB PII prompt) and duration strings. Invariants:
//! every struct uses `deny_unknown_fields`; a parse error always names the file, line, column
//! and the field path (via `serde_path_to_error`); a scenario has exactly one of `concurrency`
//! and `rate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::run::{Mode, RequestSpec};

/// Scenario errors; each names the file.
#[derive(Debug, Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: field `{path}`: {msg}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        path: String,
        msg: String,
    },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
}

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub requests: Vec<RequestDef>,
    pub load: LoadDef,
    /// Interleaved rounds per target in `compare`.
    #[serde(default = "default_rounds")]
    pub rounds: u32,
    /// Extra `mock` flags when `compare --start-mock` starts the upstream.
    #[serde(default)]
    pub mock_args: Vec<String>,
    /// Report (RSS during load - idle RSS) / concurrency as memory per stream.
    #[serde(default)]
    pub per_stream_memory: bool,
}

fn default_rounds() -> u32 {
    3
}

/// One request template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDef {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Literal body.
    #[serde(default)]
    pub body: Option<String>,
    /// Body given as YAML, sent as JSON.
    #[serde(default)]
    pub body_json: Option<serde_json::Value>,
    /// Body read from a file relative to the scenario.
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    /// Generated body.
    #[serde(default)]
    pub body_gen: Option<BodyGen>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_method() -> String {
    "POST".into()
}
fn default_weight() -> u32 {
    1
}

/// Kinds of generated bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenKind {
    /// An OpenAI chat request whose user message is `bytes` long with planted PII (SSNs, card
    /// numbers, e-mail addresses).
    PiiChat,
}

/// A generated body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyGen {
    pub kind: GenKind,
    pub bytes: usize,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
}

/// Load shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadDef {
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub rate: Option<f64>,
    #[serde(default)]
    pub connections: Option<usize>,
    #[serde(default = "default_duration")]
    pub duration: String,
    #[serde(default = "default_warmup")]
    pub warmup: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_duration() -> String {
    "10s".into()
}
fn default_warmup() -> String {
    "2s".into()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_workers() -> usize {
    1
}

/// Largest generated body.
pub const MAX_GEN_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * mul < 86_400.0).then(|| Duration::from_secs_f64(v * mul))
}

/// Parses scenario text; `file` is used in error messages.
pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let sc: Scenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = inner.location().map_or((0, 0), |l| (l.line(), l.column()));
        ScenarioError::Parse {
            file: file.into(),
            line,
            column,
            path,
            msg: inner.to_string(),
        }
    })?;
    let invalid = |msg: String| ScenarioError::Invalid {
        file: file.into(),
        msg,
    };
    if sc.requests.is_empty() {
        return Err(invalid("`requests` is empty".into()));
    }
    match (sc.load.concurrency, sc.load.rate) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "set either load.concurrency or load.rate, not both".into(),
            ))
        }
        (None, None) => return Err(invalid("set load.concurrency or load.rate".into())),
        (Some(0), _) => return Err(invalid("load.concurrency must be > 0".into())),
        (_, Some(r)) if !(r.is_finite() && r > 0.0) => {
            return Err(invalid("load.rate must be > 0".into()))
        }
        _ => {}
    }
    for (what, v) in [
        ("duration", &sc.load.duration),
        ("warmup", &sc.load.warmup),
        ("timeout", &sc.load.timeout),
    ] {
        if parse_duration(v).is_none() {
            return Err(invalid(format!(
                "load.{what}: bad duration {v:?} (use 10s, 500ms, 2m)"
            )));
        }
    }
    for (i, r) in sc.requests.iter().enumerate() {
        let n = [
            r.body.is_some(),
            r.body_json.is_some(),
            r.body_file.is_some(),
            r.body_gen.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n > 1 {
            return Err(invalid(format!(
                "requests[{i}]: set at most one of body, body_json, body_file, body_gen"
            )));
        }
    }
    Ok(sc)
}

/// Reads and parses a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        file: file.clone(),
        source,
    })?;
    parse(&text, &file)
}

impl Scenario {
    /// Builds the request templates; `base` resolves `body_file`.
    pub fn request_specs(
        &self,
        base: &Path,
        file: &str,
    ) -> Result<Vec<RequestSpec>, ScenarioError> {
        self.requests
            .iter()
            .map(|r| {
                let body = if let Some(b) = &r.body {
                    b.clone().into_bytes()
                } else if let Some(v) = &r.body_json {
                    serde_json::to_vec(v).map_err(|e| ScenarioError::Invalid {
                        file: file.into(),
                        msg: e.to_string(),
                    })?
                } else if let Some(f) = &r.body_file {
                    let p = base.join(f);
                    std::fs::read(&p).map_err(|source| ScenarioError::Read {
                        file: p.display().to_string(),
                        source,
                    })?
                } else if let Some(g) = &r.body_gen {
                    gen_body(g)
                } else {
                    Vec::new()
                };
                Ok(RequestSpec {
                    method: r.method.to_ascii_uppercase(),
                    path: r.path.clone(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    body,
                    weight: r.weight,
                })
            })
            .collect()
    }

    pub fn mode(&self) -> Mode {
        match (self.load.concurrency, self.load.rate) {
            (_, Some(r)) => Mode::Open { rate_per_s: r },
            (Some(c), None) => Mode::Closed { concurrency: c },
            (None, None) => Mode::Closed { concurrency: 1 },
        }
    }

    pub fn durations(&self) -> (Duration, Duration, Duration) {
        let d = |s: &str, def: u64| parse_duration(s).unwrap_or(Duration::from_secs(def));
        (
            d(&self.load.duration, 10),
            d(&self.load.warmup, 2),
            d(&self.load.timeout, 30),
        )
    }
}

/// Builds a generated body.
pub fn gen_body(g: &BodyGen) -> Vec<u8> {
    match g.kind {
        GenKind::PiiChat => {
            let text = pii_text(g.bytes.min(MAX_GEN_BODY_BYTES));
            serde_json::to_vec(&serde_json::json!({
                "model": g.model.as_deref().unwrap_or("gpt-4o-mini"),
                "stream": g.stream,
                "messages": [
                    {"role": "system", "content": "You are a support assistant."},
                    {"role": "user", "content": text}
                ]
            }))
            .unwrap_or_default()
        }
    }
}

/// Deterministic filler text of exactly `bytes` bytes with PII planted every ~512 bytes.
pub fn pii_text(bytes: usize) -> String {
    const FILLER: &str =
        "The customer reported that the invoice was wrong and asked for a refund. ";
    let pii = [
        "SSN 123-45-6789",
        "card 4111 1111 1111 1111",
        "email jane.doe@example.com",
        "SSN 078-05-1120",
        "card 5500-0000-0000-0004",
        "email john.smith+billing@corp.example.org",
    ];
    let mut s = String::with_capacity(bytes + 128);
    let mut i = 0;
    while s.len() < bytes {
        s.push_str(FILLER);
        if s.len() / 512 > i / 512 || i == 0 {
            s.push_str(pii[(s.len() / 512) % pii.len()]);
            s.push_str(". ");
        }
        i = s.len();
    }
    // Cut on a character boundary (all ASCII) at exactly `bytes`.
    s.truncate(bytes);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: t\nrequests:\n  - path: /v1/chat/completions\n    body: '{}'\nload:\n  concurrency: 4\n  duration: 1s\n";

    #[test]
    fn parses_good_scenario() {
        let s = parse(GOOD, "t.yaml").unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.mode(), Mode::Closed { concurrency: 4 });
        assert_eq!(s.durations().0, Duration::from_secs(1));
        assert_eq!(s.rounds, 3);
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let bad = GOOD.replace("  duration: 1s", "  duration: 1s\n  duraton: 2s");
        let e = parse(&bad, "scen.yaml").unwrap_err().to_string();
        assert!(e.starts_with("scen.yaml:8:"), "{e}");
        assert!(e.contains("duraton"), "{e}");
        assert!(e.contains("load"), "{e}");
        let bad = GOOD.replace("    body: '{}'", "    body: '{}'\n    bodyy: 1");
        let e = parse(&bad, "scen.yaml").unwrap_err().to_string();
        assert!(
            e.contains("scen.yaml:5:") && e.contains("bodyy") && e.contains("requests[0]"),
            "{e}"
        );
    }

    #[test]
    fn invalid_combinations() {
        let both = GOOD.replace("  concurrency: 4", "  concurrency: 4\n  rate: 10");
        assert!(parse(&both, "f")
            .unwrap_err()
            .to_string()
            .contains("not both"));
        let dur = GOOD.replace("1s", "soon");
        assert!(parse(&dur, "f")
            .unwrap_err()
            .to_string()
            .contains("bad duration"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn pii_body_is_exact_and_planted() {
        let t = pii_text(32 * 1024);
        assert_eq!(t.len(), 32 * 1024);
        assert!(t.contains("123-45-6789"));
        assert!(t.contains("4111 1111 1111 1111"));
        assert!(t.contains("jane.doe@example.com"));
        let b = gen_body(&BodyGen {
            kind: GenKind::PiiChat,
            bytes: 1000,
            model: None,
            stream: false,
        });
        let sc = parse(
            &GOOD.replace(
                "    body: '{}'",
                "    body_gen: {kind: pii_chat, bytes: 64}",
            ),
            "f",
        )
        .unwrap();
        let specs = sc.request_specs(Path::new("."), "f").unwrap();
        assert!(specs[0].body.len() > 64);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["messages"][1]["content"].as_str().unwrap().len(), 1000);
    }
}
