//! Response usage extraction: token counts from streamed or buffered model responses.
//!
//! Owns: [`UsageAccumulator`] (fed the upstream response bytes as they are forwarded) and its
//! result types [`Usage`], [`ChunkSignal`], [`UsageReport`].
//!
//! What is read, per dialect (streams / JSON bodies):
//! * OpenAI chat & completions: the chunk whose `usage` is an object (the include-usage chunk, or
//!   vLLM's continuous usage, last wins): `prompt_tokens`, `completion_tokens`, `total_tokens`,
//!   `prompt_tokens_details.cached_tokens`, `completion_tokens_details.reasoning_tokens`;
//!   `[DONE]` ends the stream. Embeddings: `usage.prompt_tokens`/`total_tokens`.
//! * OpenAI Responses: `response.completed` / `response.incomplete` / `response.failed`:
//!   `response.usage.input_tokens`, `output_tokens`, `total_tokens`,
//!   `input_tokens_details.cached_tokens`, `output_tokens_details.reasoning_tokens`.
//! * Anthropic: `message_start` `message.usage` (`input_tokens`, `cache_read_input_tokens`,
//!   `cache_creation_input_tokens`), `message_delta` `usage.output_tokens` (cumulative, final).
//!   `input_tokens` reported here is the *whole* prompt (`input_tokens + cache_read +
//!   cache_creation`), matching OpenAI's meaning where cached tokens are a subset;
//!   `cached_input_tokens` is `cache_read_input_tokens`.
//! * TGI: `details.generated_tokens` (+ `details.input_length` in streams, `len(details.prefill)`
//!   in bodies), or the `x-prompt-tokens` / `x-generated-tokens` response headers.
//! * Ollama: the `"done":true` line (or body): `prompt_eval_count`, `eval_count`.
//!
//! Invariants:
//! * The accumulator only observes: the proxy forwards bytes first; malformed events are
//!   counted ([`UsageReport::malformed_events`]) and never panic.
//! * **No JSON parse for irrelevant events**: a cheap `memmem` prefilter (`"usage":{`,
//!   `message_start`, `message_delta`, `response.completed`, `"details":{`, `"done":true`, ...)
//!   selects the few events that carry usage; the first JSON event is also parsed once for the
//!   response model. Content events are recognised from bytes.
//! * Bounded memory: non-streaming bodies are buffered up to [`USAGE_BODY_BYTES_MAX`] (beyond:
//!   `uninspected`); for estimation, the raw JSON of content events is kept up to
//!   [`CONTENT_KEEP_BYTES_MAX`] and only parsed at `finish` when no usage arrived; beyond the cap
//!   the estimate is extrapolated by event count.
//! * When no final usage arrived (stream cut short, client did not ask for usage, server never
//!   reports it), tokens are estimated with a real BPE ([`super::estimate`]) from the streamed
//!   content text and the request prompt text, and flagged `estimated`.

use super::dialect::Dialect;
use super::estimate;
use super::json;
use super::ndjson::NdjsonSplitter;
use super::request::RequestFacts;
use super::sse::SseSplitter;
use memchr::memmem;
use simd_json::prelude::*;
use simd_json::tape::Value;
use std::sync::LazyLock;

/// Bound on a buffered non-streaming response body; larger bodies are `uninspected`.
pub const USAGE_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Bound on the raw content-event JSON kept per stream for token estimation.
pub const CONTENT_KEEP_BYTES_MAX: usize = 64 * 1024;

/// Token usage of one response. Counts are `u64`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, including cached ones.
    pub input_tokens: u64,
    /// Generated tokens, including reasoning ones.
    pub output_tokens: u64,
    /// As reported, else `input + output`.
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
    /// Model named by the response.
    pub response_model: Option<String>,
    /// True when any count was estimated rather than reported.
    pub estimated: bool,
}

/// What one [`UsageAccumulator::on_body_bytes`] call saw (for TTFT and inter-token latency).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkSignal {
    /// Events (SSE) or lines (NDJSON) completed by these bytes.
    pub events: u32,
    /// Of which carried output content (text, reasoning, tool-call deltas).
    pub content_events: u32,
    /// Of which carried usage.
    pub usage_events: u32,
    /// The stream's terminal marker was seen (`[DONE]`, `message_stop`, `response.completed`,
    /// Ollama `done:true`, TGI final details).
    pub done: bool,
}

/// Final result of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageReport {
    /// `None` when nothing was reported and nothing could be estimated.
    pub usage: Option<Usage>,
    /// Events/lines that were not valid JSON (where JSON was expected) or over the size bound.
    pub malformed_events: u32,
    /// As passed to `finish`: the stream was cut short.
    pub aborted: bool,
    /// The stream ended inside an event (SSE: not dispatched; NDJSON: a final line that did
    /// not parse).
    pub truncated: bool,
    /// The non-streaming body exceeded [`USAGE_BODY_BYTES_MAX`] and was not inspected.
    pub uninspected: bool,
    /// Events that carried output content.
    pub content_events: u64,
    /// All events (SSE) or lines (NDJSON).
    pub events: u64,
    /// The terminal marker was seen.
    pub done: bool,
}

/// Counts seen so far. `final_usage`: a complete report arrived.
#[derive(Debug, Default)]
struct Seen {
    input: Option<u64>,
    output: Option<u64>,
    total: Option<u64>,
    cached: Option<u64>,
    reasoning: Option<u64>,
    model: Option<String>,
    final_usage: bool,
    done: bool,
}

#[derive(Debug)]
enum Framing {
    Sse(SseSplitter),
    Ndjson(NdjsonSplitter),
    /// Non-streaming body buffer; `None` once over the bound.
    Body(Option<Vec<u8>>),
}

/// Per-response state shared by the event handlers (split from the splitter for borrowing).
#[derive(Debug)]
struct State {
    dialect: Dialect,
    seen: Seen,
    model_parsed: bool,
    malformed: u32,
    events: u64,
    content_events: u64,
    keep_content: bool,
    /// Length-prefixed (u32 LE) raw JSON of content events, bounded.
    kept: Vec<u8>,
    kept_events: u64,
    header_input: Option<u64>,
    header_output: Option<u64>,
    signal: ChunkSignal,
    /// Output text of a non-streaming body without usage (for estimation).
    body_text: String,
}

/// Accumulates usage from a response's body bytes. One per response.
#[derive(Debug)]
pub struct UsageAccumulator {
    framing: Framing,
    state: State,
    request_model: Option<String>,
    prompt_text: String,
    prompt_text_truncated: bool,
    prompt_bytes: u64,
    /// Set by the first `finish`.
    report: Option<UsageReport>,
}

impl UsageAccumulator {
    /// `streaming`: the response is an event stream (SSE, or NDJSON for Ollama) rather than one
    /// JSON body. Decide it from the response `Content-Type` when possible.
    pub fn new(dialect: Dialect, streaming: bool) -> Self {
        let framing = match (streaming, dialect.stream_is_ndjson()) {
            (false, _) => Framing::Body(Some(Vec::new())),
            (true, true) => Framing::Ndjson(NdjsonSplitter::new()),
            (true, false) => Framing::Sse(SseSplitter::new()),
        };
        UsageAccumulator {
            framing,
            state: State {
                dialect,
                seen: Seen::default(),
                model_parsed: false,
                malformed: 0,
                events: 0,
                content_events: 0,
                keep_content: true,
                kept: Vec::new(),
                kept_events: 0,
                header_input: None,
                header_output: None,
                signal: ChunkSignal::default(),
                body_text: String::new(),
            },
            request_model: None,
            prompt_text: String::new(),
            prompt_text_truncated: false,
            prompt_bytes: 0,
            report: None,
        }
    }

    /// Override the SSE event / NDJSON line bound (config).
    pub fn with_event_limit(mut self, limit_bytes: usize) -> Self {
        match &mut self.framing {
            Framing::Sse(s) => *s = SseSplitter::with_limit(limit_bytes),
            Framing::Ndjson(s) => *s = NdjsonSplitter::with_limit(limit_bytes),
            Framing::Body(_) => {}
        }
        self
    }

    /// Use the request's facts for estimation: its model picks the tokenizer, its prompt text
    /// (if kept, see [`super::RequestOptions`]) estimates input tokens when none are reported.
    pub fn with_request(mut self, facts: &RequestFacts) -> Self {
        self.request_model = facts.model.clone();
        self.prompt_text.clear();
        self.prompt_text.push_str(&facts.prompt_text);
        self.prompt_text_truncated = facts.prompt_text_truncated;
        self.prompt_bytes = facts.prompt_bytes;
        self
    }

    /// Keep content-event JSON for BPE estimation (default `true`). Turn off when usage is
    /// certain to be reported (e.g. include-usage was injected); an aborted stream then
    /// estimates output as one token per content event.
    pub fn set_keep_content(&mut self, keep: bool) {
        self.state.keep_content = keep;
        if !keep {
            self.state.kept = Vec::new();
            self.state.kept_events = 0;
        }
    }

    /// A response header (TGI: `x-prompt-tokens`, `x-generated-tokens`). Names are
    /// case-insensitive; other headers are ignored.
    pub fn on_response_header(&mut self, name: &[u8], value: &[u8]) {
        let parse = |v: &[u8]| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok();
        if name.eq_ignore_ascii_case(b"x-prompt-tokens") {
            self.state.header_input = parse(value);
        } else if name.eq_ignore_ascii_case(b"x-generated-tokens") {
            self.state.header_output = parse(value);
        }
    }

    /// Feed response body bytes (after the proxy forwarded them).
    pub fn on_body_bytes(&mut self, bytes: &[u8]) -> ChunkSignal {
        if self.report.is_some() {
            return ChunkSignal::default();
        }
        let st = &mut self.state;
        st.signal = ChunkSignal::default();
        match &mut self.framing {
            Framing::Sse(s) => s.feed(bytes, |ev| st.on_event(ev.event, ev.data)),
            Framing::Ndjson(s) => s.feed(bytes, |line| st.on_event(b"", line)),
            Framing::Body(buf) => {
                if let Some(b) = buf {
                    if b.len() + bytes.len() > USAGE_BODY_BYTES_MAX {
                        *buf = None;
                    } else {
                        b.extend_from_slice(bytes);
                    }
                }
            }
        }
        st.signal
    }

    /// End of the response. `aborted`: the stream was cut short (upstream or client went away
    /// before the end). Idempotent: a second call returns the first report (with the first
    /// `aborted`). Bytes fed after `finish` are ignored.
    ///
    /// Cost: when no usage was reported this runs the BPE over the kept content text and the
    /// request's prompt text (bounded by [`CONTENT_KEEP_BYTES_MAX`] and the caller's
    /// `prompt_text_bytes_max`); otherwise it is a few field copies.
    pub fn finish(&mut self, aborted: bool) -> UsageReport {
        if let Some(r) = &self.report {
            return r.clone();
        }
        let report = self.finish_inner(aborted);
        self.report = Some(report.clone());
        report
    }

    fn finish_inner(&mut self, aborted: bool) -> UsageReport {
        let st = &mut self.state;
        let mut truncated = false;
        let mut uninspected = false;
        match &mut self.framing {
            Framing::Sse(s) => {
                truncated = s.finish();
                st.malformed = st.malformed.saturating_add(s.oversized_events());
            }
            Framing::Ndjson(s) => {
                let before = st.malformed;
                let mut delivered = false;
                let pending = s.finish(|line| {
                    delivered = true;
                    st.on_event(b"", line)
                });
                if pending && (!delivered || st.malformed > before) {
                    // A final line without LF that is not valid JSON: truncated, not malformed.
                    st.malformed = before;
                    truncated = true;
                }
                st.malformed = st.malformed.saturating_add(s.oversized_lines());
            }
            Framing::Body(buf) => match buf.take() {
                Some(body) if !body.trim_ascii().is_empty() => st.on_body(&body),
                Some(_) => {}
                None => uninspected = true,
            },
        }
        let usage = self.usage();
        let st = &self.state;
        UsageReport {
            usage,
            malformed_events: st.malformed,
            aborted,
            truncated,
            uninspected,
            content_events: st.content_events,
            events: st.events,
            done: st.seen.done,
        }
    }

    fn usage(&self) -> Option<Usage> {
        let st = &self.state;
        let seen = &st.seen;
        let model = seen.model.as_deref().or(self.request_model.as_deref());
        let mut estimated = false;
        let reported_output = seen.output.or(st.header_output);
        let output = if seen.final_usage || (st.header_output.is_some() && seen.output.is_none()) {
            reported_output
        } else {
            let est = self.estimate_output(model);
            if est.is_some() || reported_output.is_some() {
                estimated = true;
            }
            match (reported_output, est) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        };
        let input = match seen.input.or(st.header_input) {
            Some(i) => Some(i),
            None => {
                let est = self.estimate_input(model);
                if est.is_some() {
                    estimated = true;
                }
                est
            }
        };
        if output.is_none() && input.is_none() && seen.total.is_none() {
            return None;
        }
        let (input, output) = (input.unwrap_or(0), output.unwrap_or(0));
        let total = match seen.total {
            Some(t) if !estimated => t,
            _ => input.saturating_add(output),
        };
        Some(Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: total,
            cached_input_tokens: seen.cached,
            reasoning_tokens: seen.reasoning,
            response_model: seen.model.clone(),
            estimated,
        })
    }

    fn estimate_input(&self, model: Option<&str>) -> Option<u64> {
        if !self.prompt_text.is_empty() {
            let total = if self.prompt_text_truncated {
                self.prompt_bytes.max(self.prompt_text.len() as u64)
            } else {
                self.prompt_text.len() as u64
            };
            Some(estimate::estimate_tokens(model, &self.prompt_text, total))
        } else if self.prompt_bytes > 0 {
            Some(self.prompt_bytes.div_ceil(4))
        } else {
            None
        }
    }

    /// Output estimate from kept content JSON (BPE), else one token per content event.
    fn estimate_output(&self, model: Option<&str>) -> Option<u64> {
        let st = &self.state;
        let enc = estimate::encoding_for_model(model);
        if !st.body_text.is_empty() {
            return Some(estimate::count_tokens(enc, &st.body_text));
        }
        if st.content_events == 0 {
            return None;
        }
        if st.kept_events == 0 {
            return Some(st.content_events);
        }
        let mut text = String::new();
        let mut rest = st.kept.as_slice();
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let Some(raw) = tail.get(..len) else { break };
            rest = &tail[len..];
            json::parse(raw, |v| delta_text(st.dialect, v, &mut text));
        }
        let counted = estimate::count_tokens(enc, &text);
        let est = u128::from(counted) * u128::from(st.content_events) / u128::from(st.kept_events);
        Some(u64::try_from(est).unwrap_or(u64::MAX))
    }
}

static F_USAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
static F_CONTENT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"content\""));
static F_DETAILS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"details\""));
static F_RESPONSE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"response\""));
static F_THINKING: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"thinking\""));
static F_SIGNATURE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"signature_delta\""));
static F_TOKEN: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"token\""));
static F_SPECIAL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"special\":true"));
static F_DONE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"done\":true"));
static F_EVAL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"eval_count\""));
static F_TYPE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"type\""));

impl State {
    fn on_event(&mut self, event: &[u8], data: &[u8]) {
        self.events += 1;
        self.signal.events = self.signal.events.saturating_add(1);
        let data = data.trim_ascii();
        if self.dialect.supports_include_usage() && data == b"[DONE]" {
            self.seen.done = true;
            self.signal.done = true;
            return;
        }
        if !(data.first() == Some(&b'{') && data.last() == Some(&b'}')) {
            self.malformed = self.malformed.saturating_add(1);
            return;
        }
        let content = match self.dialect {
            Dialect::OpenAiChat | Dialect::OpenAiCompletions | Dialect::OpenAiEmbeddings => {
                self.openai_event(data)
            }
            Dialect::OpenAiResponses => self.responses_event(event, data),
            Dialect::Anthropic => self.anthropic_event(event, data),
            Dialect::Tgi => self.tgi_event(data),
            Dialect::Ollama => self.ollama_event(data),
        };
        if content == Some(true) {
            self.content_events += 1;
            self.signal.content_events = self.signal.content_events.saturating_add(1);
            if self.keep_content && self.kept.len() + data.len() + 4 <= CONTENT_KEEP_BYTES_MAX {
                if let Ok(len) = u32::try_from(data.len()) {
                    self.kept.extend_from_slice(&len.to_le_bytes());
                    self.kept.extend_from_slice(data);
                    self.kept_events += 1;
                }
            }
        }
    }

    /// Parse `data` and run `f`; counts a parse failure as malformed. `None` on failure.
    fn parse<R>(
        &mut self,
        data: &[u8],
        f: impl FnOnce(&mut Seen, Value<'_, '_>) -> R,
    ) -> Option<R> {
        let seen = &mut self.seen;
        let r = json::parse(data, |v| f(seen, v));
        if r.is_none() {
            self.malformed = self.malformed.saturating_add(1);
        }
        r
    }

    fn usage_hit(&mut self) {
        self.signal.usage_events = self.signal.usage_events.saturating_add(1);
    }

    fn done(&mut self) {
        self.seen.done = true;
        self.signal.done = true;
    }

    /// Returns whether the event carried content (`None`: malformed).
    fn openai_event(&mut self, data: &[u8]) -> Option<bool> {
        let has_usage = key_then(&F_USAGE, data, b'{');
        if has_usage || !self.model_parsed {
            self.model_parsed = true;
            let usage = self.parse(data, |seen, v| {
                model_into(seen, v.get("model"));
                let got = v.get("usage").is_some_and(|u| openai_usage(seen, u));
                (got, openai_delta_has_content(v))
            });
            let (got, content) = usage?;
            if got {
                self.usage_hit();
            }
            return Some(content);
        }
        Some(openai_content_bytes(data))
    }

    fn responses_event(&mut self, event: &[u8], data: &[u8]) -> Option<bool> {
        let ty = if event == b"message" || event.is_empty() {
            string_after(&F_TYPE, data).unwrap_or(b"")
        } else {
            event
        };
        match ty {
            b"response.completed" | b"response.incomplete" | b"response.failed" => {
                self.model_parsed = true;
                let got = self.parse(data, |seen, v| {
                    let r = v.get("response");
                    model_into(seen, r.and_then(|r| r.get("model")));
                    r.and_then(|r| r.get("usage"))
                        .is_some_and(|u| responses_usage(seen, u))
                })?;
                if got {
                    self.usage_hit();
                }
                self.done();
                Some(false)
            }
            b"response.created" | b"response.in_progress" if !self.model_parsed => {
                self.model_parsed = true;
                self.parse(data, |seen, v| {
                    model_into(seen, v.get("response").and_then(|r| r.get("model")))
                })?;
                Some(false)
            }
            t if t.starts_with(b"response.") && t.ends_with(b".delta") => Some(true),
            _ => Some(false),
        }
    }

    fn anthropic_event(&mut self, event: &[u8], data: &[u8]) -> Option<bool> {
        let ty = if event == b"message" || event.is_empty() {
            string_after(&F_TYPE, data).unwrap_or(b"")
        } else {
            event
        };
        match ty {
            // The signature of a thinking block is not output the user sees.
            b"content_block_delta" => Some(F_SIGNATURE.find(data).is_none()),
            b"message_start" => {
                self.model_parsed = true;
                let got = self.parse(data, |seen, v| {
                    let m = v.get("message");
                    model_into(seen, m.and_then(|m| m.get("model")));
                    m.and_then(|m| m.get("usage"))
                        .is_some_and(|u| anthropic_usage(seen, u))
                })?;
                if got {
                    self.usage_hit();
                }
                self.seen.final_usage = false;
                Some(false)
            }
            b"message_delta" => {
                let got = self.parse(data, |seen, v| {
                    v.get("usage").is_some_and(|u| anthropic_usage(seen, u))
                })?;
                if got {
                    self.usage_hit();
                }
                Some(false)
            }
            b"message_stop" => {
                self.done();
                Some(false)
            }
            _ => Some(false),
        }
    }

    fn tgi_event(&mut self, data: &[u8]) -> Option<bool> {
        if key_then(&F_DETAILS, data, b'{') {
            let got = self.parse(data, |seen, v| {
                let details = v.get("details");
                let got = details.is_some_and(|d| tgi_details(seen, d));
                (got, tgi_token_is_content(v))
            });
            let (got, content) = got?;
            if got {
                self.usage_hit();
                self.done();
            }
            return Some(content);
        }
        // `"special":true` marks a special token (e.g. EOS): not content.
        Some(F_TOKEN.find(data).is_some() && F_SPECIAL.find(data).is_none())
    }

    fn ollama_event(&mut self, data: &[u8]) -> Option<bool> {
        let done = F_DONE.find(data).is_some() || F_EVAL.find(data).is_some();
        if done || !self.model_parsed {
            self.model_parsed = true;
            let (got, content, is_done) = self.parse(data, |seen, v| {
                model_into(seen, v.get("model"));
                let got = ollama_usage(seen, v);
                let is_done = v.get("done").and_then(|d| d.as_bool()) == Some(true);
                (got, ollama_has_content(v), is_done)
            })?;
            if got {
                self.usage_hit();
            }
            if is_done {
                self.done();
            }
            return Some(content);
        }
        Some(
            has_nonempty_string(&F_CONTENT, data)
                || has_nonempty_string(&F_RESPONSE, data)
                || has_nonempty_string(&F_THINKING, data),
        )
    }

    /// A whole non-streaming JSON body.
    fn on_body(&mut self, body: &[u8]) {
        let dialect = self.dialect;
        let mut text = String::new();
        let ok = json::parse(body, |v| {
            let seen = &mut self.seen;
            let v = if v.is_array() {
                v.get_idx(0).unwrap_or(v)
            } else {
                v
            };
            let got = match dialect {
                Dialect::OpenAiChat | Dialect::OpenAiCompletions | Dialect::OpenAiEmbeddings => {
                    model_into(seen, v.get("model"));
                    v.get("usage").is_some_and(|u| openai_usage(seen, u))
                }
                Dialect::OpenAiResponses => {
                    model_into(seen, v.get("model"));
                    v.get("usage").is_some_and(|u| responses_usage(seen, u))
                }
                Dialect::Anthropic => {
                    model_into(seen, v.get("model"));
                    v.get("usage").is_some_and(|u| anthropic_usage(seen, u))
                }
                Dialect::Tgi => {
                    let d = v.get("details");
                    let got = d.is_some_and(|d| tgi_details(seen, d));
                    if let Some(n) = d
                        .and_then(|d| d.get("prefill"))
                        .and_then(|p| p.as_array())
                        .map(|a| a.len() as u64)
                        .filter(|&n| n > 0)
                    {
                        seen.input = Some(n);
                    }
                    got
                }
                Dialect::Ollama => {
                    model_into(seen, v.get("model"));
                    ollama_usage(seen, v)
                }
            };
            if !got {
                body_text(dialect, v, &mut text);
            }
            got
        });
        match ok {
            None => self.malformed = self.malformed.saturating_add(1),
            Some(got) => {
                self.seen.done = true;
                if !got {
                    self.body_text = text;
                }
            }
        }
    }
}

fn model_into(seen: &mut Seen, v: Option<Value<'_, '_>>) {
    if seen.model.is_none() {
        if let Some(m) = v.and_then(|m| m.into_string()).filter(|m| !m.is_empty()) {
            seen.model = Some(m.to_owned());
        }
    }
}

fn get_u64(v: Option<Value<'_, '_>>, key: &str) -> Option<u64> {
    v.and_then(|v| v.get(key)).and_then(|x| x.as_u64())
}

fn openai_usage(seen: &mut Seen, u: Value<'_, '_>) -> bool {
    if !u.is_object() {
        return false;
    }
    let uo = Some(u);
    seen.input = get_u64(uo, "prompt_tokens").or(seen.input);
    seen.output = get_u64(uo, "completion_tokens").or(seen.output);
    seen.total = get_u64(uo, "total_tokens").or(seen.total);
    openai_details(seen, u);
    seen.final_usage = true;
    true
}

fn openai_details(seen: &mut Seen, u: Value<'_, '_>) {
    if let Some(c) = get_u64(u.get("prompt_tokens_details"), "cached_tokens") {
        seen.cached = Some(c);
    }
    if let Some(r) = get_u64(u.get("completion_tokens_details"), "reasoning_tokens") {
        seen.reasoning = Some(r);
    }
}

fn responses_usage(seen: &mut Seen, u: Value<'_, '_>) -> bool {
    if !u.is_object() {
        return false;
    }
    let uo = Some(u);
    seen.input = get_u64(uo, "input_tokens").or(seen.input);
    seen.output = get_u64(uo, "output_tokens").or(seen.output);
    seen.total = get_u64(uo, "total_tokens").or(seen.total);
    if let Some(c) = get_u64(u.get("input_tokens_details"), "cached_tokens") {
        seen.cached = Some(c);
    }
    if let Some(r) = get_u64(u.get("output_tokens_details"), "reasoning_tokens") {
        seen.reasoning = Some(r);
    }
    seen.final_usage = true;
    true
}

fn anthropic_usage(seen: &mut Seen, u: Value<'_, '_>) -> bool {
    if !u.is_object() {
        return false;
    }
    let uo = Some(u);
    let base = get_u64(uo, "input_tokens");
    let read = get_u64(uo, "cache_read_input_tokens");
    let create = get_u64(uo, "cache_creation_input_tokens");
    if base.is_some() || read.is_some() || create.is_some() {
        let total = base
            .unwrap_or(0)
            .saturating_add(read.unwrap_or(0))
            .saturating_add(create.unwrap_or(0));
        // message_delta may repeat input counts; never lower what message_start said.
        seen.input = Some(seen.input.map_or(total, |i| i.max(total)));
        if let Some(r) = read {
            seen.cached = Some(r);
        }
    }
    if let Some(o) = get_u64(uo, "output_tokens") {
        seen.output = Some(o);
    }
    seen.final_usage = true;
    true
}

fn tgi_details(seen: &mut Seen, d: Value<'_, '_>) -> bool {
    if !d.is_object() {
        return false;
    }
    let dd = Some(d);
    let Some(generated) = get_u64(dd, "generated_tokens") else {
        return false;
    };
    seen.output = Some(generated);
    if let Some(i) = get_u64(dd, "input_length") {
        seen.input = Some(i);
    }
    seen.final_usage = true;
    true
}

fn ollama_usage(seen: &mut Seen, v: Value<'_, '_>) -> bool {
    if v.get("done").and_then(|d| d.as_bool()) != Some(true) {
        return false;
    }
    let vo = Some(v);
    let input = get_u64(vo, "prompt_eval_count");
    let output = get_u64(vo, "eval_count");
    if input.is_none() && output.is_none() {
        return false;
    }
    seen.input = Some(input.unwrap_or(0));
    seen.output = Some(output.unwrap_or(0));
    seen.final_usage = true;
    true
}

fn nonempty_str(v: Option<Value<'_, '_>>) -> bool {
    v.and_then(|s| s.into_string())
        .is_some_and(|s| !s.is_empty())
}

fn openai_delta_has_content(v: Value<'_, '_>) -> bool {
    let Some(choices) = v.get("choices").and_then(|c| c.as_array()) else {
        return false;
    };
    choices.iter().any(|c| {
        if nonempty_str(c.get("text")) {
            return true;
        }
        let Some(d) = c.get("delta") else {
            return false;
        };
        nonempty_str(d.get("content"))
            || nonempty_str(d.get("reasoning_content"))
            || nonempty_str(d.get("reasoning"))
            || nonempty_str(d.get("refusal"))
            || d.get("tool_calls")
                .and_then(|t| t.as_array())
                .is_some_and(|a| !a.is_empty())
    })
}

static F_TEXT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"text\""));
static F_REASONING: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"reasoning_content\""));
static F_REASONING2: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"reasoning\""));
static F_REFUSAL: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"refusal\""));
static F_TOOLS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"tool_calls\""));

/// Byte-level content test for an OpenAI chunk (no parse).
fn openai_content_bytes(data: &[u8]) -> bool {
    has_nonempty_string(&F_CONTENT, data)
        || has_nonempty_string(&F_TEXT, data)
        || has_nonempty_string(&F_REASONING, data)
        || has_nonempty_string(&F_REASONING2, data)
        || has_nonempty_string(&F_REFUSAL, data)
        || key_then(&F_TOOLS, data, b'[')
}

fn tgi_token_is_content(v: Value<'_, '_>) -> bool {
    v.get("token")
        .is_some_and(|t| t.get("special").and_then(|s| s.as_bool()) != Some(true))
}

fn ollama_has_content(v: Value<'_, '_>) -> bool {
    nonempty_str(v.get("response"))
        || nonempty_str(v.get("thinking"))
        || v.get("message").is_some_and(|m| {
            nonempty_str(m.get("content"))
                || nonempty_str(m.get("thinking"))
                || m.get("tool_calls")
                    .and_then(|t| t.as_array())
                    .is_some_and(|a| !a.is_empty())
        })
}

/// Append the output text carried by one content event (for estimation).
fn delta_text(dialect: Dialect, v: Value<'_, '_>, out: &mut String) {
    let mut push = |s: Option<&str>| {
        if let Some(s) = s {
            out.push_str(s);
        }
    };
    match dialect {
        Dialect::OpenAiChat | Dialect::OpenAiCompletions | Dialect::OpenAiEmbeddings => {
            if let Some(t) = v.get("text").and_then(|t| t.into_string()) {
                push(Some(t));
                return;
            }
            if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
                for c in choices.iter() {
                    push(c.get("text").and_then(|t| t.into_string()));
                    if let Some(d) = c.get("delta") {
                        for k in ["reasoning_content", "reasoning", "content", "refusal"] {
                            push(d.get(k).and_then(|t| t.into_string()));
                        }
                        if let Some(tc) = d.get("tool_calls").and_then(|t| t.as_array()) {
                            for t in tc.iter() {
                                let f = t.get("function");
                                push(f.and_then(|f| f.get("name")).and_then(|n| n.into_string()));
                                push(
                                    f.and_then(|f| f.get("arguments"))
                                        .and_then(|n| n.into_string()),
                                );
                            }
                        }
                    }
                }
            }
        }
        Dialect::OpenAiResponses => push(v.get("delta").and_then(|d| d.into_string())),
        Dialect::Anthropic => {
            if let Some(d) = v.get("delta") {
                for k in ["text", "thinking", "partial_json"] {
                    push(d.get(k).and_then(|t| t.into_string()));
                }
            }
        }
        Dialect::Tgi => push(
            v.get("token")
                .and_then(|t| t.get("text"))
                .and_then(|t| t.into_string()),
        ),
        Dialect::Ollama => {
            push(v.get("thinking").and_then(|t| t.into_string()));
            push(v.get("response").and_then(|t| t.into_string()));
            if let Some(m) = v.get("message") {
                push(m.get("thinking").and_then(|t| t.into_string()));
                push(m.get("content").and_then(|t| t.into_string()));
            }
        }
    }
}

/// Output text of a whole non-streaming body (for estimation when it has no usage).
fn body_text(dialect: Dialect, v: Value<'_, '_>, out: &mut String) {
    let mut push = |s: Option<&str>| {
        if let Some(s) = s {
            out.push_str(s);
        }
    };
    match dialect {
        Dialect::OpenAiChat | Dialect::OpenAiCompletions => {
            if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
                for c in choices.iter() {
                    push(c.get("text").and_then(|t| t.into_string()));
                    push(
                        c.get("message")
                            .and_then(|m| m.get("content"))
                            .and_then(|t| t.into_string()),
                    );
                }
            }
        }
        Dialect::OpenAiEmbeddings => {}
        Dialect::OpenAiResponses => {
            if let Some(items) = v.get("output").and_then(|o| o.as_array()) {
                for item in items.iter() {
                    if let Some(parts) = item.get("content").and_then(|c| c.as_array()) {
                        for p in parts.iter() {
                            push(p.get("text").and_then(|t| t.into_string()));
                        }
                    }
                }
            }
        }
        Dialect::Anthropic => {
            if let Some(parts) = v.get("content").and_then(|c| c.as_array()) {
                for p in parts.iter() {
                    push(p.get("text").and_then(|t| t.into_string()));
                }
            }
        }
        Dialect::Tgi => push(v.get("generated_text").and_then(|t| t.into_string())),
        Dialect::Ollama => {
            push(v.get("response").and_then(|t| t.into_string()));
            push(
                v.get("message")
                    .and_then(|m| m.get("content"))
                    .and_then(|t| t.into_string()),
            );
        }
    }
}

/// Iterate occurrences of a quoted key that are not inside an escaped string (`\"key\"`),
/// yielding the index of the first non-space byte after the key's colon.
pub(crate) fn key_values<'a>(
    finder: &'a memmem::Finder<'static>,
    data: &'a [u8],
) -> impl Iterator<Item = usize> + 'a {
    finder.find_iter(data).filter_map(move |pos| {
        if pos > 0 && data[pos - 1] == b'\\' {
            return None;
        }
        let mut i = pos + finder.needle().len();
        while matches!(data.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            i += 1;
        }
        if data.get(i) != Some(&b':') {
            return None;
        }
        i += 1;
        while matches!(data.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            i += 1;
        }
        Some(i)
    })
}

/// True when some occurrence of the key has a value starting with byte `first`.
fn key_then(finder: &memmem::Finder<'static>, data: &[u8], first: u8) -> bool {
    key_values(finder, data).any(|i| data.get(i) == Some(&first))
}

/// True when some occurrence of the key has a non-empty string value.
fn has_nonempty_string(finder: &memmem::Finder<'static>, data: &[u8]) -> bool {
    key_values(finder, data)
        .any(|i| data.get(i) == Some(&b'"') && data.get(i + 1).is_some_and(|&c| c != b'"'))
}

/// The raw (still escaped) string value of the first occurrence of the key, if a string.
fn string_after<'a>(finder: &memmem::Finder<'static>, data: &'a [u8]) -> Option<&'a [u8]> {
    let i = key_values(finder, data).next()?;
    if data.get(i) != Some(&b'"') {
        return None;
    }
    let rest = data.get(i + 1..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::request::{inspect_request_with, RequestOptions};

    fn feed(d: Dialect, streaming: bool, body: &[u8]) -> (UsageAccumulator, ChunkSignal) {
        let mut acc = UsageAccumulator::new(d, streaming);
        let sig = acc.on_body_bytes(body);
        (acc, sig)
    }

    #[test]
    fn byte_level_content_detection() {
        assert!(openai_content_bytes(
            br#"{"choices":[{"delta":{"content":"x"}}]}"#
        ));
        assert!(openai_content_bytes(
            br#"{"choices":[{"delta":{"content" : "x"}}]}"#
        ));
        assert!(!openai_content_bytes(
            br#"{"choices":[{"delta":{"content":""}}]}"#
        ));
        assert!(!openai_content_bytes(
            br#"{"choices":[{"delta":{"content":null}}]}"#
        ));
        assert!(!openai_content_bytes(
            br#"{"choices":[{"delta":{}}],"x":"\"content\""}"#
        ));
        assert!(openai_content_bytes(
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#
        ));
        assert!(openai_content_bytes(br#"{"choices":[{"text":" hi"}]}"#));
    }

    #[test]
    fn signals_per_call_and_done() {
        let (mut acc, sig) = feed(
            Dialect::OpenAiChat,
            true,
            b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
              data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        );
        assert_eq!((sig.events, sig.content_events, sig.done), (2, 1, false));
        let sig = acc.on_body_bytes(b"data: [DONE]\n\n");
        assert_eq!((sig.events, sig.content_events, sig.done), (1, 0, true));
        let r = acc.finish(false);
        assert!(r.done);
        assert_eq!(r.usage.as_ref().map(|u| u.estimated), Some(true));
    }

    #[test]
    fn vllm_continuous_usage_last_wins() {
        let (mut acc, sig) = feed(
            Dialect::OpenAiChat,
            true,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
              data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        );
        assert_eq!((sig.content_events, sig.usage_events), (2, 2));
        let u = acc.finish(false).usage.expect("usage");
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.total_tokens, u.estimated),
            (3, 2, 5, false)
        );
    }

    #[test]
    fn request_prompt_estimates_input() {
        let facts = inspect_request_with(
            Dialect::OpenAiChat,
            br#"{"model":"gpt-4","messages":[{"role":"user","content":"hello world"}]}"#,
            &RequestOptions {
                path: "",
                prompt_text_bytes_max: 1024,
            },
        )
        .expect("facts");
        let mut acc = UsageAccumulator::new(Dialect::OpenAiChat, true).with_request(&facts);
        acc.on_body_bytes(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello world\"}}]}\n\n");
        let r = acc.finish(true);
        let u = r.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.estimated), (2, 2, true));
        assert!(r.aborted);
        // Without kept content: one token per content event.
        let mut acc = UsageAccumulator::new(Dialect::OpenAiChat, true);
        acc.set_keep_content(false);
        acc.on_body_bytes(b"data: {\"choices\":[{\"delta\":{\"content\":\"hello world\"}}]}\n\n");
        assert_eq!(acc.finish(true).usage.map(|u| u.output_tokens), Some(1));
    }

    #[test]
    fn oversized_body_is_uninspected_and_empty_is_nothing() {
        let mut acc = UsageAccumulator::new(Dialect::OpenAiChat, false);
        let big = vec![b' '; USAGE_BODY_BYTES_MAX / 2 + 1];
        acc.on_body_bytes(&big);
        acc.on_body_bytes(&big);
        let r = acc.finish(false);
        assert!(r.uninspected && r.usage.is_none());
        assert_eq!(acc.finish(true), r, "finish is idempotent");
        let mut acc = UsageAccumulator::new(Dialect::Anthropic, false);
        let r = acc.finish(false);
        assert_eq!(r, UsageReport::default());
        let mut acc = UsageAccumulator::new(Dialect::Anthropic, false);
        acc.on_body_bytes(b"<html>502 Bad Gateway</html>");
        assert_eq!(acc.finish(false).malformed_events, 1);
    }

    #[test]
    fn tgi_body_without_details_estimates_from_text() {
        let mut acc = UsageAccumulator::new(Dialect::Tgi, false);
        acc.on_body_bytes(br#"[{"generated_text":"hello world"}]"#);
        let u = acc.finish(false).usage.expect("usage");
        assert_eq!((u.output_tokens, u.estimated), (2, true));
    }
}
