//! Response generation for the mock's dialects: OpenAI (chat, legacy completions, embeddings,
//! models), Anthropic messages and Hugging Face TGI, plus per-request behaviour selection.
//!
//! Owns: routing a parsed request to a [`Reply`], the deterministic token text and the exact
//! `usage` numbers. Invariants: `prompt_tokens` is `max(1, bytes of prompt text / 4)` and
//! `completion_tokens` equals the number of token events served, so tests can assert both; every
//! input (bad JSON, wrong types, huge numbers) yields a 400/404 reply, never a panic.
//! Trade-off: bodies are built with `serde_json` for correctness; token events on the streaming
//! hot path are formatted directly from pre-escaped pieces.

use serde_json::{json, Value};

/// Fixed `created` timestamp so bodies are byte-for-byte reproducible.
pub const CREATED_UNIX_S: u64 = 1_700_000_000;
/// Upper bound on tokens per response, whatever a header asks for.
pub const MAX_TOKENS: u32 = 100_000;
/// Upper bound on any injected delay.
pub const MAX_DELAY_MS: u64 = 600_000;
/// Upper bound on `x-mock-response-bytes`.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Dimension of the fake embedding vectors.
pub const EMBEDDING_DIM: usize = 8;

const WORDS: [&str; 8] = [
    "Hello", " from", " the", " sluice", " mock", " model", " server", ".",
];

/// How a non-streaming body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length,
    Chunked,
    Close,
}

/// Per-request behaviour: server defaults, overridden by model-name tags, then by headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behavior {
    pub ttft_ms: u64,
    pub itl_ms: u64,
    pub tokens: u32,
    pub status: Option<u16>,
    pub retry_after_s: u64,
    pub reset_after: Option<u32>,
    pub slow_first_byte_ms: u64,
    pub framing: Framing,
    pub response_bytes: Option<usize>,
}

impl Behavior {
    pub fn defaults(ttft_ms: u64, itl_ms: u64, tokens: u32, response_bytes: Option<usize>) -> Self {
        Self {
            ttft_ms,
            itl_ms,
            tokens,
            status: None,
            retry_after_s: 1,
            reset_after: None,
            slow_first_byte_ms: 0,
            framing: Framing::Length,
            response_bytes,
        }
    }

    /// Applies tags from a model name: `+`-separated parts such as `mock-429`, `mock-ttft-100`,
    /// `mock-itl-5`, `mock-tokens-64`, `mock-reset-3`, `mock-slow-200`, `mock-bytes-4096`,
    /// `mock-framing-chunked`. Unknown parts are ignored.
    pub fn apply_model_tags(&mut self, model: &str) {
        for part in model.split(['+', ',', ' ']) {
            let Some(tag) = part.strip_prefix("mock-") else {
                continue;
            };
            if let Ok(code) = tag.parse::<u16>() {
                if (400..=599).contains(&code) {
                    self.status = Some(code);
                }
                continue;
            }
            let Some((key, val)) = tag.rsplit_once('-') else {
                continue;
            };
            self.apply(key, val);
        }
    }

    /// Applies one `x-mock-*` header (name without the prefix). Bad values are ignored.
    pub fn apply(&mut self, key: &str, val: &str) {
        let val = val.trim();
        let num = || val.parse::<u64>().ok();
        match key {
            "ttft-ms" | "ttft" => {
                if let Some(v) = num() {
                    self.ttft_ms = v.min(MAX_DELAY_MS);
                }
            }
            "itl-ms" | "itl" => {
                if let Some(v) = num() {
                    self.itl_ms = v.min(MAX_DELAY_MS);
                }
            }
            "tokens" => {
                if let Some(v) = num() {
                    self.tokens = v.min(u64::from(MAX_TOKENS)) as u32;
                }
            }
            "status" => {
                if let Some(v) = num().filter(|v| (200..=599).contains(v)) {
                    self.status = if v < 300 { None } else { Some(v as u16) };
                }
            }
            "retry-after" => {
                if let Some(v) = num() {
                    self.retry_after_s = v.min(86_400);
                }
            }
            "reset-after" | "reset" => {
                if let Some(v) = num() {
                    self.reset_after = Some(v.min(u64::from(MAX_TOKENS)) as u32);
                }
            }
            "slow-first-byte-ms" | "slow" => {
                if let Some(v) = num() {
                    self.slow_first_byte_ms = v.min(MAX_DELAY_MS);
                }
            }
            "framing" => {
                self.framing = match val.to_ascii_lowercase().as_str() {
                    "chunked" => Framing::Chunked,
                    "close" => Framing::Close,
                    _ => Framing::Length,
                }
            }
            "response-bytes" | "bytes" => {
                if let Some(v) = num() {
                    self.response_bytes = Some((v as usize).min(MAX_RESPONSE_BYTES));
                }
            }
            _ => {}
        }
    }
}

/// A streaming reply: SSE events already framed (`data: ...\n\n`), grouped by when they are sent.
#[derive(Debug, Default)]
pub struct StreamPlan {
    /// Sent together with the first token, after `ttft_ms`.
    pub prelude: Vec<Vec<u8>>,
    /// One event per token, `itl_ms` apart.
    pub tokens: Vec<Vec<u8>>,
    /// Sent right after the last token.
    pub epilogue: Vec<Vec<u8>>,
}

/// What the connection loop should send.
#[derive(Debug)]
pub enum Reply {
    Body {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
        extra_headers: Vec<(&'static str, String)>,
        /// Whether token-generation delays apply before the head is sent.
        generated: bool,
    },
    Stream(StreamPlan),
}

impl Reply {
    pub fn json(status: u16, v: &Value) -> Self {
        Reply::Body {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(v).unwrap_or_default(),
            extra_headers: Vec::new(),
            generated: false,
        }
    }
}

/// OpenAI-shaped error reply.
pub fn error_reply(status: u16, message: &str, retry_after_s: u64) -> Reply {
    let (ty, code) = match status {
        429 => ("rate_limit_error", "rate_limit_exceeded"),
        404 => ("invalid_request_error", "not_found"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "server_error"),
    };
    let mut r = Reply::json(
        status,
        &json!({"error": {"message": message, "type": ty, "param": null, "code": code}}),
    );
    if status == 429 {
        if let Reply::Body { extra_headers, .. } = &mut r {
            extra_headers.push(("retry-after", retry_after_s.to_string()));
        }
    }
    r
}

/// Token texts for one response: the fixed word cycle, or `response_bytes` spread over tokens.
pub fn token_texts(tokens: u32, response_bytes: Option<usize>) -> Vec<String> {
    let n = tokens as usize;
    match response_bytes {
        None => (0..n).map(|i| WORDS[i % WORDS.len()].to_string()).collect(),
        Some(total) => {
            if n == 0 {
                return Vec::new();
            }
            let base = total / n;
            let extra = total % n;
            (0..n)
                .map(|i| {
                    let len = base + usize::from(i < extra);
                    let c = (b'a' + (i % 26) as u8) as char;
                    std::iter::repeat_n(c, len).collect()
                })
                .collect()
        }
    }
}

/// `max(1, bytes / 4)`.
pub fn count_tokens(bytes: usize) -> u64 {
    ((bytes / 4) as u64).max(1)
}

fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(text_bytes).sum(),
        Value::Object(map) => map.get("text").map_or(0, text_bytes),
        Value::Number(_) => 4,
        _ => 0,
    }
}

fn messages_bytes(v: Option<&Value>) -> usize {
    v.and_then(Value::as_array).map_or(0, |msgs| {
        msgs.iter()
            .map(|m| m.get("content").map_or(0, text_bytes))
            .sum()
    })
}

fn sse(data: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 8);
    v.extend_from_slice(b"data: ");
    v.extend_from_slice(data.as_bytes());
    v.extend_from_slice(b"\n\n");
    v
}

fn sse_named(event: &str, data: &str) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Routes one request. `overrides` are `x-mock-*` headers (name without prefix, value), applied
/// after model-name tags. `seq` makes response ids unique per worker.
pub fn route(
    method: &str,
    path: &str,
    body: &[u8],
    beh: &mut Behavior,
    overrides: &[(String, String)],
    seq: u64,
) -> Reply {
    let known = matches!(
        (method, path),
        ("POST", "/v1/chat/completions")
            | ("POST", "/v1/completions")
            | ("POST", "/v1/embeddings")
            | ("POST", "/v1/messages")
            | ("POST", "/generate")
            | ("POST", "/generate_stream")
            | ("GET", "/v1/models")
    );
    if !known {
        return error_reply(404, &format!("unknown route {method} {path}"), 1);
    }
    // Behaviour: model tags first, then `x-mock-*` headers, so headers win. An injected status
    // applies on every known route, whatever the body, as a real upstream's 429 would.
    let parsed: Result<Value, String> = if method == "GET" {
        Ok(Value::Object(serde_json::Map::new()))
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err("request body must be a JSON object".to_string()),
            Err(e) => Err(format!("invalid JSON body: {e}")),
        }
    };
    let model = parsed
        .as_ref()
        .ok()
        .and_then(|r| r.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_string();
    beh.apply_model_tags(&model);
    for (k, v) in overrides {
        beh.apply(k, v);
    }
    if let Some(status) = beh.status {
        let msg = format!("mock injected status {status}");
        return error_reply(status, &msg, beh.retry_after_s);
    }
    let req = match parsed {
        Ok(v) => v,
        Err(msg) => return error_reply(400, &msg, 1),
    };
    if method == "GET" {
        return Reply::json(
            200,
            &json!({"object": "list", "data": [
                {"id": "mock-model", "object": "model", "created": CREATED_UNIX_S, "owned_by": "sluice-mock"},
                {"id": "mock-embed", "object": "model", "created": CREATED_UNIX_S, "owned_by": "sluice-mock"}
            ]}),
        );
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match path {
        "/v1/chat/completions" => {
            let p = count_tokens(messages_bytes(req.get("messages")));
            openai_chat(&model, p, beh, seq, stream, include_usage)
        }
        "/v1/completions" => {
            let p = count_tokens(req.get("prompt").map_or(0, text_bytes));
            openai_completion(&model, p, beh, seq, stream, include_usage)
        }
        "/v1/embeddings" => {
            let input = req.get("input");
            let p = count_tokens(input.map_or(0, text_bytes));
            let n = match input {
                Some(Value::Array(a)) if a.iter().all(|x| x.is_string() || x.is_array()) => {
                    a.len().max(1)
                }
                _ => 1,
            };
            embeddings(&model, p, n)
        }
        "/v1/messages" => {
            let bytes =
                messages_bytes(req.get("messages")) + req.get("system").map_or(0, text_bytes);
            anthropic(&model, count_tokens(bytes), beh, seq, stream)
        }
        _ => {
            let p = count_tokens(req.get("inputs").map_or(0, text_bytes));
            tgi(p, beh, seq, path == "/generate_stream")
        }
    }
}

fn generated_json(v: &Value) -> Reply {
    let mut r = Reply::json(200, v);
    if let Reply::Body { generated, .. } = &mut r {
        *generated = true;
    }
    r
}

fn openai_chat(
    model: &str,
    p: u64,
    beh: &Behavior,
    seq: u64,
    stream: bool,
    include_usage: bool,
) -> Reply {
    let texts = token_texts(beh.tokens, beh.response_bytes);
    let c = texts.len() as u64;
    let id = format!("chatcmpl-mock-{seq}");
    if !stream {
        return generated_json(&json!({
            "id": id, "object": "chat.completion", "created": CREATED_UNIX_S, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": texts.concat()},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        }));
    }
    let m = js(model);
    let head = format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","created":{CREATED_UNIX_S},"model":{m},"#
    );
    let mut plan = StreamPlan::default();
    plan.prelude.push(sse(&format!(
        r#"{head}"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,"finish_reason":null}}]}}"#
    )));
    for t in &texts {
        plan.tokens.push(sse(&format!(
            r#"{head}"choices":[{{"index":0,"delta":{{"content":{}}},"logprobs":null,"finish_reason":null}}]}}"#,
            js(t)
        )));
    }
    plan.epilogue.push(sse(&format!(
        r#"{head}"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}]}}"#
    )));
    if include_usage {
        plan.epilogue.push(sse(&format!(
            r#"{head}"choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
            p + c
        )));
    }
    plan.epilogue.push(sse("[DONE]"));
    Reply::Stream(plan)
}

fn openai_completion(
    model: &str,
    p: u64,
    beh: &Behavior,
    seq: u64,
    stream: bool,
    include_usage: bool,
) -> Reply {
    let texts = token_texts(beh.tokens, beh.response_bytes);
    let c = texts.len() as u64;
    let id = format!("cmpl-mock-{seq}");
    if !stream {
        return generated_json(&json!({
            "id": id, "object": "text_completion", "created": CREATED_UNIX_S, "model": model,
            "choices": [{"text": texts.concat(), "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        }));
    }
    let m = js(model);
    let head = format!(
        r#"{{"id":"{id}","object":"text_completion","created":{CREATED_UNIX_S},"model":{m},"#
    );
    let mut plan = StreamPlan::default();
    for (i, t) in texts.iter().enumerate() {
        let finish = if i + 1 == texts.len() {
            r#""stop""#
        } else {
            "null"
        };
        plan.tokens.push(sse(&format!(
            r#"{head}"choices":[{{"text":{},"index":0,"logprobs":null,"finish_reason":{finish}}}]}}"#,
            js(t)
        )));
    }
    if include_usage {
        plan.epilogue.push(sse(&format!(
            r#"{head}"choices":[],"usage":{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}}}"#,
            p + c
        )));
    }
    plan.epilogue.push(sse("[DONE]"));
    Reply::Stream(plan)
}

fn embeddings(model: &str, p: u64, n: usize) -> Reply {
    let data: Vec<Value> = (0..n.min(2048))
        .map(|i| {
            let emb: Vec<f64> = (0..EMBEDDING_DIM)
                .map(|d| ((i * EMBEDDING_DIM + d) % 17) as f64 / 17.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": emb})
        })
        .collect();
    Reply::json(
        200,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": p, "total_tokens": p}}),
    )
}

fn anthropic(model: &str, p: u64, beh: &Behavior, seq: u64, stream: bool) -> Reply {
    let texts = token_texts(beh.tokens, beh.response_bytes);
    let c = texts.len() as u64;
    let id = format!("msg_mock_{seq}");
    if !stream {
        return generated_json(&json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": texts.concat()}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": p, "output_tokens": c}
        }));
    }
    let m = js(model);
    let mut plan = StreamPlan::default();
    plan.prelude.push(sse_named(
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":"{id}","type":"message","role":"assistant","model":{m},"content":[],"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{p},"output_tokens":1}}}}}}"#
        ),
    ));
    plan.prelude.push(sse_named(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    plan.prelude.push(sse_named("ping", r#"{"type":"ping"}"#));
    for t in &texts {
        plan.tokens.push(sse_named(
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
                js(t)
            ),
        ));
    }
    plan.epilogue.push(sse_named(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    plan.epilogue.push(sse_named(
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{c}}}}}"#
        ),
    ));
    plan.epilogue
        .push(sse_named("message_stop", r#"{"type":"message_stop"}"#));
    Reply::Stream(plan)
}

fn tgi(p: u64, beh: &Behavior, seq: u64, stream: bool) -> Reply {
    let texts = token_texts(beh.tokens, beh.response_bytes);
    let c = texts.len() as u64;
    let full = texts.concat();
    if !stream {
        return generated_json(&json!({
            "generated_text": full,
            "details": {"finish_reason": "length", "generated_tokens": c, "seed": null,
                        "input_length": p, "prefill": [], "tokens": []}
        }));
    }
    let mut plan = StreamPlan::default();
    let base_id = (seq % 30_000) + 100;
    for (i, t) in texts.iter().enumerate() {
        let token = format!(
            r#"{{"id":{},"text":{},"logprob":-0.25,"special":false}}"#,
            base_id + i as u64,
            js(t)
        );
        let line = if i + 1 == texts.len() {
            format!(
                r#"data:{{"index":{},"token":{token},"generated_text":{},"details":{{"finish_reason":"length","generated_tokens":{c},"seed":null,"input_length":{p}}},"top_tokens":null}}"#,
                i + 1,
                js(&full)
            )
        } else {
            format!(
                r#"data:{{"index":{},"token":{token},"generated_text":null,"details":null,"top_tokens":null}}"#,
                i + 1
            )
        };
        let mut ev = line.into_bytes();
        ev.extend_from_slice(b"\n\n");
        plan.tokens.push(ev);
    }
    Reply::Stream(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beh() -> Behavior {
        Behavior::defaults(0, 0, 4, None)
    }

    #[test]
    fn model_tags_and_headers() {
        let mut b = beh();
        b.apply_model_tags("gpt-4o+mock-429+mock-ttft-100+mock-tokens-7+mock-framing-close");
        assert_eq!(b.status, Some(429));
        assert_eq!(b.ttft_ms, 100);
        assert_eq!(b.tokens, 7);
        assert_eq!(b.framing, Framing::Close);
        b.apply("tokens", "nonsense");
        assert_eq!(b.tokens, 7);
        b.apply("tokens", "99999999999");
        assert_eq!(b.tokens, MAX_TOKENS);
    }

    #[test]
    fn chat_usage_is_exact() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"12345678"},{"role":"user","content":[{"type":"text","text":"abcd"}]}]}"#;
        let r = route("POST", "/v1/chat/completions", body, &mut beh(), &[], 1);
        let Reply::Body { body, status, .. } = r else {
            panic!("not a body")
        };
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["usage"]["completion_tokens"], 4);
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "Hello from the sluice"
        );
    }

    #[test]
    fn bad_input_never_panics() {
        for body in [&b""[..], b"[]", b"{", b"{\"messages\":5}", b"\xff\xfe"] {
            for path in [
                "/v1/chat/completions",
                "/v1/messages",
                "/generate",
                "/v1/embeddings",
            ] {
                let _ = route("POST", path, body, &mut beh(), &[], 0);
            }
        }
        let r = route("GET", "/nope", b"", &mut beh(), &[], 0);
        assert!(matches!(r, Reply::Body { status: 404, .. }));
        // Injected status wins over a bad body and applies to GET routes too.
        let o = [("status".to_string(), "503".to_string())];
        let r = route("POST", "/v1/messages", b"{", &mut beh(), &o, 0);
        assert!(matches!(r, Reply::Body { status: 503, .. }));
        let r = route("GET", "/v1/models", b"", &mut beh(), &o, 0);
        assert!(matches!(r, Reply::Body { status: 503, .. }));
    }

    #[test]
    fn response_bytes_are_exact() {
        let t = token_texts(3, Some(10));
        assert_eq!(t.concat().len(), 10);
        assert_eq!(t.len(), 3);
    }
}
