//! The context-word automaton: a compact copy of an `aho_corasick` DFA (ASCII case-insensitive,
//! leftmost-longest) stepped by a minimal loop, and [`CtxScan`], which answers the context
//! windows of one scan from one shared pass of it.
//!
//! Why it exists: the engine scores every ambiguous numeric finding (IPv4, and SSN/phone shapes
//! whose confidence a penalty can push under the threshold) by searching the ~100 bytes around
//! it for context words. On dense PII that is ~500 windows per 64 KiB, and
//! `AhoCorasick::find_iter` spent more on per-call set-up (input validation, prefilter and
//! match-kind dispatch) and bounds-checked generic stepping than on the bytes themselves; and
//! neighbouring windows overlap (phone and IPv4 windows by about half in the dense corpus), so
//! scanning each window alone stepped many bytes twice.
//!
//! Invariants:
//! * Same matches as `AhoCorasick::find_iter` with `MatchKind::LeftmostLongest` on the same
//!   haystack slice: the table is built by walking the crate's own DFA (`next_state` for every
//!   reachable state and byte), and a search ([`CtxDfa::advance`]) is the crate's forward search
//!   without prefilter (remember the last match state, stop at the dead state, resume at the
//!   match end). A search can pause at a haystack end and resume later with the same states.
//! * [`CtxScan::window`] gives each window exactly the matches of scanning the window slice
//!   alone; the argument is on [`CtxScan`], the test is `shared_windows_equal_per_window_scans`.
//! * Byte classes are derived from the DFA's columns (bytes with identical transitions from every
//!   state share a class), so the table is `states × classes`, a few KiB for the built-in words.
//! * A transition into a special state (dead, match) carries [`SPECIAL_FLAG`] (bit 31), so the
//!   loop steps four bytes and tests the OR of the four states once; in a block that reached a
//!   special state it continues from the first one (same states, same matches).
//! * The table length is a power of two (at most bit 31) and every valid index is below
//!   `states × classes`, so masking the index changes nothing but strip the flag, and lets the
//!   compiler drop the per-byte bounds check (no `unsafe`); the padding is never reached.

use std::collections::HashMap;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, StartKind};

use super::error::PiiError;

/// Upper bound on DFA states copied into the compact table (state indices are `u32`, premultiplied
/// by the class count); context words beyond this are a configuration error.
const CTX_STATES_MAX: usize = 1 << 20;

/// Set on a transition's target when it is a special (dead or match) state. It sits above every
/// valid index, so the index mask that stepping applies anyway strips it; four states are tested
/// with one OR.
const SPECIAL_FLAG: u32 = 1 << 31;

/// Compact leftmost-longest DFA over the context words.
#[derive(Debug)]
pub(crate) struct CtxDfa {
    /// Byte -> class.
    class: [u8; 256],
    /// `trans[state + class]` = next state; states are premultiplied by `stride`, and a special
    /// (dead or match) next state carries [`SPECIAL_FLAG`].
    trans: Vec<u32>,
    /// Premultiplied start state.
    start: u32,
    /// Indexed by a special (premultiplied, unflagged) state: `Some((pattern, pattern_len))` for a match
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
        let size = (states * stride).next_power_of_two();
        if size > SPECIAL_FLAG as usize {
            return Err(err("context automaton too large".into()));
        }
        // every entry starts as the dead state (flagged special): row 0 and the padding
        let mut trans = vec![SPECIAL_FLAG; size];
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
                let flag = if renum[j] < special { SPECIAL_FLAG } else { 0 };
                trans[row + c] = pm(renum[j])? | flag;
            }
        }
        Ok(CtxDfa {
            class,
            trans,
            start: pm(renum[0])?,
            matches: by_state,
        })
    }

    /// A fresh search (start state, no pending match) beginning at `at`.
    #[inline]
    pub(crate) fn search_at(&self, at: usize) -> Search {
        Search {
            restart: at,
            at,
            state: self.start,
            mat_state: 0,
            mat_end: 0,
        }
    }

    /// The pending match of `sr`: what a haystack ending at `sr.at` answers.
    #[inline]
    fn pending(&self, sr: &Search) -> Option<CtxMatch> {
        if sr.mat_end == 0 {
            return None; // a match ends after at least one byte
        }
        let &(pid, len) = self.matches.get(sr.mat_state as usize)?.as_ref()?;
        Some(CtxMatch {
            pid,
            start: sr.mat_end - len,
            end: sr.mat_end,
        })
    }

    /// Step `sr` over `t[sr.at..end]` until the search ends (dead state: [`Outcome::Done`] with
    /// its result) or reaches `end` ([`Outcome::Paused`]: `sr` keeps the state and the pending
    /// match, and resuming it with a later `end` visits exactly the states one run to that end
    /// would).
    ///
    /// Steps four bytes per test while no special (match or dead) state is reached (one OR of
    /// the four flagged states); in a block that reaches one, stepping continues after the
    /// first special state, so the states visited are exactly those of the one-byte loop.
    #[inline(always)]
    pub(crate) fn advance(&self, t: &[u8], end: usize, sr: &mut Search) -> Outcome {
        const BLOCK_BYTES: usize = 4;
        let hay = &t[..end.min(t.len())];
        let trans = &self.trans[..];
        let class = &self.class;
        if trans.is_empty() || sr.at >= hay.len() {
            return Outcome::Paused;
        }
        // `trans.len()` is a power of two and every premultiplied state plus a class is below
        // it (by construction), so the mask never changes an index other than by stripping
        // `SPECIAL_FLAG`; it also lets the compiler drop the bounds check
        let mask = trans.len() - 1;
        let step =
            |s: usize, b: u8| trans[(s + usize::from(class[usize::from(b)])) & mask] as usize;
        const FLAG: usize = SPECIAL_FLAG as usize;
        let mut s = sr.state as usize;
        let mut k = sr.at;
        loop {
            // four bytes per test; at a block that reached a special state, continue from the
            // first special state in it (the states before it are the one-byte loop's)
            let mut special = false;
            for c in hay[k..].chunks_exact(BLOCK_BYTES) {
                let s1 = step(s, c[0]);
                let s2 = step(s1, c[1]);
                let s3 = step(s2, c[2]);
                let s4 = step(s3, c[3]);
                if (s1 | s2 | s3 | s4) & FLAG != 0 {
                    (s, k) = if s1 & FLAG != 0 {
                        (s1, k + 1)
                    } else if s2 & FLAG != 0 {
                        (s2, k + 2)
                    } else if s3 & FLAG != 0 {
                        (s3, k + 3)
                    } else {
                        (s4, k + 4)
                    };
                    special = true;
                    break;
                }
                s = s4;
                k += BLOCK_BYTES;
            }
            if !special {
                // fewer than four bytes left: one at a time
                match hay.get(k) {
                    Some(&b) => {
                        s = step(s, b);
                        k += 1;
                        if s & FLAG == 0 {
                            continue;
                        }
                    }
                    None => {
                        sr.at = k;
                        sr.state = s as u32;
                        return Outcome::Paused;
                    }
                }
            }
            let id = s & !FLAG;
            match self.matches.get(id) {
                Some(Some(_)) => {
                    sr.mat_state = id as u32;
                    sr.mat_end = k;
                }
                _ => return Outcome::Done(self.pending(sr)), // dead
            }
        }
    }

    /// The next leftmost-longest, non-overlapping match in `hay[at..]`.
    /// Iterate by passing the previous match's `end` as `at`.
    #[cfg(test)]
    pub(crate) fn next_match(&self, hay: &[u8], at: usize) -> Option<CtxMatch> {
        let mut sr = self.search_at(at);
        match self.advance(hay, hay.len(), &mut sr) {
            Outcome::Done(m) => m,
            Outcome::Paused => self.pending(&sr),
        }
    }
}

/// A context-word match: the word's index and its byte range in the scanned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct CtxMatch {
    pub(crate) pid: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// A leftmost-longest search in progress: it began (start state) at `restart`, has read
/// `t[restart..at]`, is in DFA state `state` and has seen the match ending at `mat_end` (0:
/// none) in match state `mat_state`. A haystack ending at `at` would answer that match.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Search {
    restart: usize,
    at: usize,
    state: u32,
    mat_state: u32,
    mat_end: usize,
}

/// What [`CtxDfa::advance`] stopped at.
pub(crate) enum Outcome {
    /// The search ended in the dead state: its result, the same for every haystack end at or
    /// beyond the current position.
    Done(Option<CtxMatch>),
    /// The haystack end was reached first; the search can be resumed.
    Paused,
}

/// Completed searches remembered per shared chain; a chain that outgrows it forgets its oldest
/// ones (a window starting before what is remembered restarts the chain: exact, only dearer).
const CHAIN_SEARCHES_MAX: usize = 16;

/// Where the answer for one search of a window comes from.
enum Resolved {
    /// Proven from the shared chain.
    Match(CtxMatch),
    /// No further match in the window.
    Nothing,
    /// The window's search equals a fresh search from this position, which must be scanned.
    ScanFrom(usize),
}

/// Context-word matches of many windows over one text, sharing one automaton pass where the
/// windows overlap (on dense PII the phone and IPv4 windows overlap by about half).
///
/// Each window's answer must be exactly what iterating fresh searches ([`CtxDfa::advance`])
/// over the window slice alone gives: the chain of leftmost-longest searches `LL(r, we)` (the match with the
/// smallest start `>= r` that ends `<= we`, the longest at that start), restarting at each match
/// end, from `r = ws`. The scanner keeps one such chain over the text (the results of its
/// completed searches and the search in progress) and answers a window's search from `r` by the
/// chain's search that *covers* `r` (the last one restarting at or before `r`), using:
///
/// * a chain search from `c` that ended with `m` is `LL(c, E)` for every end `E >= m.end`, and
///   for every `E` no word ending `<= E` starts in `[c, m.start)` (it would have been
///   leftmost); a search paused at `k` with pending match `m` is `LL(c, k)`;
/// * so if `c <= r <= m.start`: `LL(r, we) = m` when `m.end <= we`; otherwise it is a fresh
///   search from `m.start` (nothing if `m.start >= we`);
/// * a covering search that found nothing (paused at `k >= we`, or ended) proves that no word
///   lies in `[r, we)`;
/// * if the covering match *straddles* `r` (`m.start < r`), the chains disagree there: the
///   window searches from `r` itself (a fresh scan bounded by `we`) and tries the chain again
///   at the end of what that finds.
///
/// The chain is advanced only up to the current window's end, so its search pauses at a window
/// end and resumes with the next window: overlapping bytes are stepped once. A window starting
/// before the remembered chain or beyond what it has read restarts the chain there.
/// `shared_windows_equal_per_window_scans` checks all this against per-window scans.
pub(crate) struct CtxScan<'a> {
    dfa: &'a CtxDfa,
    t: &'a [u8],
    /// Restart of the oldest remembered search (`cur.restart` when none is remembered).
    from: usize,
    /// Results of the completed searches, oldest first: a ring of `len` entries from `head`.
    /// Search `i` restarts at `from` (`i = 0`) or at result `i - 1`'s end.
    done: [CtxMatch; CHAIN_SEARCHES_MAX],
    head: usize,
    len: usize,
    /// The search in progress, restarting at the last result's end (or `from`).
    cur: Search,
    /// The search from `cur.restart` ended without a match: no word starts at or after it.
    ended: bool,
}

impl<'a> CtxScan<'a> {
    pub(crate) fn new(dfa: &'a CtxDfa, t: &'a [u8]) -> CtxScan<'a> {
        CtxScan {
            dfa,
            t,
            from: 0,
            done: [CtxMatch::default(); CHAIN_SEARCHES_MAX],
            head: 0,
            len: 0,
            cur: dfa.search_at(0),
            ended: false,
        }
    }

    #[inline]
    fn done_at(&self, i: usize) -> CtxMatch {
        self.done[(self.head + i) % CHAIN_SEARCHES_MAX]
    }

    #[inline]
    fn drop_oldest(&mut self) {
        self.from = self.done[self.head].end;
        self.head = (self.head + 1) % CHAIN_SEARCHES_MAX;
        self.len -= 1;
    }

    /// Calls `f` with each match of the leftmost-longest chain over `t[ws..we]` alone (positions
    /// in `t`), in order, until `f` returns `false`.
    #[inline]
    pub(crate) fn window(&mut self, ws: usize, we: usize, mut f: impl FnMut(CtxMatch) -> bool) {
        let we = we.min(self.t.len());
        if ws < self.from || (!self.ended && ws >= self.cur.at) {
            // nothing of the chain is usable: restart it at the window
            self.from = ws;
            self.len = 0;
            self.ended = false;
            self.cur = self.dfa.search_at(ws);
        } else {
            // forget the searches whose results end before the window (the covering one stays)
            while self.len > 0 && self.done[self.head].end <= ws {
                self.drop_oldest();
            }
        }
        let mut r = ws;
        while r < we {
            let m = match self.resolve(r, we) {
                Resolved::Match(m) => m,
                Resolved::Nothing => return,
                Resolved::ScanFrom(x) => {
                    let mut sr = self.dfa.search_at(x);
                    let found = match self.dfa.advance(self.t, we, &mut sr) {
                        Outcome::Done(m) => m,
                        Outcome::Paused => self.dfa.pending(&sr),
                    };
                    match found {
                        Some(m) => m,
                        None => return,
                    }
                }
            };
            if !f(m) {
                return;
            }
            r = m.end;
        }
    }

    /// The window's search from `r` (end `we`), from the chain's search covering `r`; the
    /// search in progress is advanced up to `we` first.
    fn resolve(&mut self, r: usize, we: usize) -> Resolved {
        let classify = |m: CtxMatch| {
            if m.start < r {
                Resolved::ScanFrom(r)
            } else if m.end <= we {
                Resolved::Match(m)
            } else if m.start >= we {
                Resolved::Nothing
            } else {
                Resolved::ScanFrom(m.start)
            }
        };
        loop {
            if r >= self.cur.restart {
                if self.ended {
                    return Resolved::Nothing;
                }
                if self.cur.at < we {
                    match self.dfa.advance(self.t, we, &mut self.cur) {
                        Outcome::Done(Some(m)) => {
                            if self.len == CHAIN_SEARCHES_MAX {
                                self.drop_oldest();
                            }
                            self.done[(self.head + self.len) % CHAIN_SEARCHES_MAX] = m;
                            self.len += 1;
                            self.cur = self.dfa.search_at(m.end);
                            if r < m.end {
                                return classify(m); // the search just completed covers `r`
                            }
                            continue;
                        }
                        Outcome::Done(None) => {
                            self.ended = true;
                            return Resolved::Nothing;
                        }
                        Outcome::Paused => {}
                    }
                }
                return match self.dfa.pending(&self.cur) {
                    Some(m) => classify(m),
                    None => Resolved::Nothing,
                };
            }
            // a completed search covers `r`: the last one restarting at or before it
            let mut i = self.len;
            while i > 0 {
                let restart = if i == 1 {
                    self.from
                } else {
                    self.done_at(i - 2).end
                };
                if restart <= r {
                    return classify(self.done_at(i - 1));
                }
                i -= 1;
            }
            return Resolved::ScanFrom(r); // before the remembered chain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::AhoCorasickBuilder;

    /// The built-in words, as the engine configures them.
    fn builtin_words() -> Vec<String> {
        crate::pii::engine::POSITIVE_WORDS
            .iter()
            .flat_map(|(_, ws)| ws.iter())
            .chain(crate::pii::engine::NEGATIVE_WORDS)
            .map(|s| s.to_string())
            .collect()
    }

    /// Words, their prefixes, case variants and separators, glued at random into haystacks.
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
    ];

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// The matches of iterating [`CtxDfa::next_match`] over `hay`.
    fn all_matches(dfa: &CtxDfa, hay: &[u8]) -> Vec<CtxMatch> {
        let mut got = Vec::new();
        let mut at = 0;
        while let Some(m) = dfa.next_match(hay, at) {
            at = m.end;
            got.push(m);
        }
        got
    }

    /// Same matches as `AhoCorasick::find_iter` over many haystacks built from the words, their
    /// prefixes, case variants and separators.
    #[test]
    fn same_matches_as_aho_corasick() {
        let words = builtin_words();
        let ours = CtxDfa::new(&words).expect("ctx dfa");
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(aho_corasick::AhoCorasickKind::DFA))
            .build(&words)
            .expect("ac");
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut hay = String::new();
        for _ in 0..20_000 {
            hay.clear();
            for _ in 0..xorshift(&mut seed) % 24 {
                hay.push_str(PIECES[(xorshift(&mut seed) % PIECES.len() as u64) as usize]);
            }
            let want: Vec<CtxMatch> = ac
                .find_iter(hay.as_bytes())
                .map(|m| CtxMatch {
                    pid: m.pattern().as_usize(),
                    start: m.start(),
                    end: m.end(),
                })
                .collect();
            assert_eq!(all_matches(&ours, hay.as_bytes()), want, "{hay:?}");
        }
    }

    /// `CtxScan::window` gives exactly the matches of scanning each window slice alone, for
    /// sequences of overlapping, nested, disjoint and out-of-order windows, with and without
    /// early stops (which leave the shared chain mid-way), on the built-in words and on a word
    /// set with prefixes, suffixes, spaces and long words (straddling matches, chain ends
    /// inside windows, more searches per window than the chain remembers).
    #[test]
    fn shared_windows_equal_per_window_scans() {
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
        ] {
            extended.push(w.to_string());
        }
        let mut pieces: Vec<&str> = PIECES.to_vec();
        pieces.extend([
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
        ]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut text = String::new();
        let mut windows_checked = 0usize;
        for words in [builtin_words(), extended] {
            let dfa = CtxDfa::new(&words).expect("ctx dfa");
            for _ in 0..6_000 {
                text.clear();
                for _ in 0..xorshift(&mut seed) % 48 {
                    text.push_str(pieces[(xorshift(&mut seed) % pieces.len() as u64) as usize]);
                }
                let t = text.as_bytes();
                let mut scan = CtxScan::new(&dfa, t);
                let mut ws = 0usize;
                for _ in 0..1 + xorshift(&mut seed) % 12 {
                    let r = xorshift(&mut seed);
                    ws = match r % 8 {
                        0 => (r >> 8) as usize % (t.len() + 1), // anywhere, also backwards
                        1 => ws,                                // same start
                        _ => ws + (r >> 8) as usize % 40,       // forward, mostly overlapping
                    };
                    let ws = ws.min(t.len());
                    let we = (ws + (r >> 16) as usize % 130).min(t.len());
                    let want: Vec<CtxMatch> = all_matches(&dfa, &t[ws..we])
                        .into_iter()
                        .map(|m| CtxMatch {
                            pid: m.pid,
                            start: ws + m.start,
                            end: ws + m.end,
                        })
                        .collect();
                    // stop after `keep` matches now and then, as the engine does
                    let keep = if r.is_multiple_of(5) {
                        (r >> 24) as usize % 3
                    } else {
                        usize::MAX
                    };
                    let mut got = Vec::new();
                    scan.window(ws, we, |m| {
                        got.push(m);
                        got.len() < keep
                    });
                    let n = want.len().min(keep.max(1));
                    assert_eq!(got, want[..n.min(want.len())], "{text:?} [{ws}..{we})");
                    windows_checked += 1;
                }
            }
        }
        assert!(windows_checked > 50_000);
    }
}
