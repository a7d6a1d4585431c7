//! Stream-side half of include-usage injection: drop the usage-only chunk the client never
//! asked for.
//!
//! Owns: [`UsageChunkStripper`]. When the proxy rewrote a request with
//! [`super::inject_include_usage`], the upstream ends the stream with an extra event
//! `data: {..., "choices": [], "usage": {...}}`. The stripper sees the upstream bytes and tells
//! the proxy, per chunk, which bytes to forward, so that the client receives exactly the stream
//! it would have received without the injection.
//!
//! Invariants:
//! * **Zero copy for everything forwarded from the current chunk**: forwarding decisions are
//!   [`Forward::Chunk`] byte ranges of the chunk just fed.
//! * Bytes of an event block still incomplete at the end of a chunk are *held* (copied, bounded
//!   by the splitter's event limit) until the block completes, because only then is it known
//!   whether the block is the usage chunk; they come back as [`Forward::Held`]. SSE clients only
//!   act on complete events, so holding adds no event latency.
//! * Only a dispatched event whose JSON has `"choices": []` and a non-null `usage` object is
//!   dropped (JSON is parsed only for events containing both keys). Oversized or malformed
//!   events are always forwarded, and [`UsageChunkStripper::finish`] releases whatever is held:
//!   nothing but the usage chunk is ever lost.
//! * Usage extraction is independent: feed the *upstream* bytes to the
//!   [`super::UsageAccumulator`] as well, it needs the chunk being dropped here.

use super::json;
use super::sse::{SseSplitter, EVENT_BYTES_MAX};
use super::usage::key_values;
use memchr::memmem;
use simd_json::prelude::*;
use std::ops::Range;
use std::sync::LazyLock;

/// A forwarding decision, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward<'a> {
    /// Forward `chunk[range]` of the chunk just fed (zero copy).
    Chunk(Range<usize>),
    /// Forward these previously held bytes (the start of an event that began in an earlier
    /// chunk and turned out not to be the usage chunk).
    Held(&'a [u8]),
}

/// Drops the injected usage-only chunk from an OpenAI chat/completions SSE stream.
#[derive(Debug)]
pub struct UsageChunkStripper {
    splitter: SseSplitter,
    /// Stream offset of the next chunk's first byte.
    pos: u64,
    /// Held bytes: stream range `held_start .. held_start + held.len()`.
    held: Vec<u8>,
    held_start: u64,
    drops: Vec<Range<u64>>,
    dropped_events: u32,
}

impl Default for UsageChunkStripper {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageChunkStripper {
    /// A stripper with the default [`EVENT_BYTES_MAX`] event bound.
    pub fn new() -> Self {
        Self::with_limit(EVENT_BYTES_MAX)
    }

    /// A stripper whose held bytes never exceed `limit_bytes` (larger events are forwarded).
    pub fn with_limit(limit_bytes: usize) -> Self {
        UsageChunkStripper {
            splitter: SseSplitter::with_limit(limit_bytes),
            pos: 0,
            held: Vec::new(),
            held_start: 0,
            drops: Vec::new(),
            dropped_events: 0,
        }
    }

    /// Usage-only events dropped so far.
    pub fn dropped_events(&self) -> u32 {
        self.dropped_events
    }

    /// Bytes currently held back (part of an incomplete event).
    pub fn held_bytes(&self) -> usize {
        self.held.len()
    }

    /// Feed the next upstream chunk; `forward` receives, in order, what to send downstream.
    pub fn feed(&mut self, chunk: &[u8], mut forward: impl FnMut(Forward<'_>)) {
        let chunk_start = self.pos;
        let chunk_end = chunk_start + chunk.len() as u64;
        self.pos = chunk_end;
        let drops = &mut self.drops;
        drops.clear();
        self.splitter.feed(chunk, |ev| {
            if is_usage_only_chunk(ev.data) {
                drops.push(ev.span);
            }
        });
        self.dropped_events = self
            .dropped_events
            .saturating_add(u32::try_from(self.drops.len()).unwrap_or(u32::MAX));
        let block_start = self.splitter.block_start();
        let over_limit = chunk_end - block_start > self.splitter.limit_bytes() as u64;
        let hold_from = if over_limit { chunk_end } else { block_start };
        if hold_from < chunk_start {
            // The held block is still incomplete: keep holding.
            self.held.extend_from_slice(chunk);
            return;
        }
        let cursor = if self.held.is_empty() {
            chunk_start
        } else {
            self.held_start
        };
        let mut emit = |a: u64, b: u64| {
            if a >= b {
                return;
            }
            if a < chunk_start {
                let he = b.min(chunk_start);
                let (s, e) = (
                    (a - self.held_start) as usize,
                    (he - self.held_start) as usize,
                );
                if let Some(bytes) = self.held.get(s..e) {
                    forward(Forward::Held(bytes));
                }
            }
            if b > chunk_start {
                let cs = a.max(chunk_start);
                forward(Forward::Chunk(
                    (cs - chunk_start) as usize..(b - chunk_start) as usize,
                ));
            }
        };
        let mut at = cursor;
        for d in &self.drops {
            emit(at, d.start.max(at));
            at = at.max(d.end);
        }
        emit(at, hold_from);
        self.held.clear();
        self.held_start = hold_from;
        if let Some(tail) = chunk.get((hold_from - chunk_start) as usize..) {
            self.held.extend_from_slice(tail);
        }
    }

    /// End of stream: releases held bytes (an unterminated tail is forwarded as received).
    pub fn finish(&mut self, mut forward: impl FnMut(Forward<'_>)) {
        self.splitter.finish();
        if !self.held.is_empty() {
            forward(Forward::Held(&self.held));
        }
        self.held.clear();
        self.held_start = self.pos;
    }
}

/// True for an OpenAI chunk with an empty `choices` array and a `usage` object.
///
/// Prefilter without parsing: `"choices"` must be followed by an empty array and `"usage"` by an
/// object (every include-usage chunk carries `"usage":null`, so the key alone selects nothing).
pub fn is_usage_only_chunk(data: &[u8]) -> bool {
    static F_USAGE: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"usage\""));
    static F_CHOICES: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\"choices\""));
    let empty_choices = key_values(&F_CHOICES, data).any(|i| {
        data.get(i) == Some(&b'[')
            && data
                .get(i + 1..)
                .and_then(|rest| rest.iter().find(|c| !c.is_ascii_whitespace()))
                == Some(&b']')
    });
    if !empty_choices || !key_values(&F_USAGE, data).any(|i| data.get(i) == Some(&b'{')) {
        return false;
    }
    json::parse(data, |v| {
        let empty_choices = v
            .get("choices")
            .and_then(|c| c.as_array())
            .is_some_and(|a| a.is_empty());
        empty_choices && v.get("usage").is_some_and(|u| u.is_object())
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n\
data: [DONE]\n\n";

    fn strip(chunks: &[&[u8]], limit: usize) -> (Vec<u8>, u32) {
        let mut s = UsageChunkStripper::with_limit(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |f| match f {
                Forward::Chunk(r) => out.extend_from_slice(&c[r]),
                Forward::Held(b) => out.extend_from_slice(b),
            });
            assert!(s.held_bytes() <= limit);
        }
        s.finish(|f| {
            if let Forward::Held(b) = f {
                out.extend_from_slice(b)
            }
        });
        (out, s.dropped_events())
    }

    #[test]
    fn drops_only_the_usage_chunk_for_every_split() {
        let usage_start = memmem::find(STREAM, b"data: {\"choices\":[],").expect("present");
        let done = memmem::find(STREAM, b"data: [DONE]").expect("present");
        let mut want = STREAM[..usage_start].to_vec();
        want.extend_from_slice(&STREAM[done..]);
        let whole = strip(&[STREAM], EVENT_BYTES_MAX);
        assert_eq!(whole, (want.clone(), 1));
        for i in 0..=STREAM.len() {
            assert_eq!(
                strip(&[&STREAM[..i], &STREAM[i..]], EVENT_BYTES_MAX),
                whole,
                "{i}"
            );
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(strip(&bytes, EVENT_BYTES_MAX), whole);
        let threes: Vec<&[u8]> = STREAM.chunks(3).collect();
        assert_eq!(strip(&threes, EVENT_BYTES_MAX), whole);
    }

    #[test]
    fn crlf_stream_stays_well_formed_and_tail_is_released() {
        let crlf: Vec<u8> = String::from_utf8_lossy(STREAM)
            .replace('\n', "\r\n")
            .into_bytes();
        let (out, dropped) = strip(&[&crlf], EVENT_BYTES_MAX);
        assert_eq!(dropped, 1);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(text.ends_with("}\r\n\r\ndata: [DONE]\r\n\r\n"), "{text:?}");
        // unterminated tail and oversized events pass through untouched
        let (out, dropped) = strip(&[b"data: {\"a\":1}\n\ndata: partial"], EVENT_BYTES_MAX);
        assert_eq!(
            (out.as_slice(), dropped),
            (&b"data: {\"a\":1}\n\ndata: partial"[..], 0)
        );
        let (out, dropped) = strip(&STREAM.chunks(7).collect::<Vec<_>>(), 40);
        assert_eq!((out.as_slice(), dropped), (STREAM, 0));
    }
}
