//! Request inspection: facts about a model request body, and include-usage injection.
//!
//! Owns: [`inspect_request`] (model, stream flag, output-token cap, message count, prompt size,
//! `stream_options.include_usage`) for every [`Dialect`], and [`inject_include_usage`], the
//! byte-preserving rewrite that asks an OpenAI chat/completions stream for its usage chunk.
//!
//! Parsing uses simd-json on a copy of the body in the thread's reusable scratch (the body
//! itself is still forwarded). simd-json was measured against `serde_json::Value` on the same
//! extraction (see `benches/inspect.rs`, `request/*`) and kept because it is faster; numbers are
//! in `docs/inspection.md`.
//!
//! Leniency: only a body that is not JSON, or not a JSON object, is an error. A field with an
//! unexpected type is ignored (`None`/default): the upstream is the judge of request validity,
//! the inspector only observes.
//!
//! Prompt size is the sum of the *unescaped* UTF-8 byte lengths of the text parts (message
//! contents, system prompts, `prompt`/`input`/`inputs` strings); images, tools and token-id
//! prompts are not counted.

use super::dialect::{path_forces_stream, Dialect};
use super::json::with_scratch;
use super::InspectError;
use simd_json::prelude::*;
use simd_json::tape::Value;

/// Suggested cap on the prompt text kept for token estimation
/// ([`RequestOptions::prompt_text_bytes_max`]). Estimation runs the BPE over it on the worker
/// thread at `finish`, so it is kept small; beyond it the estimate is extrapolated by bytes.
pub const PROMPT_TEXT_BYTES_MAX: usize = 8 * 1024;

/// What the inspector learned from a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// `model` as sent (TGI requests usually have none).
    pub model: Option<String>,
    /// Whether the client asked for a streamed response.
    pub stream: bool,
    /// Output-token cap: `max_completion_tokens` | `max_tokens` | `max_output_tokens` |
    /// TGI `parameters.max_new_tokens` | Ollama `options.num_predict` (when > 0).
    pub max_tokens: Option<u64>,
    /// Chat/Anthropic/Ollama messages, Responses input items, or prompt/input strings.
    pub message_count: u32,
    /// Sum of the unescaped text bytes of the prompt.
    pub prompt_bytes: u64,
    /// `stream_options.include_usage` as sent.
    pub include_usage: Option<bool>,
    /// Prompt text kept for token estimation (only with
    /// [`RequestOptions::prompt_text_bytes_max`] > 0; parts joined with `\n`, cut at a char
    /// boundary).
    pub prompt_text: String,
    /// True when `prompt_text` was cut at the cap.
    pub prompt_text_truncated: bool,
}

/// Options of [`inspect_request_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOptions<'a> {
    /// Request path, for TGI's `/generate_stream` (stream by path). Empty when unknown.
    pub path: &'a str,
    /// Keep up to this many bytes of prompt text in [`RequestFacts::prompt_text`] (0: none).
    pub prompt_text_bytes_max: usize,
}

/// Inspect a request body (no path, no prompt text kept). See [`inspect_request_with`].
pub fn inspect_request(dialect: Dialect, body: &[u8]) -> Result<RequestFacts, InspectError> {
    inspect_request_with(dialect, body, &RequestOptions::default())
}

/// Inspect a request body. The proxy should pass the path (TGI streams by path).
pub fn inspect_request_with(
    dialect: Dialect,
    body: &[u8],
    opts: &RequestOptions<'_>,
) -> Result<RequestFacts, InspectError> {
    let facts = with_scratch(|s| {
        s.parse(body, |root| {
            if !root.is_object() {
                return Err(InspectError::NotAnObject);
            }
            let mut w = Walker {
                facts: RequestFacts::default(),
                keep: opts.prompt_text_bytes_max,
            };
            w.request(dialect, root);
            Ok(w.facts)
        })
    });
    let mut facts = facts.unwrap_or(Err(InspectError::InvalidJson))?;
    if dialect == Dialect::Tgi && path_forces_stream(opts.path) {
        facts.stream = true;
    }
    Ok(facts)
}

struct Walker {
    facts: RequestFacts,
    keep: usize,
}

fn get_u64(v: Value<'_, '_>, key: &str) -> Option<u64> {
    v.get(key).and_then(|x| x.as_u64())
}

impl Walker {
    fn request(&mut self, dialect: Dialect, root: Value<'_, '_>) {
        let f = &mut self.facts;
        f.model = root
            .get("model")
            .and_then(|m| m.into_string())
            .map(str::to_owned);
        let stream_default = dialect == Dialect::Ollama;
        f.stream = root
            .get("stream")
            .and_then(|s| s.as_bool())
            .unwrap_or(stream_default);
        f.include_usage = root
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(|b| b.as_bool());
        f.max_tokens = match dialect {
            Dialect::OpenAiChat => {
                get_u64(root, "max_completion_tokens").or_else(|| get_u64(root, "max_tokens"))
            }
            Dialect::OpenAiCompletions | Dialect::Anthropic => get_u64(root, "max_tokens"),
            Dialect::OpenAiResponses => get_u64(root, "max_output_tokens"),
            Dialect::OpenAiEmbeddings => None,
            Dialect::Tgi => root
                .get("parameters")
                .and_then(|p| get_u64(p, "max_new_tokens")),
            Dialect::Ollama => root
                .get("options")
                .and_then(|o| o.get("num_predict"))
                .and_then(|n| n.as_i64())
                .and_then(|n| u64::try_from(n).ok())
                .filter(|&n| n > 0),
        };
        match dialect {
            Dialect::OpenAiChat | Dialect::Anthropic | Dialect::Ollama => {
                if let Some(sys) = root.get("system") {
                    self.content(sys, 0);
                }
                if let Some(msgs) = root.get("messages").and_then(|m| m.as_array()) {
                    self.facts.message_count = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
                    for m in msgs.iter() {
                        if let Some(c) = m.get("content") {
                            self.content(c, 0);
                        }
                    }
                }
                if let Some(p) = root.get("prompt") {
                    self.prompts(p);
                }
            }
            Dialect::OpenAiCompletions => {
                if let Some(p) = root.get("prompt") {
                    self.prompts(p);
                }
            }
            Dialect::OpenAiEmbeddings => {
                if let Some(p) = root.get("input") {
                    self.prompts(p);
                }
            }
            Dialect::OpenAiResponses => {
                if let Some(i) = root.get("instructions") {
                    self.content(i, 0);
                }
                match root.get("input") {
                    Some(i) if i.is_array() => {
                        if let Some(items) = i.as_array() {
                            self.facts.message_count =
                                u32::try_from(items.len()).unwrap_or(u32::MAX);
                            for item in items.iter() {
                                match item.get("content") {
                                    Some(c) => self.content(c, 0),
                                    None => self.content(item, 1),
                                }
                            }
                        }
                    }
                    Some(i) => {
                        self.facts.message_count = 1;
                        self.content(i, 0);
                    }
                    None => {}
                }
            }
            Dialect::Tgi => {
                if let Some(p) = root.get("inputs") {
                    self.prompts(p);
                }
            }
        }
    }

    /// `prompt`/`input`: a string or an array of strings (token-id arrays are not text).
    fn prompts(&mut self, v: Value<'_, '_>) {
        if let Some(s) = v.into_string() {
            self.facts.message_count = self.facts.message_count.saturating_add(1);
            self.text(s);
        } else if let Some(arr) = v.as_array() {
            for item in arr.iter() {
                if let Some(s) = item.into_string() {
                    self.facts.message_count = self.facts.message_count.saturating_add(1);
                    self.text(s);
                }
            }
        }
    }

    /// Message content: a string, or an array of parts with `text` (or nested `content`).
    fn content(&mut self, v: Value<'_, '_>, depth: u8) {
        if let Some(s) = v.into_string() {
            self.text(s);
        } else if let Some(parts) = v.as_array() {
            if depth > 2 {
                return;
            }
            for p in parts.iter() {
                self.content(p, depth + 1);
            }
        } else if v.is_object() {
            if let Some(t) = v.get("text").and_then(|t| t.into_string()) {
                self.text(t);
            } else if depth <= 2 {
                if let Some(c) = v.get("content") {
                    self.content(c, depth + 1);
                }
            }
        }
    }

    fn text(&mut self, s: &str) {
        let f = &mut self.facts;
        f.prompt_bytes = f.prompt_bytes.saturating_add(s.len() as u64);
        if self.keep == 0 || s.is_empty() {
            return;
        }
        let sep = usize::from(!f.prompt_text.is_empty());
        let room = self.keep.saturating_sub(f.prompt_text.len() + sep);
        if room == 0 {
            f.prompt_text_truncated = true;
            return;
        }
        if sep == 1 {
            f.prompt_text.push('\n');
        }
        if s.len() <= room {
            f.prompt_text.push_str(s);
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            f.prompt_text.push_str(&s[..cut]);
            f.prompt_text_truncated = true;
        }
    }
}

/// Rewrite an OpenAI chat/completions *streaming* request so the upstream sends a final
/// usage-only chunk: adds `"stream_options":{"include_usage":true}`, or merges it into an
/// existing `stream_options` object (overriding an explicit `false`).
///
/// Returns `None` (forward the body unchanged) when the body is not a JSON object, does not ask
/// for `"stream": true`, already has `include_usage: true`, or has duplicate `stream_options`
/// keys. Every other byte of the body is kept as is. Pair it with
/// [`super::UsageChunkStripper`] so the client sees exactly the stream it asked for.
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let (stream, include) = with_scratch(|s| {
        s.parse(body, |root| {
            if !root.is_object() {
                return None;
            }
            let stream = root.get("stream").and_then(|v| v.as_bool()) == Some(true);
            let include = root
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(|b| b.as_bool());
            Some((stream, include))
        })
    })??;
    if !stream || include == Some(true) {
        return None;
    }
    let top = scan_object(body, 0)?;
    let mut hits = top.members.iter().filter(|m| m.key == b"stream_options");
    let member = hits.next();
    if hits.next().is_some() {
        return None;
    }
    const FULL: &[u8] = br#""stream_options":{"include_usage":true}"#;
    let mut out = Vec::with_capacity(body.len() + FULL.len() + 1);
    match member {
        None => {
            out.extend_from_slice(&body[..=top.open]);
            out.extend_from_slice(FULL);
            out.push(b',');
            out.extend_from_slice(&body[top.open + 1..]);
        }
        Some(m) if body.get(m.value.start) == Some(&b'{') => {
            let inner = scan_object(body, m.value.start)?;
            let mut hits = inner.members.iter().filter(|m| m.key == b"include_usage");
            let iu = hits.next();
            if hits.next().is_some() {
                return None;
            }
            match iu {
                Some(iu) => {
                    out.extend_from_slice(&body[..iu.value.start]);
                    out.extend_from_slice(b"true");
                    out.extend_from_slice(&body[iu.value.end..]);
                }
                None => {
                    out.extend_from_slice(&body[..=inner.open]);
                    out.extend_from_slice(br#""include_usage":true"#);
                    if !inner.members.is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(&body[inner.open + 1..]);
                }
            }
        }
        Some(m) => {
            // `null` or another non-object: replace the value.
            out.extend_from_slice(&body[..m.value.start]);
            out.extend_from_slice(br#"{"include_usage":true}"#);
            out.extend_from_slice(&body[m.value.end..]);
        }
    }
    Some(out)
}

/// A member of a scanned object: raw key bytes (between the quotes) and value byte range.
struct Member<'a> {
    key: &'a [u8],
    value: std::ops::Range<usize>,
}

struct ScannedObject<'a> {
    /// Index of the `{`.
    open: usize,
    members: Vec<Member<'a>>,
}

/// Minimal structural scan of the object starting at (or after whitespace from) `at`.
/// The body was validated by simd-json beforehand; this only needs byte positions.
fn scan_object(b: &[u8], at: usize) -> Option<ScannedObject<'_>> {
    let mut members = Vec::new();
    let open =
        super::objscan::for_each_member(b, at, |key, value| members.push(Member { key, value }))?;
    Some(ScannedObject { open, members })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(d: Dialect, body: &str) -> RequestFacts {
        inspect_request(d, body.as_bytes()).expect("inspects")
    }

    #[test]
    fn openai_chat_facts() {
        let f = facts(
            Dialect::OpenAiChat,
            r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},
               "max_completion_tokens":256,"max_tokens":10,
               "messages":[{"role":"system","content":"Be brief."},
                           {"role":"user","content":[{"type":"text","text":"h\u00e9"},
                                                      {"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        );
        assert_eq!(f.model.as_deref(), Some("gpt-4o"));
        assert!(f.stream);
        assert_eq!(f.max_tokens, Some(256));
        assert_eq!(f.message_count, 2);
        assert_eq!(f.prompt_bytes, 9 + 3);
        assert_eq!(f.include_usage, Some(false));
    }

    #[test]
    fn other_dialect_facts() {
        let f = facts(
            Dialect::Anthropic,
            r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
               "system":[{"type":"text","text":"sys"}],
               "messages":[{"role":"user","content":"hello"}]}"#,
        );
        assert_eq!(
            (f.max_tokens, f.message_count, f.prompt_bytes),
            (Some(1024), 1, 8)
        );
        let f = facts(
            Dialect::Tgi,
            r#"{"inputs":"What is Deep Learning?","parameters":{"max_new_tokens":20}}"#,
        );
        assert_eq!(
            (f.max_tokens, f.stream, f.prompt_bytes),
            (Some(20), false, 22)
        );
        let f = inspect_request_with(
            Dialect::Tgi,
            br#"{"inputs":"x"}"#,
            &RequestOptions {
                path: "/generate_stream",
                ..Default::default()
            },
        )
        .expect("tgi");
        assert!(f.stream);
        let f = facts(
            Dialect::Ollama,
            r#"{"model":"llama3.2","messages":[{"role":"user","content":"why is the sky blue?"}],
               "options":{"num_predict":-1}}"#,
        );
        assert!(f.stream, "ollama streams by default");
        assert_eq!(f.max_tokens, None);
        let f = facts(
            Dialect::Ollama,
            r#"{"model":"llama3.2","prompt":"hi","system":"s","stream":false,"options":{"num_predict":64}}"#,
        );
        assert_eq!(
            (f.stream, f.max_tokens, f.prompt_bytes),
            (false, Some(64), 3)
        );
        let f = facts(
            Dialect::OpenAiResponses,
            r#"{"model":"o4-mini","instructions":"be nice","input":[{"role":"user","content":[{"type":"input_text","text":"abc"}]}],"max_output_tokens":500}"#,
        );
        assert_eq!(
            (f.max_tokens, f.message_count, f.prompt_bytes),
            (Some(500), 1, 10)
        );
        let f = facts(
            Dialect::OpenAiEmbeddings,
            r#"{"model":"text-embedding-3-small","input":["a","bc"]}"#,
        );
        assert_eq!((f.message_count, f.prompt_bytes), (2, 3));
        let f = facts(
            Dialect::OpenAiCompletions,
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7}"#,
        );
        assert_eq!((f.max_tokens, f.prompt_bytes), (Some(7), 18));
    }

    #[test]
    fn errors_and_text_keeping() {
        assert_eq!(
            inspect_request(Dialect::OpenAiChat, b"{oops"),
            Err(InspectError::InvalidJson)
        );
        assert_eq!(
            inspect_request(Dialect::OpenAiChat, b"[1]"),
            Err(InspectError::NotAnObject)
        );
        let f = inspect_request_with(
            Dialect::OpenAiChat,
            r#"{"messages":[{"content":"héllo"},{"content":"world"}]}"#.as_bytes(),
            &RequestOptions {
                path: "",
                prompt_text_bytes_max: 8,
            },
        )
        .expect("ok");
        assert_eq!(f.prompt_text, "héllo\nw");
        assert!(f.prompt_text_truncated);
    }

    fn reparse(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).expect("valid json")
    }

    #[test]
    fn injection_cases() {
        let cases = [
            r#"{"model":"m","stream":true,"messages":[]}"#,
            r#" { "model" : "m" , "stream" : true }"#,
            r#"{"stream":true,"stream_options":{}}"#,
            r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
            r#"{"stream":true,"stream_options":null,"x":"a\"}b"}"#,
        ];
        for c in cases {
            let out = inject_include_usage(c.as_bytes()).expect(c);
            let mut want = reparse(c.as_bytes());
            let got = reparse(&out);
            let so = &mut want["stream_options"];
            if !so.is_object() {
                *so = serde_json::json!({});
            }
            so["include_usage"] = serde_json::Value::Bool(true);
            assert_eq!(got, want, "{c}");
        }
        for c in [
            r#"{"stream":false}"#,
            r#"{"messages":[]}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":{},"stream_options":{}}"#,
            "not json",
            "[]",
        ] {
            assert_eq!(inject_include_usage(c.as_bytes()), None, "{c}");
        }
    }
}
