//! PII redaction of a streamed (SSE) completion as it passes: event framing on top of
//! [`StreamRedactor`].
//!
//! Owns: cutting the decoded response body into SSE events ([`SseSplitter`]), pulling the
//! completion text out of each event ([`stream_event_text`]: OpenAI/vLLM chat and completions,
//! Anthropic messages, the Responses API), running it through one [`StreamRedactor`] per choice
//! index ("lane"), and writing each event back with only its text string replaced.
//!
//! Invariants:
//! * **Bounded delay.** An event is written as soon as its blank line arrives. Only the text
//!   held back by its lane's redactor (at most the engine's hold-back, see `stream.rs`) is
//!   delayed: the event goes out at once carrying the released text (possibly `""`), and the
//!   held tail moves into the lane's next event. Nothing else is buffered: memory is one event in
//!   progress plus the hold-back per lane.
//! * **Valid events.** Every rewritten event is valid JSON with the same keys and bytes as the
//!   upstream's except the one text string (JSON-escaped). Events that carry no text, are not
//!   JSON, or are `[DONE]` pass byte for byte. Non-`data` lines (`event:`, `id:`, comments) of a
//!   rewritten block are kept.
//! * **Nothing held is lost.** A lane's held text is released before the event that ends it
//!   (`finish_reason`, `content_block_stop`, ...), before `[DONE]`, and at end of body, in an
//!   event cloned from the lane's last text event. A stream the upstream cuts short still gets
//!   its held text (redacted) before the proxy breaks the client's stream.
//! * **No allocation per event in steady state.** The event JSON is parsed with a reused path
//!   stack and decoded into a reused text buffer ([`StreamEventScratch`]); the lane's redactor
//!   appends the released text into a reused `String` (`StreamRedactor::push_into`); the
//!   rewritten JSON and the lane template are reused buffers. What still allocates: a finding
//!   (its audit record and replacement), a new lane, growth of a buffer to a larger event, and a
//!   `type` string written with JSON escapes (decoded, never seen from real providers).
//! * **Never fails the stream.** A block larger than [`SSE_REDACT_EVENT_BYTES_MAX`] or more lanes
//!   than [`STREAM_LANES_MAX`] are forwarded uninspected and counted
//!   ([`SseRedactor::uninspected`]); a response is never refused once it started.

use std::sync::Arc;

use super::engine::Engine;
use super::json::{
    splice_string, stream_event_text_into, AuditFinding, StreamEventScratch, STREAM_LANES_MAX,
};
use super::stream::StreamRedactor;
use crate::inspect::sse::SseSplitter;

/// Largest SSE block (raw bytes) the redactor holds while waiting for its end. A larger block is
/// forwarded as it comes, uninspected. Completion deltas are a few hundred bytes.
pub const SSE_REDACT_EVENT_BYTES_MAX: usize = 256 * 1024;

struct Lane {
    redactor: StreamRedactor,
    /// The JSON of the lane's last text event and the span of its text: the envelope for
    /// releasing held text when no later text event of the lane comes.
    template: Vec<u8>,
    span: (usize, usize),
    /// A text event was seen (synthesized events carry no `event:`/`id:` lines).
    has_template: bool,
}

/// Per-stream SSE redactor. One per response stream.
pub struct SseRedactor {
    engine: Arc<Engine>,
    splitter: SseSplitter,
    /// Raw stream bytes not yet written; `raw[0]` is at stream offset `raw_base`.
    raw: Vec<u8>,
    raw_base: u64,
    lanes: Vec<Option<Lane>>,
    /// Reused output buffer for one rewritten event's JSON.
    json: Vec<u8>,
    uninspected: u32,
    findings: Vec<AuditFinding>,
    /// Events dispatched by one `feed` and their joined data (reused: no allocation per chunk
    /// in steady state).
    events: Vec<Pending>,
    datas: Vec<u8>,
    /// Reused per event: the parser's path stack and decoded text, and the released text.
    scratch: StreamEventScratch,
    released: String,
}

/// Where one dispatched event lies, collected during `feed` (events borrow the splitter).
struct Pending {
    start: u64,
    end: u64,
    data_from: usize,
    data_to: usize,
}

impl SseRedactor {
    pub fn new(engine: Arc<Engine>) -> SseRedactor {
        SseRedactor {
            engine,
            splitter: SseSplitter::with_limit(SSE_REDACT_EVENT_BYTES_MAX),
            raw: Vec::new(),
            raw_base: 0,
            lanes: Vec::new(),
            json: Vec::new(),
            uninspected: 0,
            findings: Vec::new(),
            events: Vec::new(),
            datas: Vec::new(),
            scratch: StreamEventScratch::default(),
            released: String::new(),
        }
    }

    /// Events (or oversized blocks) forwarded without redaction.
    pub fn uninspected(&self) -> u32 {
        self.uninspected + self.splitter.oversized_events()
    }

    /// Findings so far (direction response, path `stream`), drained by the caller.
    pub fn take_findings(&mut self) -> Vec<AuditFinding> {
        for l in self.lanes.iter_mut().flatten() {
            self.findings.extend(l.redactor.take_findings());
        }
        std::mem::take(&mut self.findings)
    }

    /// Feed decoded body bytes; append what may be forwarded now to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        self.raw.extend_from_slice(data);
        let mut events = std::mem::take(&mut self.events);
        let mut datas = std::mem::take(&mut self.datas);
        events.clear();
        datas.clear();
        self.splitter.feed(data, |ev| {
            let from = datas.len();
            datas.extend_from_slice(ev.data);
            events.push(Pending {
                start: ev.span.start,
                end: ev.span.end,
                data_from: from,
                data_to: datas.len(),
            });
        });
        let mut written = self.raw_base;
        for ev in &events {
            self.event(ev, &datas[ev.data_from..ev.data_to], out);
            written = ev.end;
        }
        self.consume_to(written);
        self.events = events;
        self.datas = datas;
        // A block that outgrew the bound is released as it comes (the splitter skips it too).
        if self.raw.len() > SSE_REDACT_EVENT_BYTES_MAX {
            out.extend_from_slice(&self.raw);
            self.raw_base += self.raw.len() as u64;
            self.raw.clear();
        }
    }

    /// End of body: release every lane's held text, then whatever raw bytes remain (an
    /// unterminated last block), verbatim.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        for lane in 0..self.lanes.len() {
            self.release_lane(lane, out);
        }
        out.extend_from_slice(&self.raw);
        self.raw_base += self.raw.len() as u64;
        self.raw.clear();
        self.splitter.finish();
    }

    fn consume_to(&mut self, offset: u64) {
        if offset > self.raw_base {
            let n = ((offset - self.raw_base) as usize).min(self.raw.len());
            self.raw.drain(..n);
            self.raw_base += n as u64;
        }
    }

    /// The raw bytes of `start..end` that were not yet forwarded.
    fn block(&self, start: u64, end: u64) -> &[u8] {
        let s = start.saturating_sub(self.raw_base) as usize;
        let e = end.saturating_sub(self.raw_base) as usize;
        &self.raw[s.min(self.raw.len())..e.min(self.raw.len())]
    }

    fn event(&mut self, ev: &Pending, data: &[u8], out: &mut Vec<u8>) {
        if ev.start < self.raw_base {
            // Partly forwarded already (it outgrew the bound): the rest passes as it is.
            let b = self.block(ev.start, ev.end);
            out.extend_from_slice(b);
            self.uninspected += 1;
            return;
        }
        if data == b"[DONE]" {
            for lane in 0..self.lanes.len() {
                self.release_lane(lane, out);
            }
            out.extend_from_slice(self.block(ev.start, ev.end));
            return;
        }
        let Ok(info) = stream_event_text_into(data, &mut self.scratch) else {
            out.extend_from_slice(self.block(ev.start, ev.end));
            return;
        };
        if info.lane >= STREAM_LANES_MAX {
            self.uninspected += 1;
            out.extend_from_slice(self.block(ev.start, ev.end));
            return;
        }
        if self.lanes.len() <= info.lane {
            self.lanes.resize_with(info.lane + 1, || None);
        }
        let engine = &self.engine;
        let lane = self.lanes[info.lane].get_or_insert_with(|| Lane {
            redactor: StreamRedactor::new(Arc::clone(engine)),
            template: Vec::new(),
            span: (0, 0),
            has_template: false,
        });
        let Some(span) = info.span else {
            // No text: a role chunk, or the lane's end.
            if info.ends_lane {
                self.release_lane(info.lane, out);
            }
            out.extend_from_slice(self.block(ev.start, ev.end));
            return;
        };
        let text = &self.scratch.text;
        let released = &mut self.released;
        released.clear();
        lane.redactor.push_into(text, released);
        if info.ends_lane {
            lane.redactor.finish_into(released);
        }
        lane.template.clear();
        lane.template.extend_from_slice(data);
        lane.span = span;
        lane.has_template = true;
        if self.released == self.scratch.text {
            out.extend_from_slice(self.block(ev.start, ev.end));
            return;
        }
        self.json.clear();
        splice_string(&mut self.json, data, span, &self.released);
        let block = self.block(ev.start, ev.end);
        write_block_with_data(out, block, &self.json);
    }

    /// Release what lane `i` holds, in an event cloned from its last text event.
    fn release_lane(&mut self, i: usize, out: &mut Vec<u8>) {
        let Some(Some(lane)) = self.lanes.get_mut(i) else {
            return;
        };
        self.released.clear();
        lane.redactor.finish_into(&mut self.released);
        if self.released.is_empty() || !lane.has_template {
            return;
        }
        self.json.clear();
        splice_string(&mut self.json, &lane.template, lane.span, &self.released);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.json);
        out.extend_from_slice(b"\n\n");
    }
}

/// Write an SSE block with its `data` replaced by `json` (one `data` line): the first `data`
/// line becomes `data: <json>`, further `data` lines are dropped, every other line (and each
/// line's own terminator) is kept.
fn write_block_with_data(out: &mut Vec<u8>, block: &[u8], json: &[u8]) {
    let mut rest = block;
    let mut wrote_data = false;
    while !rest.is_empty() {
        let (line_len, term_len) = match memchr::memchr2(b'\n', b'\r', rest) {
            Some(p) => {
                let t = if rest[p] == b'\r' && rest.get(p + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (p, t)
            }
            None => (rest.len(), 0),
        };
        let line = &rest[..line_len];
        let term = &rest[line_len..line_len + term_len];
        let is_data = line == b"data" || line.starts_with(b"data:");
        if is_data {
            if !wrote_data {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json);
                out.extend_from_slice(if term.is_empty() { b"\n" } else { term });
                wrote_data = true;
            }
        } else {
            out.extend_from_slice(line);
            out.extend_from_slice(term);
        }
        rest = &rest[line_len + term_len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::PiiConfig;

    fn engine() -> Arc<Engine> {
        Arc::new(Engine::new(&PiiConfig::default()).expect("engine"))
    }

    fn chunk(text: &str) -> String {
        let j = serde_json::json!({"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]});
        format!("data: {j}\n\n")
    }

    fn stream(deltas: &[&str]) -> String {
        let mut s = String::from(
            "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
        );
        for d in deltas {
            s.push_str(&chunk(d));
        }
        s.push_str("data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        s.push_str("data: [DONE]\n\n");
        s
    }

    /// Parse a forwarded stream back into (text, events are all valid JSON or [DONE]).
    fn client_text(out: &[u8]) -> String {
        let s = std::str::from_utf8(out).expect("utf8");
        let mut text = String::new();
        for block in s.split("\n\n").filter(|b| !b.is_empty()) {
            let data = block.strip_prefix("data: ").expect("data line");
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).expect("valid json");
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                text.push_str(t);
            }
        }
        text
    }

    fn run_split(input: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<AuditFinding>) {
        let mut r = SseRedactor::new(engine());
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            r.feed(&input[last..c], &mut out);
            last = c;
        }
        r.feed(&input[last..], &mut out);
        r.finish(&mut out);
        let f = r.take_findings();
        (out, f)
    }

    #[test]
    fn card_split_over_three_deltas_is_redacted_at_every_split() {
        let input = stream(&["My card is 4111 11", "11 1111 ", "1111, thanks", " bye"]);
        let (whole, f) = run_split(input.as_bytes(), &[]);
        let text = client_text(&whole);
        assert!(!text.contains("1111 1111"), "{text}");
        assert!(text.contains("[REDACTED:CREDIT_CARD]"), "{text}");
        assert!(
            text.starts_with("My card is ") && text.ends_with(", thanks bye"),
            "{text}"
        );
        assert_eq!(f.len(), 1);
        for cut in 0..=input.len() {
            let (out, _) = run_split(input.as_bytes(), &[cut]);
            assert_eq!(client_text(&out), text, "cut at {cut}");
        }
    }

    #[test]
    fn clean_stream_passes_byte_for_byte_apart_from_holdback() {
        let input = stream(&["Hello", " there,", " how are", " you?"]);
        let (out, f) = run_split(input.as_bytes(), &[]);
        assert!(f.is_empty());
        assert_eq!(client_text(&out), "Hello there, how are you?");
        // Same number of events or one more (a release event); every event valid.
        let n_in = input.matches("\n\n").count();
        let n_out = std::str::from_utf8(&out).unwrap().matches("\n\n").count();
        assert!(n_out == n_in || n_out == n_in + 1, "{n_in} {n_out}");
    }

    #[test]
    fn held_text_released_when_upstream_cuts_short() {
        let input = chunk("my ssn: ") + &chunk("123-45-67") + &chunk("89");
        let (out, _) = run_split(input.as_bytes(), &[]);
        let text = client_text(&out);
        assert!(text.starts_with("my ssn: "), "{text}");
        assert!(
            !text.contains("6789") && text.contains("[REDACTED:SSN]"),
            "{text}"
        );
    }

    #[test]
    fn anthropic_deltas_and_non_json_pass() {
        let mut input =
            String::from("event: message_start\ndata: {\"type\":\"message_start\"}\n\n");
        for t in ["ssn 123-4", "5-6789 ok"] {
            input.push_str(&format!(
                "event: content_block_delta\ndata: {}\n\n",
                serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}})
            ));
        }
        input.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        input.push_str(": comment\ndata: not json\n\n");
        let (out, f) = run_split(input.as_bytes(), &[]);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("6789"), "{s}");
        assert!(s.contains("[REDACTED:SSN]"), "{s}");
        assert!(s.contains("event: content_block_stop\n"));
        assert!(s.ends_with(": comment\ndata: not json\n\n"));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn fuzz_body_on_fixtures() {
        let mut inputs: Vec<Vec<u8>> = vec![
            stream(&["My card is 4111 11", "11 1111 ", "1111, thanks"]).into_bytes(),
            b"data: {\"choices\":[{\"index\":9,\"delta\":{\"content\":\"123-45-6789\"}}]}\n\n".to_vec(),
            b"\xEF\xBB\xBFdata: {\"delta\":\"x\",\"type\":\"response.output_text.delta\"}\r\n\r\n".to_vec(),
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}},{\"delta\":{\"content\":\"b\"}}]}\n\n".to_vec(),
            b"data: [DONE]\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"\\ud83d\"}}]}\n\n".to_vec(),
        ];
        inputs.push(vec![b'd'; 300_000]);
        for body in &inputs {
            for sel in [0u8, 1, 17, 200, 255] {
                let mut d = vec![sel];
                d.extend_from_slice(body);
                crate::pii::fuzzing::fuzz_sse(&d);
            }
        }
    }
}
