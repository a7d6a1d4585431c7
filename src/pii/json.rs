//! JSON-aware body redaction: a validating JSON span scanner that finds the string values at
//! the prompt/completion paths of the OpenAI, Anthropic, Responses and TGI dialects, decodes
//! their escapes (including surrogate pairs) before matching, and splices replacements back
//! into the *raw* document.
//!
//! Invariants:
//! * Fail-closed: invalid UTF-8, invalid JSON, bad escapes (lone surrogates, bad hex), nesting
//!   deeper than [`JSON_DEPTH_MAX`], oversize or undecodable bodies are [`PiiError`]s.
//! * Byte preservation: only the raw bytes of matched spans change; all other bytes of the
//!   document (including the other escapes of the same string) are copied verbatim. The output
//!   is valid JSON because replacements are JSON-escaped.
//! * Linear: one pass over the document plus one scan per inspected string.
//! * Never stores values: [`AuditFinding`] holds entity, action, path and offsets.
//! * A rewritten body is always identity-encoded (decompressed); the proxy drops
//!   `Content-Encoding` and sets `Content-Length`. An unchanged body is forwarded as received.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use super::decode::decode_body;
use super::engine::Engine;
use super::entity::{Action, Direction, Entity, Finding};
use super::error::PiiError;

/// Maximum JSON nesting depth accepted (deeper bodies are refused, never passed unscanned).
pub const JSON_DEPTH_MAX: usize = 128;

/// Findings per document the per-document vectors are sized for up front (a capacity, not a
/// limit: more findings grow them).
const FINDINGS_EXPECTED: usize = 16;

/// Bytes of one replacement the scratch string is sized for up front (a capacity, not a limit).
const REPLACEMENT_BYTES_EXPECTED: usize = 64;

/// Path depth the parser's path stack is sized for up front (a capacity, not a limit).
const PATH_DEPTH_EXPECTED: usize = 8;

/// One finding for metrics and audit. Offsets are byte offsets in the *decoded* string value at
/// `path`. Never contains the value.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditFinding {
    pub entity: Entity,
    /// Tag (`SSN`, custom name...), for metric labels.
    pub name: Arc<str>,
    /// Configured action (in dry-run mode, what *would* have happened).
    pub action: Action,
    pub direction: Direction,
    /// JSON path of the string, e.g. `messages[1].content[0].text`.
    pub path: String,
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
}

/// Result of [`redact_request`] / [`redact_response`].
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// Nothing to rewrite: forward the original bytes (including their `Content-Encoding`).
    /// Findings with `log` actions or in dry-run mode are still reported.
    Unchanged { findings: Vec<AuditFinding> },
    /// Forward `body` instead: valid JSON, identity-encoded; fix `Content-Length`, drop
    /// `Content-Encoding`.
    Rewritten {
        body: Vec<u8>,
        findings: Vec<AuditFinding>,
    },
    /// Refuse the request (400) naming these entity types (sorted, deduplicated), never values.
    Blocked {
        entities: Vec<Arc<str>>,
        findings: Vec<AuditFinding>,
    },
}

impl RequestOutcome {
    /// Findings for metrics/audit.
    pub fn findings(&self) -> &[AuditFinding] {
        match self {
            RequestOutcome::Unchanged { findings }
            | RequestOutcome::Rewritten { findings, .. }
            | RequestOutcome::Blocked { findings, .. } => findings,
        }
    }
}

#[derive(Debug, Clone)]
enum Seg<'a> {
    Key(Cow<'a, str>),
    Idx(usize),
}

#[derive(Clone, Copy)]
enum Pat {
    K(&'static str),
    I,
    /// Any suffix (all strings below).
    Rest,
}
use Pat::{Rest, I, K};

/// String paths inspected in requests.
const REQUEST_PATHS: &[&[Pat]] = &[
    &[K("messages"), I, K("content")],
    &[K("messages"), I, K("content"), I, K("text")],
    &[K("messages"), I, K("content"), I, K("content")],
    &[
        K("messages"),
        I,
        K("content"),
        I,
        K("content"),
        I,
        K("text"),
    ],
    &[K("messages"), I, K("content"), I, K("input"), Rest],
    &[
        K("messages"),
        I,
        K("tool_calls"),
        I,
        K("function"),
        K("arguments"),
    ],
    &[K("prompt")],
    &[K("prompt"), I],
    &[K("input")],
    &[K("input"), I],
    &[K("input"), I, K("content")],
    &[K("input"), I, K("content"), I, K("text")],
    &[K("input"), I, K("output")],
    &[K("input"), I, K("arguments")],
    &[K("system")],
    &[K("system"), I, K("text")],
    &[K("instructions")],
    &[K("inputs")],
    &[K("inputs"), I],
];

/// String paths inspected in non-streaming responses.
const RESPONSE_PATHS: &[&[Pat]] = &[
    &[K("choices"), I, K("message"), K("content")],
    &[K("choices"), I, K("message"), K("content"), I, K("text")],
    &[
        K("choices"),
        I,
        K("message"),
        K("tool_calls"),
        I,
        K("function"),
        K("arguments"),
    ],
    &[K("choices"), I, K("text")],
    &[K("choices"), I, K("delta"), K("content")],
    &[K("content"), I, K("text")],
    &[K("content"), I, K("input"), Rest],
    &[K("output"), I, K("content"), I, K("text")],
    &[K("output"), I, K("arguments")],
    &[K("output_text")],
    &[K("generated_text")],
    &[I, K("generated_text")],
];

const DELTA_PATHS: &[&[Pat]] = &[&[K("choices"), I, K("delta"), K("content")]];

/// Most patterns a path list may hold: the parser tracks the patterns still matching the
/// current path as one bit each in a `u64` (checked by a unit test for every list).
const PATS_MAX: usize = 64;

/// One path list as bit sets, so the parser follows every pattern at once: bit `i` stands for
/// `pats[i]`. Why: each key is then compared once, against the distinct names at its depth,
/// when the parser enters it (not once per pattern per string value below it), and whole
/// subtrees (`model`, `temperature`, `tools`...) drop to no pattern at their first segment.
struct PatIndex {
    /// Per depth: the distinct key names there and the patterns naming each.
    names: Vec<Vec<(&'static str, u64)>>,
    /// Per depth: patterns with an array index there.
    idx: Vec<u64>,
    /// Per depth: patterns whose `Rest` (always last) is at or before it (any segment goes).
    rest: Vec<u64>,
    /// Per depth: patterns a string value at a path of that many segments matches.
    end: Vec<u64>,
    /// Every pattern (the state at the root).
    all: u64,
}

impl PatIndex {
    fn new(pats: &[&[Pat]]) -> PatIndex {
        let depth_max = pats.iter().map(|p| p.len()).max().unwrap_or(0) + 1;
        let mut ix = PatIndex {
            names: vec![Vec::new(); depth_max],
            idx: vec![0; depth_max],
            rest: vec![0; depth_max],
            end: vec![0; depth_max],
            all: 0,
        };
        for (i, p) in pats.iter().enumerate().take(PATS_MAX) {
            let bit = 1u64 << i;
            ix.all |= bit;
            let open = matches!(p.last(), Some(Rest));
            for (d, seg) in p.iter().enumerate() {
                match seg {
                    K(name) => match ix.names[d].iter_mut().find(|(n, _)| n == name) {
                        Some((_, m)) => *m |= bit,
                        None => ix.names[d].push((name, bit)),
                    },
                    I => ix.idx[d] |= bit,
                    Rest => {
                        for r in &mut ix.rest[d..] {
                            *r |= bit;
                        }
                    }
                }
            }
            if open {
                for e in &mut ix.end[p.len()..] {
                    *e |= bit;
                }
            } else {
                ix.end[p.len()] |= bit;
            }
        }
        ix
    }

    /// The patterns of `alive` (matching the first `depth` segments of a path) that still
    /// match after the segment at `depth`: an object key, or an array index when `key` is
    /// `None`.
    #[inline]
    fn step(&self, alive: u64, depth: usize, key: Option<&str>) -> u64 {
        if alive == 0 {
            return 0; // a subtree no pattern reaches: no key comparisons
        }
        let d = depth.min(self.rest.len() - 1);
        let named = match key {
            Some(k) if depth == d => self.names[d]
                .iter()
                .find(|(n, _)| *n == k)
                .map_or(0, |&(_, m)| m),
            Some(_) => 0,
            None if depth == d => self.idx[d],
            None => 0,
        };
        alive & (named | self.rest[d])
    }

    /// Whether a string value at a path of `depth` segments, matched so far by `alive`, is at
    /// one of the patterns.
    #[inline]
    fn matches(&self, alive: u64, depth: usize) -> bool {
        alive & self.end[depth.min(self.end.len() - 1)] != 0
    }
}

static REQUEST_INDEX: LazyLock<PatIndex> = LazyLock::new(|| PatIndex::new(REQUEST_PATHS));
static RESPONSE_INDEX: LazyLock<PatIndex> = LazyLock::new(|| PatIndex::new(RESPONSE_PATHS));
static STREAM_INDEX: LazyLock<PatIndex> = LazyLock::new(|| PatIndex::new(STREAM_PATHS));
static DELTA_INDEX: LazyLock<PatIndex> = LazyLock::new(|| PatIndex::new(DELTA_PATHS));

fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

fn bad(offset: usize, reason: &'static str) -> PiiError {
    PiiError::BadJson { offset, reason }
}

/// A raw string value: `start..end` are the bytes between the quotes.
struct RawStr {
    start: usize,
    end: usize,
    escaped: bool,
}

struct Parser<'a, F> {
    b: &'a [u8],
    /// `b` as text when the caller has validated it as UTF-8 already (object keys are then
    /// sliced from it instead of being validated one by one).
    text: Option<&'a str>,
    pos: usize,
    path: Vec<Seg<'a>>,
    pats: &'static PatIndex,
    on_string: F,
}

impl<'a, F: FnMut(&[Seg<'a>], &RawStr) -> Result<(), PiiError>> Parser<'a, F> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    /// Parses one value at `depth`; `alive` holds the patterns of `pats` matching the path so
    /// far (see [`PatIndex`]).
    fn value(&mut self, depth: usize, alive: u64) -> Result<(), PiiError> {
        if depth > JSON_DEPTH_MAX {
            return Err(bad(self.pos, "nesting too deep"));
        }
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(bad(self.pos, "expected object key"));
                    }
                    let k = self.string()?;
                    let key = if k.escaped {
                        Cow::Owned(decode_str(self.b, k.start, k.end, None)?)
                    } else {
                        let raw = match self.text {
                            Some(t) => t.get(k.start..k.end),
                            None => std::str::from_utf8(&self.b[k.start..k.end]).ok(),
                        };
                        Cow::Borrowed(raw.ok_or_else(|| bad(k.start, "invalid utf-8"))?)
                    };
                    self.ws();
                    if self.peek() != Some(b':') {
                        return Err(bad(self.pos, "expected ':'"));
                    }
                    self.pos += 1;
                    let child = self.pats.step(alive, self.path.len(), Some(&key));
                    self.path.push(Seg::Key(key));
                    self.value(depth + 1, child)?;
                    self.path.pop();
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(bad(self.pos, "expected ',' or '}'")),
                    }
                }
            }
            Some(b'[') => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                let mut idx = 0;
                let child = self.pats.step(alive, self.path.len(), None);
                loop {
                    self.path.push(Seg::Idx(idx));
                    self.value(depth + 1, child)?;
                    self.path.pop();
                    idx += 1;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return Err(bad(self.pos, "expected ',' or ']'")),
                    }
                }
            }
            Some(b'"') => {
                let s = self.string()?;
                if self.pats.matches(alive, self.path.len()) {
                    (self.on_string)(&self.path, &s)?;
                }
                Ok(())
            }
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(bad(self.pos, "expected a value")),
        }
    }

    fn lit(&mut self, l: &[u8]) -> Result<(), PiiError> {
        if self.b.get(self.pos..self.pos + l.len()) == Some(l) {
            self.pos += l.len();
            Ok(())
        } else {
            Err(bad(self.pos, "invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - s
    }

    fn number(&mut self) -> Result<(), PiiError> {
        let s = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(bad(s, "invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(bad(s, "invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(bad(s, "invalid number"));
            }
        }
        Ok(())
    }

    /// Validate a string's grammar (escape letters, 4 hex digits, no raw control bytes).
    fn string(&mut self) -> Result<RawStr, PiiError> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let Some(off) = string_stop(&self.b[self.pos..]) else {
                return Err(bad(start, "unterminated string"));
            };
            self.pos += off;
            match self.b[self.pos] {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return Ok(RawStr {
                        start,
                        end,
                        escaped,
                    });
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(self.pos + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.pos += 2
                        }
                        Some(b'u') => {
                            let h = self.b.get(self.pos + 2..self.pos + 6);
                            if !h.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(PiiError::BadEscape { offset: self.pos });
                            }
                            self.pos += 6;
                        }
                        _ => return Err(PiiError::BadEscape { offset: self.pos }),
                    }
                }
                _ => return Err(bad(self.pos, "control character in string")),
            }
        }
    }
}

/// Index of the first byte of `b` that ends a run of plain string content: `"`, `\\` or a raw
/// control byte (< 0x20, which JSON forbids inside strings).
///
/// Why by hand: a prompt is one long string, and this is the parser's inner loop. A `memchr3`
/// for the quote and backslash followed by a second pass for control bytes cost about 8
/// instructions per byte under callgrind. On x86_64 this looks at 16 bytes per step with SSE2
/// (part of the x86_64 baseline, so no runtime detection): three byte compares and one
/// `movemask`, about 0.7 instructions per byte; the SWAR version below (8 bytes per step, about
/// 2 instructions per byte) serves the tail and other targets. Both are exact: the lowest set
/// bit of the mask is the first stop byte.
#[inline]
fn string_stop(b: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let at = sse2::skip_plain(b);
        string_stop_swar(&b[at..]).map(|i| at + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        string_stop_swar(b)
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    /// Offset of the first 16-byte block of `b` that holds a stop byte, or of the tail shorter
    /// than 16 bytes: every byte before the returned offset is plain string content.
    #[inline]
    pub(super) fn skip_plain(b: &[u8]) -> usize {
        let mut at = 0;
        // SAFETY: SSE2 is in every x86_64 CPU (the target's baseline feature set), so the
        // intrinsics are always available; each unaligned load reads 16 bytes at an offset
        // the loop conditions keep inside `b` (b[at..at + 64] and b[at..at + 16]).
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let ctl_max = _mm_set1_epi8(0x1f);
            let stops = |v: __m128i| {
                // Unsigned v <= 0x1f exactly when min(v, 0x1f) == v.
                let ctl = _mm_cmpeq_epi8(_mm_min_epu8(v, ctl_max), v);
                _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                    ctl,
                )
            };
            // the first block alone: most strings (keys, roles, model names) end in it, and
            // `b` runs to the end of the document, so a 64-byte test would mostly look past them
            if at + 16 <= b.len() {
                if _mm_movemask_epi8(stops(_mm_loadu_si128(b.as_ptr().cast::<__m128i>()))) != 0 {
                    return at;
                }
                at += 16;
            }
            // then 64 bytes per test (one movemask for four blocks) while the string goes on;
            // the block loop below finds the first block with a stop byte
            while at + 64 <= b.len() {
                let p = b.as_ptr().add(at);
                let s0 = stops(_mm_loadu_si128(p.cast::<__m128i>()));
                let s1 = stops(_mm_loadu_si128(p.add(16).cast::<__m128i>()));
                let s2 = stops(_mm_loadu_si128(p.add(32).cast::<__m128i>()));
                let s3 = stops(_mm_loadu_si128(p.add(48).cast::<__m128i>()));
                let any = _mm_or_si128(_mm_or_si128(s0, s1), _mm_or_si128(s2, s3));
                if _mm_movemask_epi8(any) != 0 {
                    break;
                }
                at += 64;
            }
            while at + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(at).cast::<__m128i>());
                if _mm_movemask_epi8(stops(v)) != 0 {
                    break;
                }
                at += 16;
            }
        }
        at
    }
}

/// [`string_stop`] with SWAR arithmetic, 8 bytes per step (safe code, any target). Each of the
/// three tests is exact for the lowest flagged byte of a word (a borrow only propagates
/// upwards from a byte that matched), so the lowest bit of their union is the first stop byte.
fn string_stop_swar(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn stops(w: u64) -> u64 {
        let lt = w.wrapping_sub(ONES * 0x20) & !w;
        let q = w ^ (ONES * u64::from(b'"'));
        let q = q.wrapping_sub(ONES) & !q;
        let bs = w ^ (ONES * u64::from(b'\\'));
        let bs = bs.wrapping_sub(ONES) & !bs;
        (lt | q | bs) & HIGH
    }
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let m = stops(u64::from_le_bytes(w));
        if m != 0 {
            return Some(at + (m.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

fn hex4(b: &[u8], p: usize) -> Result<u32, PiiError> {
    let h = b.get(p..p + 4).ok_or(PiiError::BadEscape { offset: p })?;
    let mut v = 0u32;
    for &c in h {
        let d = (c as char)
            .to_digit(16)
            .ok_or(PiiError::BadEscape { offset: p })?;
        v = v * 16 + d;
    }
    Ok(v)
}

/// Decode the raw JSON string bytes `b[s..e]`. When `map` is given, it receives, for each decoded
/// byte, the raw offset of the escape or character it came from.
fn decode_str(
    b: &[u8],
    s: usize,
    e: usize,
    map: Option<&mut Vec<usize>>,
) -> Result<String, PiiError> {
    let mut out = String::with_capacity(e - s);
    decode_into(b, s, e, map, &mut out)?;
    Ok(out)
}

/// [`decode_str`] appending to `out` (reused buffers: no allocation in steady state).
fn decode_into(
    b: &[u8],
    s: usize,
    e: usize,
    mut map: Option<&mut Vec<usize>>,
    out: &mut String,
) -> Result<(), PiiError> {
    let mut p = s;
    while p < e {
        let c = b[p];
        if c != b'\\' {
            // copy one UTF-8 char
            let len = match c {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let chunk = b.get(p..p + len).ok_or(bad(p, "invalid utf-8"))?;
            let st = std::str::from_utf8(chunk).map_err(|_| bad(p, "invalid utf-8"))?;
            out.push_str(st);
            if let Some(m) = map.as_deref_mut() {
                m.extend(std::iter::repeat_n(p, len));
            }
            p += len;
            continue;
        }
        let esc = b
            .get(p + 1)
            .copied()
            .ok_or(PiiError::BadEscape { offset: p })?;
        let (ch, adv) = match esc {
            b'"' => ('"', 2),
            b'\\' => ('\\', 2),
            b'/' => ('/', 2),
            b'b' => ('\u{8}', 2),
            b'f' => ('\u{c}', 2),
            b'n' => ('\n', 2),
            b'r' => ('\r', 2),
            b't' => ('\t', 2),
            b'u' => {
                let hi = hex4(b, p + 2)?;
                if (0xd800..0xdc00).contains(&hi) {
                    if b.get(p + 6..p + 8) != Some(b"\\u") {
                        return Err(PiiError::BadEscape { offset: p });
                    }
                    let lo = hex4(b, p + 8)?;
                    if !(0xdc00..0xe000).contains(&lo) {
                        return Err(PiiError::BadEscape { offset: p });
                    }
                    let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                    (
                        char::from_u32(cp).ok_or(PiiError::BadEscape { offset: p })?,
                        12,
                    )
                } else if (0xdc00..0xe000).contains(&hi) {
                    return Err(PiiError::BadEscape { offset: p });
                } else {
                    (
                        char::from_u32(hi).ok_or(PiiError::BadEscape { offset: p })?,
                        6,
                    )
                }
            }
            _ => return Err(PiiError::BadEscape { offset: p }),
        };
        out.push(ch);
        if let Some(m) = map.as_deref_mut() {
            m.extend(std::iter::repeat_n(p, ch.len_utf8()));
        }
        p += adv;
    }
    Ok(())
}

/// Append `s` JSON-escaped (without quotes).
fn escape_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // replacements (`[REDACTED:SSN]`, masks, pseudonyms) rarely need an escape: copy at once
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

/// A raw-byte replacement in the document.
struct Splice {
    start: usize,
    end: usize,
    bytes: Vec<u8>,
}

/// Splices to apply, audit findings, blocked entity names.
type Processed = (Vec<Splice>, Vec<AuditFinding>, Vec<Arc<str>>);

fn process(
    engine: &Engine,
    doc: &[u8],
    pats: &'static PatIndex,
    direction: Direction,
) -> Result<Processed, PiiError> {
    // Validated once here; a string value's bounds are ASCII quotes, so its slice of `text`
    // needs no second validation.
    // (SIMD validation first; std's validator only runs to report where an invalid document
    // goes wrong)
    let text = match simdutf8::basic::from_utf8(doc) {
        Ok(t) => t,
        Err(_) => {
            let at = std::str::from_utf8(doc)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return Err(bad(at, "invalid utf-8"));
        }
    };
    // sized for a prompt with a few entities, so the common request never grows them
    let mut splices = Vec::with_capacity(FINDINGS_EXPECTED);
    let mut audit = Vec::with_capacity(FINDINGS_EXPECTED);
    let mut blocked: Vec<Arc<str>> = Vec::new();
    let mut findings: Vec<Finding> = Vec::with_capacity(FINDINGS_EXPECTED);
    let mut rep = String::with_capacity(REPLACEMENT_BYTES_EXPECTED);
    let on_string = |path: &[Seg], s: &RawStr| -> Result<(), PiiError> {
        let decoded: Cow<str> = if s.escaped {
            Cow::Owned(decode_str(doc, s.start, s.end, None)?)
        } else {
            Cow::Borrowed(
                text.get(s.start..s.end)
                    .ok_or_else(|| bad(s.start, "invalid utf-8"))?,
            )
        };
        engine.scan(&decoded, &mut findings);
        if findings.is_empty() {
            return Ok(());
        }
        let p = path_string(path);
        let mut map: Option<Vec<usize>> = None;
        for f in &findings {
            let action = engine.action_for(f.entity);
            audit.push(AuditFinding {
                entity: f.entity,
                name: engine.entity_name_arc(f.entity),
                action,
                direction,
                path: p.clone(),
                start: f.start,
                end: f.end,
                confidence: f.confidence,
            });
            if engine.dry_run() || !action.rewrites() {
                continue;
            }
            if action == Action::Block && direction == Direction::Request {
                let n = engine.entity_name_arc(f.entity);
                if !blocked.contains(&n) {
                    blocked.push(n);
                }
                continue;
            }
            let (rs, re) = if s.escaped {
                if map.is_none() {
                    let mut m = Vec::with_capacity(decoded.len() + 1);
                    decode_str(doc, s.start, s.end, Some(&mut m))?;
                    m.push(s.end);
                    map = Some(m);
                }
                let m = map.as_deref().unwrap_or(&[]);
                let rs = m.get(f.start).copied().unwrap_or(s.end);
                let re = m.get(f.end).copied().unwrap_or(s.end);
                (rs, re)
            } else {
                (s.start + f.start, s.start + f.end)
            };
            rep.clear();
            engine.replacement(
                f.entity,
                action,
                decoded.get(f.start..f.end).unwrap_or(""),
                &mut rep,
            );
            let mut bytes = Vec::with_capacity(rep.len());
            escape_into(&mut bytes, &rep);
            splices.push(Splice {
                start: rs,
                end: re,
                bytes,
            });
        }
        Ok(())
    };
    let mut parser = Parser {
        b: doc,
        text: Some(text),
        pos: 0,
        path: Vec::with_capacity(PATH_DEPTH_EXPECTED),
        pats,
        on_string,
    };
    parser.value(0, pats.all)?;
    parser.ws();
    if parser.pos != doc.len() {
        return Err(bad(parser.pos, "trailing data after JSON value"));
    }
    blocked.sort();
    Ok((splices, audit, blocked))
}

fn apply_splices(doc: &[u8], splices: &[Splice]) -> Vec<u8> {
    let extra: usize = splices.iter().map(|s| s.bytes.len()).sum();
    let mut out = Vec::with_capacity(doc.len() + extra);
    let mut last = 0;
    for s in splices {
        if s.start < last || s.end > doc.len() {
            continue;
        }
        out.extend_from_slice(&doc[last..s.start]);
        out.extend_from_slice(&s.bytes);
        last = s.end;
    }
    out.extend_from_slice(&doc[last..]);
    out
}

fn redact_doc(
    engine: &Engine,
    body: &[u8],
    content_encoding: Option<&str>,
    pats: &'static PatIndex,
    direction: Direction,
) -> Result<RequestOutcome, PiiError> {
    if !engine.enabled() {
        return Ok(RequestOutcome::Unchanged {
            findings: Vec::new(),
        });
    }
    let (doc, _compressed) = decode_body(
        body,
        content_encoding,
        engine.compressed,
        engine.body_bytes_max,
    )?;
    let (splices, findings, blocked) = process(engine, &doc, pats, direction)?;
    if !blocked.is_empty() {
        return Ok(RequestOutcome::Blocked {
            entities: blocked,
            findings,
        });
    }
    if splices.is_empty() {
        return Ok(RequestOutcome::Unchanged { findings });
    }
    Ok(RequestOutcome::Rewritten {
        body: apply_splices(&doc, &splices),
        findings,
    })
}

/// Inspect a request body (chat/completions/responses/messages/TGI JSON).
///
/// `content_encoding` is the request's `Content-Encoding` header. Errors are fail-closed: the
/// proxy must refuse the request (status from [`crate::error::Classify`]).
pub fn redact_request(
    engine: &Engine,
    body: &[u8],
    content_encoding: Option<&str>,
) -> Result<RequestOutcome, PiiError> {
    redact_doc(
        engine,
        body,
        content_encoding,
        &REQUEST_INDEX,
        Direction::Request,
    )
}

/// Inspect a non-streaming response body (`choices[].message.content`, `choices[].text`,
/// Anthropic `content[].text`, Responses `output[].content[].text`, TGI `generated_text`).
/// `block` is rendered as redaction (a response cannot be refused without the app noticing);
/// never returns [`RequestOutcome::Blocked`].
pub fn redact_response(
    engine: &Engine,
    body: &[u8],
    content_encoding: Option<&str>,
) -> Result<RequestOutcome, PiiError> {
    redact_doc(
        engine,
        body,
        content_encoding,
        &RESPONSE_INDEX,
        Direction::Response,
    )
}

/// Replace the value of the first `choices[].delta.content` string of one SSE chunk JSON with
/// `new_content` (JSON-escaped), keeping every other byte. Errors if the event is not valid JSON
/// or has no such string.
pub fn try_rewrite_delta_content(
    event_json: &[u8],
    new_content: &str,
) -> Result<Vec<u8>, PiiError> {
    let text =
        std::str::from_utf8(event_json).map_err(|e| bad(e.valid_up_to(), "invalid utf-8"))?;
    let mut span: Option<(usize, usize)> = None;
    let on_string = |_: &[Seg], s: &RawStr| -> Result<(), PiiError> {
        if span.is_none() {
            span = Some((s.start, s.end));
        }
        Ok(())
    };
    let mut parser = Parser {
        b: event_json,
        text: Some(text),
        pos: 0,
        path: Vec::new(),
        pats: &DELTA_INDEX,
        on_string,
    };
    parser.value(0, DELTA_INDEX.all)?;
    let (s, e) = span.ok_or(bad(0, "no choices[].delta.content string"))?;
    let mut bytes = Vec::new();
    escape_into(&mut bytes, new_content);
    Ok(apply_splices(
        event_json,
        &[Splice {
            start: s,
            end: e,
            bytes,
        }],
    ))
}

/// Infallible form of [`try_rewrite_delta_content`]: returns the event unchanged when it has no
/// `choices[].delta.content` string (the proxy extracted the content from this same event, so
/// that only happens for events without text, e.g. role or finish chunks).
pub fn rewrite_delta_content(event_json: &[u8], new_content: &str) -> Vec<u8> {
    try_rewrite_delta_content(event_json, new_content).unwrap_or_else(|_| event_json.to_vec())
}

/// String paths that carry streamed completion text, one lane per choice index: OpenAI chat
/// (`choices[].delta.content`, also vLLM), legacy completions (`choices[].text`), Anthropic
/// (`delta.text` of `content_block_delta`) and the Responses API (`delta` of
/// `response.output_text.delta`).
const STREAM_PATHS: &[&[Pat]] = &[
    &[K("choices"), I, K("delta"), K("content")],
    &[K("choices"), I, K("text")],
    &[K("choices"), I, K("finish_reason")],
    &[K("delta"), K("text")],
    &[K("delta")],
    &[K("type")],
];

/// Lanes (choice indexes) a streamed event may address; events for higher indexes are
/// forwarded unredacted and counted (n > 8 completions in one stream is not a real workload).
pub const STREAM_LANES_MAX: usize = 8;

/// What one streamed completion event means for stream redaction ([`stream_event_text`]).
#[derive(Debug, Default, PartialEq)]
pub struct StreamEventText {
    /// Choice index the text belongs to (0 for dialects without choices).
    pub lane: usize,
    /// The decoded completion text of this event, if it carries any.
    pub text: Option<String>,
    /// Raw span (between the quotes) of that text in the event JSON.
    pub span: Option<(usize, usize)>,
    /// This event ends the lane's text (a `finish_reason`, or a block/message stop): held text
    /// must be released before it.
    pub ends_lane: bool,
}

/// Parse one streamed event's JSON for [`StreamEventText`]. Errors if it is not valid JSON.
pub fn stream_event_text(event_json: &[u8]) -> Result<StreamEventText, PiiError> {
    let mut scratch = StreamEventScratch::default();
    let mut out = stream_event_text_into(event_json, &mut scratch)?;
    if out.span.is_some() {
        out.text = Some(scratch.text);
    }
    Ok(out)
}

/// Reusable buffers of [`stream_event_text_into`]: the parser's path stack and the decoded
/// text, so parsing one event allocates nothing in steady state.
#[derive(Default)]
pub struct StreamEventScratch {
    /// Always empty between calls; kept for its capacity.
    path: Vec<Seg<'static>>,
    /// The decoded completion text of the last event parsed (empty when it carries none).
    pub text: String,
}

/// The event's `type`: its raw span when it has no escapes (always, in practice), else decoded.
enum Kind {
    Raw(usize, usize),
    Decoded(String),
}

/// [`stream_event_text`] with reused buffers: the returned `text` is `None` and the decoded
/// text is in `scratch.text` (cleared first) when `span` is `Some`.
pub fn stream_event_text_into(
    event_json: &[u8],
    scratch: &mut StreamEventScratch,
) -> Result<StreamEventText, PiiError> {
    scratch.text.clear();
    std::str::from_utf8(event_json).map_err(|e| bad(e.valid_up_to(), "invalid utf-8"))?;
    let mut out = StreamEventText::default();
    let mut kind: Option<Kind> = None;
    // The Responses API's top-level `delta` string is text only for output_text events;
    // decided after the parse because key order is free.
    let mut bare_delta: Option<(usize, usize)> = None;
    let mut err = None;
    let on_string = |path: &[Seg], s: &RawStr| -> Result<(), PiiError> {
        let key = |i: usize| match path.get(i) {
            Some(Seg::Key(k)) => Some(&**k),
            _ => None,
        };
        let idx = match path.get(1) {
            Some(Seg::Idx(i)) => *i,
            _ => 0,
        };
        match (path.len(), key(0)) {
            (1, Some("type")) => {
                kind = Some(match event_json.get(s.start..s.end) {
                    Some(raw) if !raw.contains(&b'\\') => Kind::Raw(s.start, s.end),
                    _ => Kind::Decoded(decode_str(event_json, s.start, s.end, None)?),
                });
            }
            (1, Some("delta")) => bare_delta = Some((s.start, s.end)),
            (3, Some("choices")) if key(2) == Some("finish_reason") => {
                out.lane = idx;
                out.ends_lane = true;
            }
            _ => {
                if out.span.is_none() {
                    out.lane = idx;
                    out.span = Some((s.start, s.end));
                } else if err.is_none() {
                    // Two texts in one event (n>1 choices batched): not a stream we rewrite.
                    err = Some(bad(s.start, "several completion texts in one event"));
                }
            }
        }
        Ok(())
    };
    let mut parser = Parser {
        b: event_json,
        text: None,
        pos: 0,
        path: std::mem::take(&mut scratch.path),
        pats: &STREAM_INDEX,
        on_string,
    };
    let parsed = parser.value(0, STREAM_INDEX.all);
    parser.ws();
    let end = parser.pos;
    // hand the path stack's allocation back (an in-place collect of an emptied vector keeps
    // its buffer; `Seg<'_>` and `Seg<'static>` have one layout)
    let mut path = parser.path;
    path.clear();
    scratch.path = path.into_iter().map(|_| Seg::Idx(0)).collect();
    parsed?;
    if end != event_json.len() {
        return Err(bad(end, "trailing bytes"));
    }
    if let Some(e) = err {
        return Err(e);
    }
    let kind = match &kind {
        Some(Kind::Raw(s, e)) => std::str::from_utf8(&event_json[*s..*e]).ok(),
        Some(Kind::Decoded(k)) => Some(k.as_str()),
        None => None,
    };
    match kind {
        Some("response.output_text.delta") if out.span.is_none() => out.span = bare_delta,
        Some("content_block_stop" | "message_delta" | "message_stop")
        | Some("response.output_text.done" | "response.completed") => out.ends_lane = true,
        _ => {}
    }
    if let Some((s, e)) = out.span {
        decode_into(event_json, s, e, None, &mut scratch.text)?;
    }
    Ok(out)
}

/// Replace the raw bytes `span` (between the quotes of a string in `event_json`) with `text`,
/// JSON-escaped, appending the result to `out`.
pub fn splice_string(out: &mut Vec<u8>, event_json: &[u8], span: (usize, usize), text: &str) {
    out.extend_from_slice(&event_json[..span.0]);
    escape_into(out, text);
    out.extend_from_slice(&event_json[span.1..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matcher the incremental one replaced: the whole path against every pattern.
    fn path_matches_reference(path: &[Seg], pats: &[&[Pat]]) -> bool {
        pats.iter().any(|p| {
            let open = matches!(p.last(), Some(Rest));
            if (open && path.len() < p.len()) || (!open && path.len() != p.len()) {
                return false;
            }
            for (k, pat) in p.iter().enumerate() {
                match (pat, path.get(k)) {
                    (Rest, _) => return path.len() > k,
                    (K(name), Some(Seg::Key(s))) if s == name => {}
                    (I, Some(Seg::Idx(_))) => {}
                    _ => return false,
                }
            }
            true
        })
    }

    /// `PatIndex` gives the reference's answer for every path up to 8 segments built from the
    /// lists' own keys, a foreign key and indices, for every path list.
    #[test]
    fn indexed_path_matching_equals_the_reference() {
        let lists: [&[&[Pat]]; 4] = [REQUEST_PATHS, RESPONSE_PATHS, STREAM_PATHS, DELTA_PATHS];
        for pats in lists {
            assert!(pats.len() <= PATS_MAX);
            let ix = PatIndex::new(pats);
            let mut keys: Vec<&str> = pats
                .iter()
                .flat_map(|p| p.iter())
                .filter_map(|s| match s {
                    K(k) => Some(*k),
                    _ => None,
                })
                .collect();
            keys.sort();
            keys.dedup();
            keys.push("role");
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut matched = 0;
            for _ in 0..40_000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let len = (seed % 9) as usize;
                let mut r = seed >> 4;
                let mut path: Vec<Seg> = Vec::new();
                let mut alive = ix.all;
                for d in 0..len {
                    // mostly follow a pattern, so that matches are common
                    let follow = pats[(r % pats.len() as u64) as usize].get(d);
                    r /= pats.len() as u64;
                    let pick = (r % (keys.len() as u64 + 2)) as usize;
                    r /= keys.len() as u64 + 2;
                    let seg = match (follow, !r.is_multiple_of(4)) {
                        (Some(K(k)), true) => Seg::Key(Cow::Borrowed(k)),
                        (Some(I), true) => Seg::Idx(0),
                        _ => match keys.get(pick) {
                            Some(k) => Seg::Key(Cow::Borrowed(k)),
                            None => Seg::Idx(pick),
                        },
                    };
                    r /= 4;
                    alive = ix.step(
                        alive,
                        d,
                        match &seg {
                            Seg::Key(k) => Some(k),
                            Seg::Idx(_) => None,
                        },
                    );
                    path.push(seg);
                }
                let want = path_matches_reference(&path, pats);
                assert_eq!(ix.matches(alive, path.len()), want, "{path:?}");
                matched += usize::from(want);
            }
            assert!(matched > 1_000, "{matched}");
        }
    }
    use crate::pii::PiiConfig;

    #[test]
    fn string_stop_matches_a_plain_loop_at_every_length_and_position() {
        let naive = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        // Every stop byte (and near misses) at every offset of buffers up to 150 bytes (two 64-byte steps, SSE2 blocks and a tail), over a
        // background of ASCII, UTF-8 continuation bytes and 0x7f/0xff.
        for bg in [b'a', 0x80, 0xff, 0x7f, b' ', b'!', b'#', b'[', b']'] {
            for len in 0..150 {
                let mut buf = vec![bg; len];
                assert_eq!(string_stop(&buf), naive(&buf), "bg {bg:#x} len {len}");
                assert_eq!(
                    string_stop_swar(&buf),
                    naive(&buf),
                    "swar bg {bg:#x} len {len}"
                );
                for at in 0..len {
                    for stop in [
                        b'"', b'\\', 0x00, 0x1f, b'\n', 0x20, 0x21, 0x5b, 0x5d, 0xa2, 0xdc,
                    ] {
                        buf[at] = stop;
                        assert_eq!(
                            string_stop(&buf),
                            naive(&buf),
                            "bg {bg:#x} len {len} at {at} stop {stop:#x}"
                        );
                        assert_eq!(string_stop_swar(&buf), naive(&buf));
                        // A second stop later never hides the first.
                        if at + 3 < len {
                            buf[at + 3] = b'"';
                            assert_eq!(string_stop(&buf), naive(&buf));
                            buf[at + 3] = bg;
                        }
                        buf[at] = bg;
                    }
                }
            }
        }
    }

    fn eng() -> Engine {
        Engine::new(&PiiConfig::default()).expect("engine")
    }

    fn body(o: &RequestOutcome) -> String {
        match o {
            RequestOutcome::Rewritten { body, .. } => {
                String::from_utf8(body.clone()).expect("utf8")
            }
            other => panic!("not rewritten: {other:?}"),
        }
    }

    #[test]
    fn rewrites_only_matching_spans() {
        let e = eng();
        let doc = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"my ssn is 123-45-6789 \u00e9"}],"user":"123-45-6789"}"#;
        let o = redact_request(&e, doc, None).expect("ok");
        assert_eq!(
            body(&o),
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"my ssn is [REDACTED:SSN] \u00e9"}],"user":"123-45-6789"}"#
        );
        assert_eq!(o.findings()[0].path, "messages[0].content");
    }

    #[test]
    fn decodes_escapes_and_surrogates() {
        let e = eng();
        let doc = br#"{"prompt":"\ud83d\ude00 \u0031\u0032\u0033-45-6789!"}"#;
        let o = redact_request(&e, doc, None).expect("ok");
        assert_eq!(body(&o), r#"{"prompt":"\ud83d\ude00 [REDACTED:SSN]!"}"#);
        assert!(matches!(
            redact_request(&e, br#"{"prompt":"\ud83d x"}"#, None),
            Err(PiiError::BadEscape { .. })
        ));
        assert!(matches!(
            redact_request(&e, br#"{"prompt":"\x"}"#, None),
            Err(PiiError::BadEscape { .. })
        ));
    }

    #[test]
    fn fails_closed_on_bad_json() {
        let e = eng();
        for d in [
            &b"{"[..],
            b"{\"a\":}",
            b"[1,]",
            b"{\"a\":1} x",
            b"\xff",
            b"",
            b"{\"a\":01}",
        ] {
            assert!(
                redact_request(&e, d, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(d)
            );
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(redact_request(&e, deep.as_bytes(), None).is_err());
    }

    #[test]
    fn paths_and_block() {
        let mut cfg = PiiConfig::default();
        cfg.actions.insert("CREDIT_CARD".into(), Action::Block);
        let e = Engine::new(&cfg).expect("engine");
        let doc = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"card 4111 1111 1111 1111"}]}]}"#;
        match redact_request(&e, doc, None).expect("ok") {
            RequestOutcome::Blocked { entities, .. } => assert_eq!(&*entities[0], "CREDIT_CARD"),
            o => panic!("{o:?}"),
        }
        let doc = br#"{"messages":[{"role":"assistant","tool_calls":[{"function":{"name":"f","arguments":"{\"email\":\"a@example.com\"}"}}]}],"system":[{"type":"text","text":"x@example.org"}]}"#;
        let o = redact_request(&eng(), doc, None).expect("ok");
        let b = body(&o);
        assert!(b.contains(r#"{\"email\":\"[REDACTED:EMAIL]\"}"#), "{b}");
        assert!(b.contains(r#""text":"[REDACTED:EMAIL]""#), "{b}");
        serde_json::from_str::<serde_json::Value>(&b).expect("valid");
        // dry run never modifies
        let dry = eng().with_dry_run(true);
        assert!(
            matches!(redact_request(&dry, doc, None), Ok(RequestOutcome::Unchanged { ref findings }) if findings.len() == 2)
        );
    }

    /// `stream_event_text_into` with one scratch reused across events answers as
    /// `stream_event_text`, and keeps its buffers (no allocation per event in steady state).
    #[test]
    fn stream_event_scratch_is_reused() {
        let events: [&[u8]; 7] = [
            br#"{"choices":[{"index":0,"delta":{"content":"my ssn is 123-45-6789"}}]}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"caf\u00e9 \"x\""}}"#,
            br#"{"type":"response.output_text.delta","delta":"hello"}"#,
            br#"{"type":"message_stop"}"#,
            br#"{"typ\u0065":"x","type":"response.comple\u0074ed"}"#,
            br#"{"choices":[{"index":1,"delta":{},"finish_reason":"stop"}]}"#,
            br#"{"choices":[{"index":0,"delta":{"content":"bad \q escape"}}]}"#,
        ];
        let mut scratch = StreamEventScratch::default();
        for round in 0..2 {
            for ev in events {
                let want = stream_event_text(ev);
                let got = stream_event_text_into(ev, &mut scratch).map(|mut g| {
                    if g.span.is_some() {
                        g.text = Some(scratch.text.clone());
                    }
                    g
                });
                assert_eq!(got, want, "{}", String::from_utf8_lossy(ev));
                assert!(scratch.path.is_empty());
                if round == 1 {
                    assert!(scratch.path.capacity() > 0, "path stack kept its buffer");
                }
            }
        }
        let cap = scratch.text.capacity();
        let first = events.first().copied().unwrap_or_default();
        assert!(stream_event_text_into(first, &mut scratch).is_ok());
        assert_eq!(scratch.text, "my ssn is 123-45-6789");
        assert_eq!(scratch.text.capacity(), cap, "text buffer reused");
    }

    #[test]
    fn response_and_delta() {
        let e = eng();
        let doc =
            br#"{"choices":[{"message":{"role":"assistant","content":"mail bob@example.com"}}]}"#;
        let o = redact_response(&e, doc, None).expect("ok");
        assert!(body(&o).contains("[REDACTED:EMAIL]"));
        let ev = br#"{"id":"x","choices":[{"index":0,"delta":{"content":"old"}}]}"#;
        assert_eq!(
            rewrite_delta_content(ev, "new \"q\""),
            br#"{"id":"x","choices":[{"index":0,"delta":{"content":"new \"q\""}}]}"#.to_vec()
        );
        let no = br#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(rewrite_delta_content(no, "x"), no.to_vec());
    }

    #[test]
    fn gzip_request() {
        use std::io::Write;
        let e = eng();
        let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        g.write_all(br#"{"prompt":"ip 10.20.30.40"}"#).expect("w");
        let gz = g.finish().expect("f");
        let o = redact_request(&e, &gz, Some("gzip")).expect("ok");
        assert_eq!(body(&o), r#"{"prompt":"ip [REDACTED:IP_ADDRESS]"}"#);
        assert!(redact_request(&e, b"garbage", Some("gzip")).is_err());
    }
}
