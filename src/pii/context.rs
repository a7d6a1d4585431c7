//! Context words: which configured words occur, as whole words, inside a window of the text.
//!
//! Why it is built this way: the engine scores every ambiguous numeric finding (IPv4, and
//! SSN/phone shapes whose confidence a penalty can push under the threshold) by looking for
//! context words in the ~100 bytes around it. On dense PII that is ~500 windows per 64 KiB
//! covering ~70% of the text, so this is the largest single cost of a dense scan. A context word
//! only counts as a *whole word*, so it can only begin where a word begins: the window's word
//! starts are found 64 bytes at a time with SIMD byte classification, and from each one an
//! *anchored* trie over the words is walked until it dies (usually after one to three bytes).
//! Bytes inside words and between them are never stepped one at a time. The previous design,
//! an unanchored leftmost-longest automaton stepped over every window byte and shared between
//! overlapping windows, took ~1.5× the instructions per window, and its chain of dependent
//! table loads ran at a far lower IPC: the dense scan went from 254 to 354-416 MiB/s
//! (`docs/pii.md`, "Fourth pass").
//!
//! Invariants:
//! * [`CtxWords::window`] reports exactly the occurrences `(start, end, word)` with
//!   `ws <= start`, `end <= we`, `t[start..end]` equal to the word ASCII-case-insensitively,
//!   and `t[start - 1]` (if any) and `t[end]` (if any) not word bytes
//!   ([`crate::pii::validate::is_word`]); ordered by start, then by end; until the callback
//!   returns `false`. Overlapping occurrences are all reported (`ip` and `ip address`). The
//!   test `windows_equal_brute_force` checks this against a direct search on ~80,000 windows.
//! * Bytes after `we` are read only to decide whether a word ends there (the whole-word test
//!   looks at the text, not the window); nothing outside `t` is read.
//! * The trie table is dense (`states × classes`, `u32`) with its length a power of two, so
//!   stepping masks the index instead of bounds-checking it (no `unsafe`); the dead state is
//!   row 0 (all zeros), the root row 1. A transition into a state that ends a word carries
//!   [`ACCEPT_FLAG`]; that state's word index sits in its row's last column, which no byte
//!   class maps to.
//! * Linear: each word start costs at most the longest word's length in steps, and the
//!   classification one pass over the window.

use super::error::PiiError;
use super::validate::is_word;

/// Upper bound on trie states (the total length of the context words, roughly); more is a
/// configuration error.
const CTX_STATES_MAX: usize = 1 << 20;

/// Set on a transition into a state that ends a word. It sits above every valid index, so the
/// index mask that stepping applies anyway strips it.
const ACCEPT_FLAG: u32 = 1 << 31;

/// Anchored trie over the context words (ASCII case-insensitive).
#[derive(Debug)]
pub(crate) struct CtxWords {
    /// Byte -> class; class 0 is every byte that occurs in no word (its column is all dead).
    class: [u8; 256],
    /// `trans[state + class]`, states premultiplied by the stride; 0 is the dead state.
    trans: Vec<u32>,
    /// `trans.len() - 1` (a power of two minus one).
    mask: usize,
    /// Column holding an accepting state's word index (`stride - 1`).
    pid_col: u32,
    /// The root's row by byte (one load for the first step, which is where most walks die).
    first: [u32; 256],
    /// Which positions can begin a word: see [`Starts`].
    starts: Starts,
}

/// Which positions of a window need a walk. A word can only begin after a non-word byte (or at
/// the text's start); when every word begins with a letter, only word starts at a letter can
/// match, which skips the digit runs that dense PII is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starts {
    /// Every word begins with an ASCII letter: word starts at a letter.
    Letter,
    /// Every word begins with a word byte: word starts.
    Word,
    /// Some word begins with a non-word byte: every position after a non-word byte.
    AfterNonWord,
}

/// A context-word occurrence: the word's index and its byte range in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CtxMatch {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) pid: usize,
}

impl CtxWords {
    /// Compile `words` (non-empty, lower-cased, deduplicated by the caller; the index of a word
    /// is its position in `words`).
    pub(crate) fn new(words: &[String]) -> Result<CtxWords, PiiError> {
        let err = |e: &str| PiiError::Config(format!("context words: {e}"));
        if words.is_empty() || words.iter().any(|w| w.is_empty()) {
            return Err(err("empty word"));
        }
        // classes: one per distinct (ASCII-lower-cased) byte of the words; 0 = in no word
        let mut class = [0u8; 256];
        let mut classes = 1usize;
        for w in words {
            for &b in w.as_bytes() {
                let lb = b.to_ascii_lowercase();
                if class[usize::from(lb)] == 0 {
                    if classes >= 255 {
                        return Err(err("more than 254 distinct bytes"));
                    }
                    class[usize::from(lb)] = classes as u8;
                    class[usize::from(lb.to_ascii_uppercase())] = classes as u8;
                    classes += 1;
                }
            }
        }
        let stride = classes + 1; // + the word-index column
                                  // trie: children[state][class] (state 0 dead, 1 root), accept[state]
        let mut children: Vec<Vec<u32>> = vec![vec![0; classes], vec![0; classes]];
        let mut accept: Vec<Option<usize>> = vec![None, None];
        for (pid, w) in words.iter().enumerate() {
            let mut s = 1usize;
            for &b in w.as_bytes() {
                let c = usize::from(class[usize::from(b.to_ascii_lowercase())]);
                let next = children[s][c];
                s = if next != 0 {
                    next as usize
                } else {
                    if children.len() >= CTX_STATES_MAX {
                        return Err(err("too many context words"));
                    }
                    let n = children.len();
                    children.push(vec![0; classes]);
                    accept.push(None);
                    children[s][c] = n as u32;
                    n
                };
            }
            accept[s].get_or_insert(pid);
        }
        let states = children.len();
        let pm = |s: usize| -> Result<u32, PiiError> {
            u32::try_from(s * stride)
                .ok()
                .filter(|&v| v < ACCEPT_FLAG)
                .ok_or_else(|| err("trie too large"))
        };
        let size = (states * stride).next_power_of_two();
        if size > ACCEPT_FLAG as usize {
            return Err(err("trie too large"));
        }
        let mut trans = vec![0u32; size];
        for s in 1..states {
            let row = s * stride;
            for c in 1..classes {
                let n = children[s][c] as usize;
                if n != 0 {
                    let flag = if accept[n].is_some() { ACCEPT_FLAG } else { 0 };
                    trans[row + c] = pm(n)? | flag;
                }
            }
            if let Some(pid) = accept[s] {
                trans[row + stride - 1] =
                    u32::try_from(pid).map_err(|_| err("too many context words"))?;
            }
        }
        let root = pm(1)?;
        let mut first = [0u32; 256];
        for (b, slot) in first.iter_mut().enumerate() {
            *slot = trans[root as usize + usize::from(class[b])];
        }
        let starts = if words.iter().all(|w| w.as_bytes()[0].is_ascii_alphabetic()) {
            Starts::Letter
        } else if words.iter().all(|w| is_word(w.as_bytes()[0])) {
            Starts::Word
        } else {
            Starts::AfterNonWord
        };
        Ok(CtxWords {
            class,
            trans,
            mask: size - 1,
            pid_col: (stride - 1) as u32,
            first,
            starts,
        })
    }

    /// Calls `f` with every whole-word occurrence of a word inside `t[ws..we]` (see the module
    /// invariants), ordered by start then end, until `f` returns `false`.
    #[inline]
    pub(crate) fn window(
        &self,
        t: &[u8],
        ws: usize,
        we: usize,
        mut f: impl FnMut(CtxMatch) -> bool,
    ) {
        let we = we.min(t.len());
        let mut p = ws;
        // whether the byte before the current block is a word byte
        let mut prev_word = ws > 0 && ws <= t.len() && is_word(t[ws - 1]);
        while p < we {
            let n = (we - p).min(64);
            let keep = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            let (w, letter) = word_mask64(t, p);
            let after_word = (w << 1) | u64::from(prev_word);
            let cand = match self.starts {
                Starts::Letter => letter & !after_word,
                Starts::Word => w & !after_word,
                Starts::AfterNonWord => !after_word,
            } & keep;
            prev_word = w >> 63 != 0;
            let mut m = cand;
            while m != 0 {
                let s = p + m.trailing_zeros() as usize;
                m &= m - 1;
                if !self.walk(&t[..we], t, s, &mut f) {
                    return;
                }
            }
            p += 64;
        }
    }

    /// Walks the trie over `hay` (the text up to the window's end) from `s`, a position after a
    /// non-word byte, and reports the whole-word occurrences that start there; `false` when `f`
    /// asked to stop. `t` is the whole text, for the whole-word test at a word's end.
    #[inline]
    fn walk(&self, hay: &[u8], t: &[u8], s: usize, f: &mut impl FnMut(CtxMatch) -> bool) -> bool {
        let Some(rest) = hay.get(s..) else {
            return true;
        };
        let mut nx = match rest.first() {
            Some(&b) => self.first[usize::from(b)],
            None => return true,
        };
        let mut i = s;
        loop {
            if nx == 0 {
                return true;
            }
            i += 1;
            let st = nx & !ACCEPT_FLAG;
            if nx & ACCEPT_FLAG != 0 && t.get(i).is_none_or(|&b| !is_word(b)) {
                let pid = self.trans[(st + self.pid_col) as usize & self.mask] as usize;
                if !f(CtxMatch {
                    start: s,
                    end: i,
                    pid,
                }) {
                    return false;
                }
            }
            let Some(&b) = hay.get(i) else {
                return true;
            };
            nx = self.trans[(st as usize + usize::from(self.class[usize::from(b)])) & self.mask];
        }
    }
}

/// Bits `k` set when `t[p + k]` is a word byte, and when it is an ASCII letter, for the 64
/// bytes from `p` (bytes past the end of `t` count as neither).
#[inline]
fn word_mask64(t: &[u8], p: usize) -> (u64, u64) {
    match t.get(p..p + 64) {
        Some(block) => word_mask_block(block),
        None => {
            let mut buf = [0u8; 64];
            let tail = t.get(p..).unwrap_or(&[]);
            buf[..tail.len()].copy_from_slice(tail);
            word_mask_block(&buf)
        }
    }
}

/// [`word_mask64`] of exactly 64 bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
fn word_mask_block(b: &[u8]) -> (u64, u64) {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8,
    };
    assert!(b.len() >= 64);
    let (mut words, mut letters) = (0u64, 0u64);
    // SAFETY: SSE2 is in every x86_64 CPU (the target's baseline feature set), so the
    // intrinsics are always available; each unaligned load reads b[k * 16..k * 16 + 16] with
    // k < 4, inside `b` by the assertion above.
    unsafe {
        let lower_bit = _mm_set1_epi8(0x20);
        let minus_a = _mm_set1_epi8(-(b'a' as i8));
        let minus_0 = _mm_set1_epi8(-(b'0' as i8));
        let max_letter = _mm_set1_epi8(25);
        let max_digit = _mm_set1_epi8(9);
        let underscore = _mm_set1_epi8(b'_' as i8);
        for k in 0..4 {
            let v = _mm_loadu_si128(b.as_ptr().add(k * 16).cast::<__m128i>());
            // letter: (v | 0x20) - 'a' <= 25 unsigned; digit: v - '0' <= 9 unsigned
            let l = _mm_add_epi8(_mm_or_si128(v, lower_bit), minus_a);
            let d = _mm_add_epi8(v, minus_0);
            let letter = _mm_cmpeq_epi8(_mm_min_epu8(l, max_letter), l);
            let digit = _mm_cmpeq_epi8(_mm_min_epu8(d, max_digit), d);
            let word = _mm_or_si128(_mm_or_si128(letter, digit), _mm_cmpeq_epi8(v, underscore));
            words |= u64::from(_mm_movemask_epi8(word) as u16) << (k * 16);
            letters |= u64::from(_mm_movemask_epi8(letter) as u16) << (k * 16);
        }
    }
    (words, letters)
}

/// [`word_mask64`] of exactly 64 bytes (portable).
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn word_mask_block(b: &[u8]) -> (u64, u64) {
    b[..64]
        .iter()
        .enumerate()
        .fold((0u64, 0u64), |(w, l), (k, &c)| {
            (
                w | (u64::from(is_word(c)) << k),
                l | (u64::from(c.is_ascii_alphabetic()) << k),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-in words, as the engine configures them (lower-cased, deduplicated).
    fn builtin_words() -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for w in crate::pii::engine::POSITIVE_WORDS
            .iter()
            .flat_map(|(_, ws)| ws.iter())
            .chain(crate::pii::engine::NEGATIVE_WORDS)
        {
            let w = w.to_ascii_lowercase();
            if !v.contains(&w) {
                v.push(w);
            }
        }
        v
    }

    /// Words, their prefixes, case variants and separators, glued at random into texts.
    const PIECES: &[&str] = &[
        "ss",
        "ssn",
        "SSNs",
        "social ",
        "Social Sec",
        "urity",
        "#",
        "ip",
        "IP addr",
        "ess",
        "v",
        "Ver",
        "sion",
        "p",
        "o",
        "text",
        " me",
        "tel",
        "ephone",
        "c",
        "card",
        "holder",
        " ",
        "x",
        "é",
        "1",
        "-",
        "_",
        "ab",
        "abc",
        "bcd",
        "d",
        " number",
        "10.20.30.40",
        "(212) 555-0142",
        "v v v v v v ",
        "ip ip ip ip ip ip ip ip ip ",
        ", then some words follow here. ",
    ];

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// The invariant of [`CtxWords::window`], searched for directly.
    fn brute_force(words: &[String], t: &[u8], ws: usize, we: usize) -> Vec<CtxMatch> {
        let mut out = Vec::new();
        for s in ws..we {
            if s > 0 && is_word(t[s - 1]) {
                continue;
            }
            for (pid, w) in words.iter().enumerate() {
                let e = s + w.len();
                if e <= we
                    && t[s..e].eq_ignore_ascii_case(w.as_bytes())
                    && (e == t.len() || !is_word(t[e]))
                {
                    out.push(CtxMatch {
                        start: s,
                        end: e,
                        pid,
                    });
                }
            }
        }
        out.sort();
        out
    }

    /// Every window of random texts gets exactly the brute-force occurrences, on the built-in
    /// words, on a set with shared prefixes, spaces, digits and long words, and on a set whose
    /// words begin with non-word bytes (every position after a non-word byte is a start); with
    /// early stops now and then.
    #[test]
    fn windows_equal_brute_force() {
        let mut extended = builtin_words();
        for w in [
            "ab",
            "abcd",
            "bc",
            "social security number",
            "v1",
            "x-1",
            "ssx",
            "ec c",
            "1st",
            "_id",
        ] {
            extended.push(w.to_string());
        }
        let mut symbols = builtin_words();
        for w in ["#tag", "-1", " number", "(212)", "_x", "é"] {
            symbols.push(w.to_string());
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut text = String::new();
        let mut windows_checked = 0usize;
        let mut found = 0usize;
        for (words, starts) in [
            (builtin_words(), Starts::Letter),
            (extended, Starts::Word),
            (symbols, Starts::AfterNonWord),
        ] {
            let ctx = CtxWords::new(&words).expect("ctx words");
            assert_eq!(ctx.starts, starts);
            for _ in 0..6_000 {
                text.clear();
                for _ in 0..xorshift(&mut seed) % 64 {
                    text.push_str(PIECES[(xorshift(&mut seed) % PIECES.len() as u64) as usize]);
                }
                let t = text.as_bytes();
                for _ in 0..1 + xorshift(&mut seed) % 8 {
                    let r = xorshift(&mut seed);
                    let ws = (r >> 8) as usize % (t.len() + 1);
                    let we = (ws + (r >> 24) as usize % 200).min(t.len());
                    let want = brute_force(&words, t, ws, we);
                    let keep = if r.is_multiple_of(5) {
                        1 + (r >> 40) as usize % 3
                    } else {
                        usize::MAX
                    };
                    let mut got = Vec::new();
                    ctx.window(t, ws, we, |m| {
                        got.push(m);
                        got.len() < keep
                    });
                    assert_eq!(got, want[..want.len().min(keep)], "{text:?} [{ws}..{we})");
                    windows_checked += 1;
                    found += want.len();
                }
            }
        }
        assert!(
            windows_checked > 50_000 && found > 50_000,
            "{windows_checked} {found}"
        );
    }

    /// The SIMD classification equals `is_word` for every byte value in every lane.
    #[test]
    fn word_mask_is_exact_per_byte() {
        for b in 0..=255u8 {
            for lane in 0..64 {
                let mut block = [b'-'; 64];
                block[lane] = b;
                let want = (
                    u64::from(is_word(b)) << lane,
                    u64::from(b.is_ascii_alphabetic()) << lane,
                );
                assert_eq!(word_mask_block(&block), want, "byte {b:#x} lane {lane}");
            }
        }
        // a text shorter than the block: the rest reads as non-word
        assert_eq!(word_mask64(b"ab c", 0), (0b1011, 0b1011));
        assert_eq!(word_mask64(b"a1_c", 0), (0b1111, 0b1001));
        assert_eq!(word_mask64(b"ab c", 3), (0b1, 0b1));
        assert_eq!(word_mask64(b"ab c", 4), (0, 0));
    }

    #[test]
    fn config_errors() {
        assert!(CtxWords::new(&[]).is_err());
        assert!(CtxWords::new(&["".to_string()]).is_err());
        let one = CtxWords::new(&["ssn".to_string()]).expect("one word");
        let mut got = Vec::new();
        one.window(b"SSN: ssn_x ssn", 0, 14, |m| {
            got.push((m.start, m.end));
            true
        });
        assert_eq!(got, [(0, 3), (11, 14)]);
    }
}
