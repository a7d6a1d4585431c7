//! Incremental, zero-copy Server-Sent Events splitter (WHATWG HTML "event stream" parsing).
//!
//! Owns: finding event boundaries in an SSE byte stream that arrives in arbitrary chunks, and
//! handing each dispatched event (`event` type + joined `data`) to a callback.
//!
//! Parsing follows the WHATWG algorithm: lines end in CRLF, LF or CR; a leading UTF-8 BOM is
//! dropped; a line starting with `:` is a comment; `field:value` (one leading space of the value
//! removed) or a bare `field`; `data` lines are joined with `\n`; `event` sets the type (default
//! `message`); `id` (unless it contains NUL) sets the last event id; `retry` (ASCII digits only)
//! sets the reconnection time; a blank line dispatches, unless no `data` line was seen. An
//! unterminated final event is *not* dispatched ([`SseSplitter::finish`] reports it truncated).
//!
//! Invariants:
//! * **Zero copy in the common case**: an event whose block (its lines up to and including the
//!   blank line) lies entirely inside one chunk and has at most one `data` line is handed out as
//!   slices of that chunk. Only events spanning chunks (or joining several `data` lines) are
//!   assembled in internal buffers, which are reused: no allocation per chunk in steady state.
//! * **Bounded carry**: a block larger than the configured limit (default [`EVENT_BYTES_MAX`],
//!   measured on the raw bytes of the block) is skipped and counted in
//!   [`SseSplitter::oversized_events`]; the carried bytes never exceed the limit. The decision
//!   depends only on the bytes, never on how they were chunked.
//! * **Split independence**: every split of the same input yields the same events and spans.
//!
//! Spans: [`SseEvent::span`] is the stream byte range of the event's block, from the first byte
//! after the previous block up to and including the first byte of the dispatching blank line's
//! terminator. When a CR terminator is followed by LF, that LF is the first byte of the *next*
//! block. Dropping a span therefore always leaves a well-formed stream (the LF completes the
//! preceding block's CRLF). The CR is dispatched immediately so dispatch never waits for the
//! next chunk.

use memchr::{memchr, memchr2};
use std::ops::Range;

/// Default bound on the raw size of one SSE event block (the carry buffer never grows past it).
pub const EVENT_BYTES_MAX: usize = 1024 * 1024;

const BOM: &[u8; 3] = b"\xEF\xBB\xBF";
const DEFAULT_EVENT_TYPE: &[u8] = b"message";

/// One dispatched event. Borrows from the fed chunk when possible, else from the splitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// Event type; `message` when no (or an empty) `event` field was present.
    pub event: &'a [u8],
    /// The `data` lines joined with `\n` (no trailing newline).
    pub data: &'a [u8],
    /// Stream byte offsets of the event's block (see the module docs).
    pub span: Range<u64>,
}

/// Where a field value of the block being parsed currently lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// Field not seen in this block.
    None,
    /// In the current chunk, at this range.
    Chunk(usize, usize),
    /// In the splitter's owned buffer (`data` or `event`).
    Owned,
}

/// Incremental SSE splitter. One per stream; reusable via [`SseSplitter::reset`].
#[derive(Debug)]
pub struct SseSplitter {
    limit_bytes: usize,
    /// Stream offset of the first byte of the next chunk.
    offset: u64,
    /// Stream offset where the block in progress starts.
    block_start: u64,
    /// Partial line carried from a previous chunk (only when `line_open` and not oversized).
    line: Vec<u8>,
    /// True when the current line already has bytes from a previous chunk.
    line_open: bool,
    /// The previous chunk ended with CR: skip one LF at the start of the next.
    pending_cr: bool,
    /// Owned data buffer: joined data lines (no trailing LF).
    data: Vec<u8>,
    data_loc: Loc,
    /// Owned event-type buffer.
    event: Vec<u8>,
    event_loc: Loc,
    /// The block in progress is over the limit: skip it up to its blank line.
    oversized: bool,
    oversized_events: u32,
    last_event_id: Vec<u8>,
    retry_ms: Option<u64>,
    /// BOM bytes matched so far at stream start; `None` once decided.
    bom_matched: Option<usize>,
}

impl Default for SseSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl SseSplitter {
    /// A splitter with the default [`EVENT_BYTES_MAX`] bound.
    pub fn new() -> Self {
        Self::with_limit(EVENT_BYTES_MAX)
    }

    /// A splitter whose events may be at most `limit_bytes` raw bytes (config override).
    pub fn with_limit(limit_bytes: usize) -> Self {
        SseSplitter {
            limit_bytes: limit_bytes.max(1),
            offset: 0,
            block_start: 0,
            line: Vec::new(),
            line_open: false,
            pending_cr: false,
            data: Vec::new(),
            data_loc: Loc::None,
            event: Vec::new(),
            event_loc: Loc::None,
            oversized: false,
            oversized_events: 0,
            last_event_id: Vec::new(),
            retry_ms: None,
            bom_matched: Some(0),
        }
    }

    /// Forget the stream (keeps buffer capacity) so the splitter can serve another stream.
    pub fn reset(&mut self) {
        let limit = self.limit_bytes;
        let (mut line, mut data, mut event, mut id) = (
            std::mem::take(&mut self.line),
            std::mem::take(&mut self.data),
            std::mem::take(&mut self.event),
            std::mem::take(&mut self.last_event_id),
        );
        line.clear();
        data.clear();
        event.clear();
        id.clear();
        *self = SseSplitter {
            line,
            data,
            event,
            last_event_id: id,
            ..SseSplitter::with_limit(limit)
        };
    }

    /// The configured raw-size bound of one event.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Events skipped because their block exceeded the limit (counted as malformed).
    pub fn oversized_events(&self) -> u32 {
        self.oversized_events
    }

    /// The last event id set by an `id` field (empty if none).
    pub fn last_event_id(&self) -> &[u8] {
        &self.last_event_id
    }

    /// The reconnection time set by the last valid `retry` field.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Total bytes fed so far (stream offset of the next byte).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Stream offset where the event block in progress starts (== `offset()` between blocks).
    pub fn block_start(&self) -> u64 {
        self.block_start
    }

    /// Feed the next chunk; `on_event` is called for every event completed by it, in order.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(SseEvent<'_>)) {
        let mut chunk = chunk;
        if let Some(matched) = self.bom_matched {
            let need = &BOM[matched..];
            let n = need.len().min(chunk.len());
            if chunk[..n] == need[..n] {
                if matched + n == BOM.len() {
                    self.bom_matched = None;
                    self.offset += BOM.len() as u64;
                } else {
                    self.bom_matched = Some(matched + n);
                }
                chunk = &chunk[n..];
            } else {
                // Not a BOM: replay the bytes we held back as ordinary content.
                self.bom_matched = None;
                if matched > 0 {
                    self.feed_inner(&BOM[..matched], &mut on_event);
                }
            }
            if chunk.is_empty() {
                return;
            }
        }
        self.feed_inner(chunk, &mut on_event);
    }

    /// End of stream. Returns `true` when an unterminated event (a `data` line or a partial
    /// line) was pending: per spec it is not dispatched. The splitter is reset afterwards.
    pub fn finish(&mut self) -> bool {
        let truncated = self.oversized
            || self.data_loc != Loc::None
            || (self.line_open && !self.line.is_empty())
            || matches!(self.bom_matched, Some(m) if m > 0);
        let oversized = self.oversized_events;
        self.reset();
        self.oversized_events = oversized;
        truncated
    }

    fn feed_inner<F: FnMut(SseEvent<'_>)>(&mut self, chunk: &[u8], on_event: &mut F) {
        let base = self.offset;
        let mut pos = 0usize;
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                pos = 1;
            }
        }
        let mut line_start = pos;
        while let Some(rel) = memchr2(b'\n', b'\r', &chunk[pos..]) {
            let i = pos + rel;
            let is_cr = chunk[i] == b'\r';
            let end_off = base + i as u64 + 1;
            if self.line_open {
                self.line_open = false;
                // Check first: the carry must never grow past the limit, even transiently.
                self.check_limit(end_off);
                if !self.oversized {
                    self.line.extend_from_slice(&chunk[line_start..i]);
                    let line = std::mem::take(&mut self.line);
                    self.owned_line(&line);
                    self.line = line;
                }
                self.line.clear();
            } else if line_start == i {
                self.dispatch(chunk, end_off, on_event);
            } else {
                self.check_limit(end_off);
                if !self.oversized {
                    self.chunk_line(chunk, line_start, i);
                }
            }
            pos = i + 1;
            if is_cr {
                if pos < chunk.len() {
                    if chunk[pos] == b'\n' {
                        pos += 1;
                    }
                } else {
                    self.pending_cr = true;
                }
            }
            line_start = pos;
        }
        self.offset = base + chunk.len() as u64;
        // Carry the block in progress: chunk-located values and the partial line.
        if line_start < chunk.len() {
            self.line_open = true;
        }
        self.check_limit(self.offset);
        if self.oversized {
            return;
        }
        if let Loc::Chunk(s, e) = self.data_loc {
            self.data.clear();
            self.data.extend_from_slice(&chunk[s..e]);
            self.data_loc = Loc::Owned;
        }
        if let Loc::Chunk(s, e) = self.event_loc {
            self.event.clear();
            self.event.extend_from_slice(&chunk[s..e]);
            self.event_loc = Loc::Owned;
        }
        if line_start < chunk.len() {
            self.line.extend_from_slice(&chunk[line_start..]);
        }
    }

    /// Enter skip mode when the block in progress (up to `now_off`) exceeds the bound.
    #[inline]
    fn check_limit(&mut self, now_off: u64) {
        if !self.oversized && now_off - self.block_start > self.limit_bytes as u64 {
            self.oversized = true;
            self.data_loc = Loc::None;
            self.event_loc = Loc::None;
            self.data.clear();
            self.event.clear();
            self.line.clear();
        }
    }

    fn dispatch<F: FnMut(SseEvent<'_>)>(&mut self, chunk: &[u8], end_off: u64, on_event: &mut F) {
        let span = self.block_start..end_off;
        self.block_start = end_off;
        if self.oversized || end_off - span.start > self.limit_bytes as u64 {
            self.oversized = false;
            self.oversized_events = self.oversized_events.saturating_add(1);
        } else if self.data_loc != Loc::None {
            let data: &[u8] = match self.data_loc {
                Loc::Chunk(s, e) => &chunk[s..e],
                _ => &self.data,
            };
            let event: &[u8] = match self.event_loc {
                Loc::Chunk(s, e) if s < e => &chunk[s..e],
                Loc::Owned if !self.event.is_empty() => &self.event,
                _ => DEFAULT_EVENT_TYPE,
            };
            on_event(SseEvent { event, data, span });
        }
        self.data_loc = Loc::None;
        self.event_loc = Loc::None;
        self.data.clear();
        self.event.clear();
    }

    /// A complete, non-empty line located at `chunk[s..e]`.
    #[inline]
    fn chunk_line(&mut self, chunk: &[u8], s: usize, e: usize) {
        let line = &chunk[s..e];
        let Some((field, vs)) = split_field(line) else {
            return;
        };
        let (vs, ve) = (s + vs, e);
        match field {
            b"data" => match self.data_loc {
                Loc::None => self.data_loc = Loc::Chunk(vs, ve),
                Loc::Chunk(ps, pe) => {
                    self.data.clear();
                    self.data.extend_from_slice(&chunk[ps..pe]);
                    self.data.push(b'\n');
                    self.data.extend_from_slice(&chunk[vs..ve]);
                    self.data_loc = Loc::Owned;
                }
                Loc::Owned => {
                    self.data.push(b'\n');
                    self.data.extend_from_slice(&chunk[vs..ve]);
                }
            },
            b"event" => self.event_loc = Loc::Chunk(vs, ve),
            _ => self.other_field(field, &chunk[vs..ve]),
        }
    }

    /// A complete, non-empty line assembled in the carry buffer.
    fn owned_line(&mut self, line: &[u8]) {
        let Some((field, vs)) = split_field(line) else {
            return;
        };
        let value = &line[vs..];
        match field {
            b"data" => {
                if self.data_loc != Loc::None {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.data_loc = Loc::Owned;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
                self.event_loc = Loc::Owned;
            }
            _ => self.other_field(field, value),
        }
    }

    fn other_field(&mut self, field: &[u8], value: &[u8]) {
        match field {
            b"id" if memchr(0, value).is_none() => {
                self.last_event_id.clear();
                self.last_event_id.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                let ms = value.iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                self.retry_ms = Some(ms);
            }
            _ => {}
        }
    }
}

/// Split a non-empty line into (field name, value start offset). `None` for comments.
#[inline]
fn split_field(line: &[u8]) -> Option<(&[u8], usize)> {
    if line.first() == Some(&b':') {
        return None;
    }
    match memchr(b':', line) {
        Some(c) => {
            let vs = if line.get(c + 1) == Some(&b' ') {
                c + 2
            } else {
                c + 1
            };
            Some((&line[..c], vs))
        }
        None => Some((line, line.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ev = (Vec<u8>, Vec<u8>, Range<u64>);

    fn run(chunks: &[&[u8]]) -> (Vec<Ev>, bool, u32) {
        let mut s = SseSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |e| out.push((e.event.to_vec(), e.data.to_vec(), e.span)));
        }
        let over = s.oversized_events();
        (out, s.finish(), over)
    }

    fn all_splits(input: &[u8]) -> (Vec<Ev>, bool, u32) {
        let whole = run(&[input]);
        for i in 0..=input.len() {
            assert_eq!(run(&[&input[..i], &input[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn spec_examples() {
        let (ev, trunc, _) = all_splits(
            b"data: YHOO\ndata: +2\ndata: 10\n\n: comment\nevent: add\ndata: 73857293\n\n",
        );
        assert!(!trunc);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].0, b"message");
        assert_eq!(ev[0].1, b"YHOO\n+2\n10");
        assert_eq!(ev[1].0, b"add");
        assert_eq!(ev[1].1, b"73857293");
        // spec: "data" alone dispatches an empty data; "data\ndata" dispatches "\n"; no-data blocks
        // dispatch nothing.
        let (ev, _, _) = all_splits(b"data\n\ndata\ndata\n\ndata:\n\nevent: x\n\n");
        let datas: Vec<&[u8]> = ev.iter().map(|e| e.1.as_slice()).collect();
        assert_eq!(datas, vec![&b""[..], b"\n", b""]);
        // one leading space removed, not two
        let (ev, _, _) = all_splits(b"data:test\n\ndata:  test\n\n");
        assert_eq!(ev[0].1, b"test");
        assert_eq!(ev[1].1, b" test");
    }

    #[test]
    fn line_endings_bom_and_spans() {
        let input = b"\xEF\xBB\xBFdata: a\r\n\r\ndata: b\r\rdata: c\n\n";
        let (ev, trunc, _) = all_splits(input);
        assert!(!trunc);
        let datas: Vec<&[u8]> = ev.iter().map(|e| e.1.as_slice()).collect();
        assert_eq!(datas, vec![&b"a"[..], b"b", b"c"]);
        // spans tile the stream (the CRLF's LF starts the next block)
        assert_eq!(ev[0].2.start, 0);
        assert_eq!(ev[0].2.end, ev[1].2.start);
        assert_eq!(&input[ev[1].2.start as usize..][..1], b"\n");
        assert_eq!(ev[2].2.end, input.len() as u64);
        // a partial BOM is content
        let (ev, _, _) = all_splits(b"\xEF\xBBdata: x\n\ndata: y\n\n");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1, b"y");
    }

    #[test]
    fn unterminated_final_event_is_truncated_not_dispatched() {
        let (ev, trunc, _) = all_splits(b"data: a\n\ndata: b\n");
        assert_eq!(ev.len(), 1);
        assert!(trunc);
        let (_, trunc, _) = all_splits(b"data: a\n\n");
        assert!(!trunc);
    }

    #[test]
    fn id_and_retry() {
        let mut s = SseSplitter::new();
        s.feed(b"id: 7\nretry: 1500\nretry: x\ndata: q\n\n", |_| {});
        assert_eq!(s.last_event_id(), b"7");
        assert_eq!(s.retry_ms(), Some(1500));
    }

    #[test]
    fn oversized_event_is_skipped_and_bounded() {
        let mut input = b"data: ok\n\ndata: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend_from_slice(b"\n\ndata: after\n\n");
        let run_lim = |chunks: &[&[u8]]| {
            let mut s = SseSplitter::with_limit(64);
            let mut out = Vec::new();
            for c in chunks {
                s.feed(c, |e| out.push(e.data.to_vec()));
                assert!(s.line.len() <= 64 && s.data.len() <= 64);
            }
            (out, s.oversized_events())
        };
        let whole = run_lim(&[&input]);
        assert_eq!(whole.0, vec![b"ok".to_vec(), b"after".to_vec()]);
        assert_eq!(whole.1, 1);
        for i in 0..=input.len() {
            assert_eq!(run_lim(&[&input[..i], &input[i..]]), whole);
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run_lim(&bytes), whole);
    }

    #[test]
    fn carry_buffers_are_reused_in_steady_state() {
        let event =
            b"event: delta\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\ndata: x\n\n";
        let stream: Vec<u8> = event
            .iter()
            .copied()
            .cycle()
            .take(event.len() * 50)
            .collect();
        let mut s = SseSplitter::new();
        let mut n = 0;
        for c in stream.chunks(7) {
            s.feed(c, |_| n += 1);
        }
        let caps = (s.line.capacity(), s.data.capacity(), s.event.capacity());
        for c in stream.chunks(7) {
            s.feed(c, |_| n += 1);
        }
        assert_eq!(n, 100);
        assert_eq!(
            caps,
            (s.line.capacity(), s.data.capacity(), s.event.capacity())
        );
    }

    #[test]
    fn zero_copy_when_event_fits_in_chunk() {
        let chunk = b"data: {\"a\":1}\n\n";
        let mut s = SseSplitter::new();
        let range = chunk.as_ptr_range();
        let mut seen = 0;
        s.feed(chunk, |e| {
            assert!(range.contains(&e.data.as_ptr()));
            seen += 1;
        });
        assert_eq!(seen, 1);
    }
}
