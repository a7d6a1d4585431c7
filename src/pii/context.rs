//! The context-word automaton: a compact copy of an `aho_corasick` DFA (ASCII case-insensitive,
//! leftmost-longest) stepped by a minimal loop.
//!
//! Why it exists: the engine scores every ambiguous numeric finding (IPv4, and SSN/phone shapes
//! whose confidence a penalty can push under the threshold) by searching the ~100 bytes around
//! it for context words. On dense PII that is ~500 windows per 64 KiB, and
//! `AhoCorasick::find_iter` spent more on per-call set-up (input validation, prefilter and
//! match-kind dispatch) and bounds-checked generic stepping than on the bytes themselves.
//!
//! Invariants:
//! * Same matches as `AhoCorasick::find_iter` with `MatchKind::LeftmostLongest` on the same
//!   haystack slice: the table is built by walking the crate's own DFA (`next_state` for every
//!   reachable state and byte), and [`CtxDfa::next_match`] is the crate's forward search without
//!   prefilter (remember the last match state, stop at the dead state, resume at the match end).
//! * Byte classes are derived from the DFA's columns (bytes with identical transitions from every
//!   state share a class), so the table is `states × classes`, a few KiB for the built-in words.
//! * Special states (dead, match) are numbered first, so one comparison tells whether a state is
//!   special; the loop steps four bytes and compares the lowest of the four states once, and a
//!   block that reached a special state is re-stepped byte by byte (same states, same matches).
//! * The table length is a power of two and every valid index is below `states × classes`, so
//!   masking the index changes nothing and lets the compiler drop the per-byte bounds check
//!   (no `unsafe`); the padding is never reached.

use std::collections::HashMap;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, StartKind};

use super::error::PiiError;

/// Upper bound on DFA states copied into the compact table (state indices are `u32`, premultiplied
/// by the class count); context words beyond this are a configuration error.
const CTX_STATES_MAX: usize = 1 << 20;

/// Compact leftmost-longest DFA over the context words.
#[derive(Debug)]
pub(crate) struct CtxDfa {
    /// Byte -> class.
    class: [u8; 256],
    /// `trans[state + class]` = next state; states are premultiplied by `stride`.
    trans: Vec<u32>,
    /// Premultiplied start state.
    start: u32,
    /// States below this (premultiplied) are special: dead (0) or match states.
    special_below: u32,
    /// Indexed by a special (premultiplied) state: `Some((pattern, pattern_len))` for a match
    /// state, `None` for the dead state and the unused slots between rows.
    matches: Vec<Option<(usize, usize)>>,
}

fn set_id(ids: &mut Vec<Option<usize>>, sid: StateID, i: usize) {
    let k = sid.as_usize();
    if ids.len() <= k {
        ids.resize(k + 1, None);
    }
    ids[k] = Some(i);
}

impl CtxDfa {
    /// Compile `words` (non-empty, lower-cased, deduplicated by the caller).
    pub(crate) fn new(words: &[String]) -> Result<CtxDfa, PiiError> {
        let err = |e: String| PiiError::Config(format!("context automaton: {e}"));
        let dfa = aho_corasick::dfa::Builder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(words)
            .map_err(|e| err(e.to_string()))?;
        let start = dfa
            .start_state(Anchored::No)
            .map_err(|e| err(e.to_string()))?;
        // reachable states, in discovery order; `ids[sid]` = discovery index (DFA state ids are
        // premultiplied offsets into its transition table, so the map stays small)
        let mut ids: Vec<Option<usize>> = Vec::new();
        let index_of =
            |ids: &Vec<Option<usize>>, sid: StateID| ids.get(sid.as_usize()).copied().flatten();
        let mut order = vec![start];
        set_id(&mut ids, start, 0);
        let mut k = 0;
        while k < order.len() {
            let sid = order[k];
            k += 1;
            if dfa.is_dead(sid) {
                continue;
            }
            for b in 0..=255u8 {
                let nx = dfa.next_state(Anchored::No, sid, b);
                if index_of(&ids, nx).is_none() {
                    if order.len() >= CTX_STATES_MAX {
                        return Err(err("too many context words".into()));
                    }
                    set_id(&mut ids, nx, order.len());
                    order.push(nx);
                }
            }
        }
        // byte classes: bytes whose columns (next state from every state) are identical
        let mut class = [0u8; 256];
        let mut reps: Vec<u8> = Vec::new(); // one representative byte per class
        let mut by_column: HashMap<Vec<usize>, u8> = HashMap::new();
        for b in 0..=255u8 {
            let col: Vec<usize> = order
                .iter()
                .map(|&s| {
                    if dfa.is_dead(s) {
                        usize::MAX
                    } else {
                        dfa.next_state(Anchored::No, s, b).as_usize()
                    }
                })
                .collect();
            let next = reps.len();
            let c = *by_column.entry(col).or_insert_with(|| {
                reps.push(b);
                next as u8
            });
            if reps.len() > 256 {
                return Err(err("more than 256 byte classes".into()));
            }
            class[usize::from(b)] = c;
        }
        let stride = reps.len();
        // renumber: dead first, then match states, then the rest
        let is_special = |s| dfa.is_dead(s) || dfa.is_match(s);
        let mut renum = vec![0usize; order.len()];
        let mut matches = vec![None];
        let mut next = 1;
        for (i, &s) in order.iter().enumerate() {
            if dfa.is_dead(s) {
                renum[i] = 0;
            } else if is_special(s) {
                let pid = dfa.match_pattern(s, 0);
                matches.push(Some((pid.as_usize(), dfa.pattern_len(pid))));
                renum[i] = next;
                next += 1;
            }
        }
        let special = next;
        for (i, &s) in order.iter().enumerate() {
            if !is_special(s) {
                renum[i] = next;
                next += 1;
            }
        }
        let states = next;
        let pm = |i: usize| -> Result<u32, PiiError> {
            u32::try_from(i * stride).map_err(|_| err("context automaton too large".into()))
        };
        // padded to a power of two so stepping can mask its index instead of bounds-checking it
        // (valid indices are below `states * stride` and unchanged by the mask; the padding is
        // never reached and reads as the dead state)
        let mut trans = vec![0u32; (states * stride).next_power_of_two()];
        let mut by_state = vec![None; special * stride];
        for (i, m) in matches.into_iter().enumerate() {
            by_state[i * stride] = m;
        }
        for (i, &s) in order.iter().enumerate() {
            if dfa.is_dead(s) {
                continue; // row 0 stays all-dead
            }
            let row = renum[i] * stride;
            for (c, &b) in reps.iter().enumerate() {
                let nx = dfa.next_state(Anchored::No, s, b);
                let j = index_of(&ids, nx).ok_or_else(|| err("unreachable state".into()))?;
                trans[row + c] = pm(renum[j])?;
            }
        }
        Ok(CtxDfa {
            class,
            trans,
            start: pm(renum[0])?,
            special_below: pm(special)?,
            matches: by_state,
        })
    }

    /// The next leftmost-longest, non-overlapping match in `hay[at..]`:
    /// `(pattern, start, end)`. Iterate by passing the previous `end` as `at`.
    ///
    /// Steps four bytes per test while no special (match or dead) state is reached; a block that
    /// reaches one is re-stepped byte by byte, so the states visited are exactly those of the
    /// one-byte loop.
    #[inline]
    pub(crate) fn next_match(&self, hay: &[u8], at: usize) -> Option<(usize, usize, usize)> {
        const BLOCK_BYTES: usize = 4;
        let hay = hay.get(at..)?;
        let special = self.special_below as usize;
        let trans = &self.trans[..];
        let class = &self.class;
        if trans.is_empty() {
            return None;
        }
        // `trans.len()` is a power of two and every premultiplied state plus a class is below
        // it (by construction), so the mask never changes an index; it only lets the compiler
        // drop the bounds check
        let mask = trans.len() - 1;
        let step = |s: usize, b: u8| trans[(s + usize::from(class[usize::from(b)])) & mask];
        let mut s = self.start as usize;
        let mut mat = None;
        let mut k = 0;
        loop {
            for c in hay[k..].chunks_exact(BLOCK_BYTES) {
                let s1 = step(s, c[0]);
                let s2 = step(s1 as usize, c[1]);
                let s3 = step(s2 as usize, c[2]);
                let s4 = step(s3 as usize, c[3]);
                if (s1.min(s2).min(s3).min(s4) as usize) < special {
                    break;
                }
                s = s4 as usize;
                k += BLOCK_BYTES;
            }
            let end = (k + BLOCK_BYTES).min(hay.len());
            if k == end {
                return mat;
            }
            while k < end {
                s = step(s, hay[k]) as usize;
                k += 1;
                if s < special {
                    match self.matches.get(s) {
                        Some(Some((pid, len))) => mat = Some((*pid, at + k - len, at + k)),
                        _ => return mat, // dead
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::AhoCorasickBuilder;

    /// Same matches as `AhoCorasick::find_iter` over many haystacks built from the words, their
    /// prefixes, case variants and separators.
    #[test]
    fn same_matches_as_aho_corasick() {
        // the built-in words, as the engine configures them
        let words: Vec<String> = crate::pii::engine::POSITIVE_WORDS
            .iter()
            .flat_map(|(_, ws)| ws.iter())
            .chain(crate::pii::engine::NEGATIVE_WORDS)
            .map(|s| s.to_string())
            .collect();
        let ours = CtxDfa::new(&words).expect("ctx dfa");
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&words)
            .expect("ac");
        let pieces = [
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
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut hay = String::new();
        for _ in 0..20_000 {
            hay.clear();
            for _ in 0..next() % 24 {
                hay.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let want: Vec<(usize, usize, usize)> = ac
                .find_iter(hay.as_bytes())
                .map(|m| (m.pattern().as_usize(), m.start(), m.end()))
                .collect();
            let mut got = Vec::new();
            let mut at = 0;
            while let Some(m) = ours.next_match(hay.as_bytes(), at) {
                at = m.2;
                got.push(m);
            }
            assert_eq!(got, want, "{hay:?}");
        }
    }
}
