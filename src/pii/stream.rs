//! Streaming (SSE) response redaction with a bounded hold-back.
//!
//! The proxy feeds the *text* of successive deltas (`choices[].delta.content`) to
//! [`StreamRedactor::push`], which returns what can be released now; [`StreamRedactor::finish`]
//! releases the rest at end of stream. State (held tail, released context, open secret) carries
//! across deltas and events, so an entity split over any number of deltas is caught.
//!
//! Release rule. Let `len` be the length of context + held text + new delta. An entity that is
//! still incomplete must touch `len`; if it contains no ASCII whitespace it starts after the last
//! whitespace, otherwise it is one of the spaced entities (card/phone/IBAN/SSN/PEM header,
//! dictionary terms), at most `spaced_max` bytes long. So everything before
//! `min(last_whitespace + 1, len - hold_min)` is final and released, where `hold_min` also covers
//! the trailing context window of numeric entities. The tail is additionally capped at the
//! engine's [`Engine::holdback_bytes`] (<= [`HOLDBACK_CHARS_MAX`] for built-ins): an unbounded
//! secret run (API key, JWT, GitHub token) longer than that is redacted when its prefix is
//! recognised and the rest of its run is swallowed as it streams; a PEM private key block is
//! swallowed until its `-----END ...-----` footer.
//!
//! Invariants: memory is O(hold-back), never the whole stream; each delta costs
//! O(delta + hold-back) scan work; `block` is rendered as `redact` (a started response cannot be
//! refused without the app noticing); dry-run and `log` release text unchanged.

use std::sync::Arc;

use super::engine::Engine;
use super::entity::{Action, Direction, Entity, Finding, EMAIL_BYTES_MAX};
use super::json::AuditFinding;

/// Longest hold-back of an engine with only built-in entities, in bytes (every built-in entity is
/// ASCII, so also in chars): the longest bounded entity (an email, 254 bytes) plus 2 bytes of
/// boundary look-ahead. Custom patterns/dictionaries longer than that raise the engine's
/// [`Engine::holdback_bytes`]. In practice the held tail is much shorter (see module docs).
pub const HOLDBACK_CHARS_MAX: usize = EMAIL_BYTES_MAX + 2;

/// Released text kept for left context and boundary checks.
const CONTEXT_KEEP_BYTES: usize = 96;
/// Bytes of a swallowed PEM block kept to find a footer split across deltas.
const PEM_CARRY_BYTES: usize = 96;

#[derive(Debug)]
enum Swallow {
    None,
    Run(Entity),
    Pem(String),
}

/// Per-stream redactor. Create one per response stream; cheap (`Arc<Engine>` + small buffers).
#[derive(Debug)]
pub struct StreamRedactor {
    engine: Arc<Engine>,
    ctx: String,
    pending: String,
    swallow: Swallow,
    /// Stream offset (in original bytes) of `pending[0]`.
    base: usize,
    hold_min: usize,
    scratch: Vec<Finding>,
    buf: String,
    findings: Vec<AuditFinding>,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Token characters that continue a secret run (mirrors the validators in `validate.rs`).
fn is_run_byte(e: Entity, b: u8) -> bool {
    match e {
        Entity::Jwt => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'),
        Entity::ApiKey => b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'),
        _ => b.is_ascii_alphanumeric() || b == b'_',
    }
}

impl StreamRedactor {
    pub fn new(engine: Arc<Engine>) -> StreamRedactor {
        let hold_min = engine.stream_hold_min_bytes();
        StreamRedactor {
            engine,
            ctx: String::new(),
            pending: String::new(),
            swallow: Swallow::None,
            base: 0,
            hold_min,
            scratch: Vec::new(),
            buf: String::new(),
            findings: Vec::new(),
        }
    }

    /// Bytes currently held back (never more than the engine's hold-back).
    pub fn held_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Findings so far (offsets are byte offsets in the original concatenated stream text;
    /// `path` is `"stream"`). Drained by the caller for metrics/audit.
    pub fn take_findings(&mut self) -> Vec<AuditFinding> {
        std::mem::take(&mut self.findings)
    }

    /// Feed the text of one delta; returns the text to release now (possibly empty).
    pub fn push(&mut self, delta: &str) -> String {
        let mut out = String::new();
        self.push_into(delta, &mut out);
        out
    }

    /// [`StreamRedactor::push`] appending the released text to `out` (no allocation in steady
    /// state when `out` is reused).
    pub fn push_into(&mut self, delta: &str, out: &mut String) {
        let mut rest: &str = delta;
        let owned;
        match &mut self.swallow {
            Swallow::None => {}
            Swallow::Run(e) => {
                let e = *e;
                let n = rest.bytes().take_while(|&b| is_run_byte(e, b)).count();
                self.base += n;
                push_ctx(&mut self.ctx, &rest[..n]);
                if n == rest.len() {
                    return;
                }
                rest = &rest[n..];
                self.swallow = Swallow::None;
            }
            Swallow::Pem(carry) => {
                let keep_from = carry.len();
                carry.push_str(rest);
                if let Some(end) = pem_footer_end(carry) {
                    let consumed_new = end.saturating_sub(keep_from);
                    self.base += consumed_new;
                    let footer_start =
                        floor_boundary(carry, end.saturating_sub(CONTEXT_KEEP_BYTES));
                    let swallowed = carry[footer_start..end].to_string();
                    push_ctx(&mut self.ctx, &swallowed);
                    owned = carry[end..].to_string();
                    rest = &owned;
                    self.swallow = Swallow::None;
                } else {
                    self.base += rest.len();
                    let cut = floor_boundary(carry, carry.len().saturating_sub(PEM_CARRY_BYTES));
                    carry.drain(..cut);
                    return;
                }
            }
        }
        self.pending.push_str(rest);
        self.release(false, out);
    }

    /// End of stream: release everything still held (redacted).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.finish_into(&mut out);
        out
    }

    /// [`StreamRedactor::finish`] appending to `out`.
    pub fn finish_into(&mut self, out: &mut String) {
        if matches!(self.swallow, Swallow::None) {
            self.release(true, out);
        }
        self.pending.clear();
    }

    fn release(&mut self, fin: bool, out: &mut String) {
        let eng = Arc::clone(&self.engine);
        self.buf.clear();
        self.buf.push_str(&self.ctx);
        self.buf.push_str(&self.pending);
        let ctx_len = self.ctx.len();
        let len = self.buf.len();
        eng.scan_from(&self.buf, ctx_len, &mut self.scratch);
        let mut r = if fin {
            len
        } else {
            let last_ws = self.buf.as_bytes()[ctx_len..]
                .iter()
                .rposition(|b| b.is_ascii_whitespace())
                .map_or(ctx_len, |p| ctx_len + p + 1);
            let soft = last_ws.min(len.saturating_sub(self.hold_min));
            let hard = len.saturating_sub(eng.holdback_bytes());
            floor_boundary(&self.buf, soft.max(hard)).max(ctx_len)
        };
        let mut last = ctx_len;
        let rewrite = !eng.dry_run();
        let mut swallow = None;
        let mut rep = String::new();
        for f in self.scratch.iter() {
            if f.start < ctx_len || f.start < last {
                continue;
            }
            if f.start >= r {
                break;
            }
            let action = eng.action_for(f.entity);
            self.findings.push(AuditFinding {
                entity: f.entity,
                name: eng.entity_name_arc(f.entity),
                action,
                direction: Direction::Response,
                path: "stream".into(),
                start: self.base + f.start - ctx_len,
                end: self.base + f.end - ctx_len,
                confidence: f.confidence,
            });
            let Some(val) = self.buf.get(f.start..f.end) else {
                continue;
            };
            let open = !fin
                && ((f.entity.is_run_secret() && f.end == len)
                    || (f.entity == Entity::PrivateKey && pem_footer_end(val).is_none()));
            out.push_str(&self.buf[last..f.start]);
            if !rewrite || !action.rewrites() {
                out.push_str(val);
            } else if open {
                rep.clear();
                eng.replacement(f.entity, Action::Redact, val, &mut rep);
                out.push_str(&rep);
                swallow = Some(f.entity);
            } else {
                rep.clear();
                eng.replacement(f.entity, action, val, &mut rep);
                out.push_str(&rep);
            }
            last = f.end;
            r = r.max(f.end);
            if swallow.is_some() {
                break;
            }
        }
        out.push_str(&self.buf[last..r]);
        // new state
        let released_end = r;
        self.base += released_end - ctx_len;
        let keep = floor_boundary(&self.buf, released_end.saturating_sub(CONTEXT_KEEP_BYTES));
        let keep = if self.buf.is_char_boundary(keep) {
            keep
        } else {
            released_end
        };
        // refilled in place (`buf` is a separate copy): no allocation per release
        self.ctx.clear();
        self.ctx.push_str(&self.buf[keep..released_end]);
        self.pending.clear();
        self.pending.push_str(&self.buf[released_end..]);
        match swallow {
            Some(Entity::PrivateKey) => {
                self.swallow = Swallow::Pem(String::new());
                self.pending.clear();
            }
            Some(e) => {
                self.swallow = Swallow::Run(e);
                self.pending.clear();
            }
            None => {}
        }
    }
}

/// Append swallowed original text to the left context, keeping its last
/// `CONTEXT_KEEP_BYTES` (so boundaries after a swallowed secret match whole-text scanning).
fn push_ctx(ctx: &mut String, s: &str) {
    ctx.push_str(s);
    let cut = floor_boundary(ctx, ctx.len().saturating_sub(CONTEXT_KEEP_BYTES));
    ctx.drain(..cut);
}

/// End offset of a `-----END ...-----` footer in `s`, if complete.
fn pem_footer_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let f = memchr::memmem::find(b, b"-----END")? + 8;
    let x = memchr::memmem::find(&b[f..], b"-----")?;
    Some(f + x + 5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::PiiConfig;

    fn eng() -> Arc<Engine> {
        Arc::new(Engine::new(&PiiConfig::default()).expect("engine"))
    }

    fn run(parts: &[&str]) -> String {
        let mut s = StreamRedactor::new(eng());
        let mut out = String::new();
        for p in parts {
            out.push_str(&s.push(p));
        }
        out.push_str(&s.finish());
        out
    }

    #[test]
    fn releases_prose_immediately() {
        let mut s = StreamRedactor::new(eng());
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(10);
        let out = s.push(&prose);
        assert!(
            prose.len() - out.len() <= s.hold_min,
            "{} held",
            prose.len() - out.len()
        );
        assert!(out.len() >= prose.len() - HOLDBACK_CHARS_MAX);
        assert_eq!(out, prose[..out.len()]);
        let rest = s.finish();
        assert_eq!(out + &rest, prose);
    }

    #[test]
    fn split_entities_every_position() {
        let cases = [
            (
                "pay with 4111 1111 1111 1111 now",
                "pay with [REDACTED:CREDIT_CARD] now",
            ),
            ("ssn 123-45-6789.", "ssn [REDACTED:SSN]."),
            ("mail jane.doe@example.com ok", "mail [REDACTED:EMAIL] ok"),
            ("key AKIAIOSFODNN7EXAMPLE end", "key [REDACTED:AWS_KEY] end"),
            ("tel (212) 555-0142!", "tel [REDACTED:PHONE]!"),
            ("DE89 3704 0044 0532 0130 00 x", "[REDACTED:IBAN] x"),
            (
                "\u{e9}2001:db8::8a2e:370:7334\u{1f600}",
                "\u{e9}[REDACTED:IP_ADDRESS]\u{1f600}",
            ),
            (
                "k=sk-proj-Abc123Def456Ghi789Jkl012 ",
                "k=[REDACTED:API_KEY] ",
            ),
        ];
        for (text, want) in cases {
            let idx: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            for &i in &idx {
                assert_eq!(run(&[&text[..i], &text[i..]]), want, "split at {i}");
                for &j in idx.iter().filter(|&&j| j >= i) {
                    assert_eq!(
                        run(&[&text[..i], &text[i..j], &text[j..]]),
                        want,
                        "split at {i},{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn push_returns_text_before_the_window_immediately() {
        let mut s = StreamRedactor::new(eng());
        let hold = s.hold_min;
        assert!(hold < HOLDBACK_CHARS_MAX);
        // a card straddling deltas: text before the hold window is released at once
        let prose =
            "Please charge the card on file now, thanks a lot for the help today. ".repeat(3);
        let first = format!("{prose}Card: 4111 1111");
        let a = s.push(&first);
        assert!(first.starts_with(&a));
        assert!(
            a.len() + hold + 1 >= first.len(),
            "released {} of {}",
            a.len(),
            first.len()
        );
        assert!(!a.contains("4111"));
        let b = s.push(" 1111 1111 thanks. ");
        let c = s.finish();
        assert_eq!(
            format!("{a}{b}{c}"),
            format!("{prose}Card: [REDACTED:CREDIT_CARD] thanks. ")
        );
        let f = s.take_findings();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].start, f[0].end), (prose.len() + 6, prose.len() + 25));
    }

    #[test]
    fn long_jwt_is_swallowed() {
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJ{}.sig", "a".repeat(600));
        let text = format!("token {jwt} done");
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(7)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(run(&refs), "token [REDACTED:JWT] done");
    }

    #[test]
    fn pem_block_is_swallowed() {
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n".repeat(40);
        let text = format!("here -----BEGIN PRIVATE KEY-----\n{body}-----END PRIVATE KEY----- bye");
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(run(&refs), "here [REDACTED:PRIVATE_KEY] bye");
    }
}
