//! The detection engine: prefilter passes + validators + context scoring + action table.
//!
//! Invariants:
//! * Linear time in the input: every pass is a single forward scan (a vectorisable
//!   "interesting byte" skip for digits/`@`/`:`, one Aho-Corasick automaton for secret prefixes
//!   and custom anchors, one for dictionaries); validators read a bounded window per candidate.
//!   Custom regexes use the `regex` crate (finite automata, no backtracking); anchored ones run
//!   only at anchor hits on a window of at most `max_len_bytes`.
//! * Never stores matched values: [`Finding`] holds entity + offsets only.
//! * `Engine` is immutable after construction, `Send + Sync`, and cheap to clone (`Arc` inside):
//!   per-route action overrides share the compiled detector via [`Engine::with_actions`].

use std::collections::BTreeMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use sha2::Sha256;

use super::config::{CompressedPolicy, PiiConfig};
use super::context::CtxWords;
use super::entity::{
    Action, Entity, Finding, BUILTIN_ENTITIES, IBAN_BYTES_MAX, IP_BYTES_MAX, PEM_HEADER_BYTES_MAX,
};
use super::error::PiiError;
use super::validate as v;

/// Minimum HMAC key length for the `hash` action.
pub const HASH_KEY_BYTES_MIN: usize = 16;
/// Slack added to the longest entity for the boundary look-ahead of validators.
const BOUNDARY_LOOKAHEAD_BYTES: usize = 2;

/// Default positive context words per entity.
pub(super) const POSITIVE_WORDS: &[(Entity, &[&str])] = &[
    (
        Entity::Ssn,
        &[
            "ssn",
            "ssns",
            "social security",
            "social sec",
            "ss#",
            "soc sec",
            "tax id",
            "taxpayer",
            "tin",
        ],
    ),
    (
        Entity::CreditCard,
        &[
            "card",
            "cc",
            "credit",
            "debit",
            "visa",
            "mastercard",
            "amex",
            "payment",
            "pan",
            "cardholder",
        ],
    ),
    (
        Entity::Phone,
        &[
            "phone",
            "call",
            "tel",
            "telephone",
            "mobile",
            "cell",
            "fax",
            "contact",
            "sms",
            "text me",
            "reach",
        ],
    ),
    (
        Entity::IpAddress,
        &[
            "ip",
            "ip address",
            "host",
            "server",
            "client",
            "addr",
            "ipv4",
        ],
    ),
    (Entity::Iban, &["iban", "account", "bank", "transfer"]),
];

/// Default negative context words (numeric entities).
pub(super) const NEGATIVE_WORDS: &[&str] = &[
    "order",
    "invoice",
    "version",
    "ver",
    "build",
    "release",
    "tracking",
    "sku",
    "isbn",
    "timestamp",
    "epoch",
    "ticket",
    "part",
    "model",
    "serial",
    "po",
    "batch",
    "lot",
    "v",
];

#[derive(Debug, Clone, Copy)]
enum Lit {
    Aws,
    Sk,
    Github,
    GithubPat,
    Pem,
    Jwt,
}

#[derive(Debug)]
struct CustomRx {
    entity: Entity,
    regex: Regex,
    anchored: bool,
    confidence: f32,
    max_len_bytes: usize,
}

/// What one context word (all its configured meanings) says, as tested per match: the
/// entities it is positive for as a bit set over [`slot`]s below 64, whether it is positive for
/// any entity at a higher slot (then the word's [`CtxWord`] list decides), and whether it is
/// negative.
#[derive(Debug, Clone, Copy, Default)]
struct CtxMeaning {
    positive: u64,
    positive_high: bool,
    negative: bool,
}

/// Entity slots a [`CtxMeaning`] bit set covers.
const CTX_MEANING_SLOTS: usize = 64;

#[derive(Debug, Clone)]
struct CtxWord {
    positive: bool,
    /// `None` = applies to all numeric entities (negative words).
    entity: Option<Entity>,
}

/// HMAC-SHA256 state keyed once; cloned per pseudonym. `Debug` never prints the key.
#[derive(Clone)]
struct KeyedMac(Hmac<Sha256>);

impl std::fmt::Debug for KeyedMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyedMac(..)")
    }
}

/// Compiled, immutable detection tables shared by all engines built from one config.
#[derive(Debug)]
struct Detector {
    enabled: bool,
    builtin: [bool; 11],
    lit_ac: Option<AhoCorasick>,
    lits: Vec<Lit>,
    anchor_ac: Option<AhoCorasick>,
    /// Longest entity that may contain whitespace (streaming hold-back floor).
    spaced_bytes: usize,
    custom: Vec<CustomRx>,
    dict_ac: Option<AhoCorasick>,
    dict_entity: Vec<Entity>,
    /// Context words (see [`super::context`] for why not `AhoCorasick::find_iter`).
    ctx_words_trie: Option<CtxWords>,
    ctx_words: Vec<Vec<CtxWord>>,
    /// `ctx_words` folded per word (one lookup per context match).
    ctx_meanings: Vec<CtxMeaning>,
    window_bytes: usize,
    threshold: f32,
    boost: f32,
    penalty: f32,
    names: Vec<Arc<str>>,
    holdback_bytes: usize,
}

/// The PII engine. Build once per config with [`Engine::new`] / [`Engine::with_hash_key`], share
/// behind `Arc` across cores.
#[derive(Debug, Clone)]
pub struct Engine {
    det: Arc<Detector>,
    actions: Arc<[Action]>,
    hash_key: Option<Arc<KeyedMac>>,
    pub(crate) dry_run: bool,
    pub(crate) body_bytes_max: usize,
    pub(crate) compressed: CompressedPolicy,
    pub(crate) streaming: bool,
    pub(crate) responses: bool,
}

fn slot(e: Entity) -> usize {
    match e {
        Entity::Custom(n) => 11 + usize::from(n),
        b => BUILTIN_ENTITIES.iter().position(|x| *x == b).unwrap_or(0),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn cfg_err(s: impl Into<String>) -> PiiError {
    PiiError::Config(s.into())
}

impl Engine {
    /// Build an engine. Fails when the config names unknown entities, has invalid custom
    /// patterns or uses the `hash` action (use [`Engine::with_hash_key`] then).
    pub fn new(cfg: &PiiConfig) -> Result<Engine, PiiError> {
        Self::build(cfg, None)
    }

    /// Build an engine with the HMAC key for the `hash` action (resolved by the proxy from
    /// `cfg.hash_key`). The key must be at least [`HASH_KEY_BYTES_MIN`] bytes.
    pub fn with_hash_key(cfg: &PiiConfig, key: &[u8]) -> Result<Engine, PiiError> {
        if key.len() < HASH_KEY_BYTES_MIN {
            return Err(cfg_err(format!(
                "hash key shorter than {HASH_KEY_BYTES_MIN} bytes"
            )));
        }
        Self::build(cfg, Some(key))
    }

    fn build(cfg: &PiiConfig, key: Option<&[u8]>) -> Result<Engine, PiiError> {
        if let Some(h) = &cfg.hash_key {
            if h.env.is_some() == h.file.is_some() {
                return Err(cfg_err("hash_key: set exactly one of `env` or `file`"));
            }
        }
        let mut builtin = [cfg.entities.is_empty(); 11];
        for name in &cfg.entities {
            let e = Entity::from_builtin_tag(name)
                .ok_or_else(|| cfg_err(format!("unknown entity {name:?}")))?;
            builtin[slot(e)] = true;
        }
        let mut names: Vec<Arc<str>> = BUILTIN_ENTITIES
            .iter()
            .map(|e| Arc::from(e.builtin_tag().unwrap_or("?")))
            .collect();
        let add_custom = |name: &str, names: &mut Vec<Arc<str>>| -> Result<Entity, PiiError> {
            if !valid_name(name) {
                return Err(cfg_err(format!(
                    "custom entity name {name:?} must be [A-Z0-9_]+"
                )));
            }
            if names.iter().any(|n| &**n == name) {
                return Err(cfg_err(format!("duplicate entity name {name:?}")));
            }
            let n =
                u16::try_from(names.len() - 11).map_err(|_| cfg_err("too many custom entities"))?;
            names.push(Arc::from(name));
            Ok(Entity::Custom(n))
        };

        // literal automaton: secret prefixes + custom anchors
        let mut pats: Vec<String> = Vec::new();
        let mut lits = Vec::new();
        let push_lit = |p: &str, l: Lit, pats: &mut Vec<String>, lits: &mut Vec<Lit>| {
            pats.push(p.to_string());
            lits.push(l);
        };
        if builtin[slot(Entity::AwsKey)] {
            push_lit("AKIA", Lit::Aws, &mut pats, &mut lits);
            push_lit("ASIA", Lit::Aws, &mut pats, &mut lits);
        }
        if builtin[slot(Entity::ApiKey)] {
            push_lit("sk-", Lit::Sk, &mut pats, &mut lits);
        }
        if builtin[slot(Entity::GithubToken)] {
            for p in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
                push_lit(p, Lit::Github, &mut pats, &mut lits);
            }
            push_lit("github_pat_", Lit::GithubPat, &mut pats, &mut lits);
        }
        if builtin[slot(Entity::PrivateKey)] {
            push_lit("-----BEGIN", Lit::Pem, &mut pats, &mut lits);
        }
        if builtin[slot(Entity::Jwt)] {
            push_lit("eyJ", Lit::Jwt, &mut pats, &mut lits);
        }
        let mut anchors: Vec<String> = Vec::new();
        let mut custom = Vec::new();
        for cp in &cfg.custom_patterns {
            let entity = add_custom(&cp.name, &mut names)?;
            let anchored = match &cp.anchor {
                Some(a) if !a.is_empty() => {
                    if !cp.pattern.is_empty()
                        && !cp.pattern.starts_with(&regex::escape(a))
                        && !cp.pattern.starts_with(a.as_str())
                    {
                        return Err(cfg_err(format!(
                            "custom pattern {}: pattern must start with its anchor literal",
                            cp.name
                        )));
                    }
                    anchors.push(a.clone());
                    true
                }
                _ => {
                    if !cp.unanchored_ok {
                        return Err(cfg_err(format!(
                            "custom pattern {}: set `anchor` or acknowledge the full-pass cost with `unanchored_ok: true`",
                            cp.name
                        )));
                    }
                    false
                }
            };
            let src = if anchored {
                format!("^(?:{})", cp.pattern)
            } else {
                cp.pattern.clone()
            };
            let regex = regex::RegexBuilder::new(&src)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| cfg_err(format!("custom pattern {}: {e}", cp.name)))?;
            if !(0.0..=1.0).contains(&cp.confidence) {
                return Err(cfg_err(format!(
                    "custom pattern {}: confidence outside [0,1]",
                    cp.name
                )));
            }
            custom.push(CustomRx {
                entity,
                regex,
                anchored,
                confidence: cp.confidence,
                max_len_bytes: cp.max_len_bytes.max(1),
            });
        }
        let build_lits = |p: &[String]| -> Result<Option<AhoCorasick>, PiiError> {
            if p.is_empty() {
                return Ok(None);
            }
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(p)
                .map(Some)
                .map_err(|e| cfg_err(format!("literal automaton: {e}")))
        };
        let lit_ac = build_lits(&pats)?;
        let anchor_ac = build_lits(&anchors)?;

        // dictionaries
        let mut dict_terms = Vec::new();
        let mut dict_entity = Vec::new();
        for d in &cfg.dictionaries {
            let entity = add_custom(&d.name, &mut names)?;
            for t in &d.terms {
                if t.trim().is_empty() {
                    return Err(cfg_err(format!("dictionary {}: empty term", d.name)));
                }
                dict_terms.push(t.clone());
                dict_entity.push(entity);
            }
        }
        let dict_ac = if dict_terms.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&dict_terms)
                    .map_err(|e| cfg_err(format!("dictionary automaton: {e}")))?,
            )
        };

        // context words
        let lookup = |tag: &str, names: &[Arc<str>]| -> Result<Entity, PiiError> {
            names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(tag))
                .map(|i| {
                    if i < 11 {
                        BUILTIN_ENTITIES[i]
                    } else {
                        Entity::Custom((i - 11) as u16)
                    }
                })
                .ok_or_else(|| cfg_err(format!("unknown entity {tag:?}")))
        };
        let c = &cfg.context;
        let mut words = Vec::new();
        let mut ctx_words = Vec::new();
        if c.builtin_words {
            for (e, ws) in POSITIVE_WORDS {
                for w in *ws {
                    words.push(w.to_string());
                    ctx_words.push(CtxWord {
                        positive: true,
                        entity: Some(*e),
                    });
                }
            }
            for w in NEGATIVE_WORDS {
                words.push(w.to_string());
                ctx_words.push(CtxWord {
                    positive: false,
                    entity: None,
                });
            }
        }
        for (tag, ws) in &c.positive {
            let e = lookup(tag, &names)?;
            for w in ws {
                words.push(w.clone());
                ctx_words.push(CtxWord {
                    positive: true,
                    entity: Some(e),
                });
            }
        }
        for w in &c.negative {
            words.push(w.clone());
            ctx_words.push(CtxWord {
                positive: false,
                entity: None,
            });
        }
        if words.iter().any(|w| w.is_empty()) {
            return Err(cfg_err("empty context word"));
        }
        // dedupe words (ASCII case-insensitive): one trie state per word, and one occurrence
        // reports every meaning of the word
        let mut uniq: Vec<String> = Vec::new();
        let mut meanings: Vec<Vec<CtxWord>> = Vec::new();
        for (w, cw) in words.iter().zip(ctx_words) {
            let lw = w.to_ascii_lowercase();
            match uniq.iter().position(|u| *u == lw) {
                Some(k) => meanings[k].push(cw),
                None => {
                    uniq.push(lw);
                    meanings.push(vec![cw]);
                }
            }
        }
        let ctx_words = meanings;
        let ctx_meanings = ctx_words
            .iter()
            .map(|ws| {
                let mut m = CtxMeaning::default();
                for w in ws {
                    match (w.positive, w.entity) {
                        (true, Some(e)) if slot(e) < CTX_MEANING_SLOTS => {
                            m.positive |= 1 << slot(e)
                        }
                        (true, Some(_)) => m.positive_high = true,
                        (true, None) => {}
                        (false, _) => m.negative = true,
                    }
                }
                m
            })
            .collect();
        let ctx_words_trie = if uniq.is_empty() {
            None
        } else {
            Some(CtxWords::new(&uniq)?)
        };
        if !(0.0..=1.0).contains(&c.threshold) {
            return Err(cfg_err("context.threshold outside [0,1]"));
        }

        // actions
        let mut actions = vec![cfg.default_action; names.len()];
        for (tag, a) in &cfg.actions {
            let e = lookup(tag, &names)?;
            actions[slot(e)] = *a;
        }
        if actions.contains(&Action::Hash) && key.is_none() {
            return Err(cfg_err(
                "the hash action needs a key: resolve `hash_key` and use Engine::with_hash_key",
            ));
        }

        // hold-back: longest bounded entity + lookahead
        let mut hold = 0;
        for e in BUILTIN_ENTITIES {
            if builtin[slot(e)] {
                hold = hold.max(e.hold_bytes_max());
            }
        }
        for cr in &custom {
            hold = hold.max(cr.max_len_bytes);
        }
        for t in &dict_terms {
            hold = hold.max(t.len());
        }
        let holdback_bytes = hold + BOUNDARY_LOOKAHEAD_BYTES;
        let mut spaced_bytes = PEM_HEADER_BYTES_MAX.max(IBAN_BYTES_MAX);
        for cr in &custom {
            spaced_bytes = spaced_bytes.max(cr.max_len_bytes);
        }
        for t in &dict_terms {
            spaced_bytes = spaced_bytes.max(t.len());
        }

        let det = Detector {
            enabled: cfg.enabled,
            builtin,
            lit_ac,
            lits,
            anchor_ac,
            spaced_bytes,
            custom,
            dict_ac,
            dict_entity,
            ctx_words_trie,
            ctx_words,
            ctx_meanings,
            window_bytes: c.window_bytes,
            threshold: c.threshold,
            boost: c.boost,
            penalty: c.penalty,
            names,
            holdback_bytes,
        };
        Ok(Engine {
            det: Arc::new(det),
            actions: actions.into(),
            hash_key: match key {
                Some(k) => Some(Arc::new(KeyedMac(
                    <Hmac<Sha256> as KeyInit>::new_from_slice(k)
                        .map_err(|_| cfg_err("invalid hash key"))?,
                ))),
                None => None,
            },
            dry_run: cfg.dry_run,
            body_bytes_max: cfg.body_bytes_max,
            compressed: cfg.compressed,
            streaming: cfg.streaming,
            responses: cfg.responses,
        })
    }

    /// A copy sharing the compiled detector with some actions overridden (per-route policy).
    /// Cost: one small allocation; no automaton or regex is rebuilt.
    pub fn with_actions(&self, overrides: &BTreeMap<String, Action>) -> Result<Engine, PiiError> {
        let mut actions: Vec<Action> = self.actions.to_vec();
        for (tag, a) in overrides {
            let i = self
                .det
                .names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(tag))
                .ok_or_else(|| cfg_err(format!("unknown entity {tag:?}")))?;
            actions[i] = *a;
        }
        if actions.contains(&Action::Hash) && self.hash_key.is_none() {
            return Err(cfg_err("the hash action needs a key"));
        }
        Ok(Engine {
            actions: actions.into(),
            ..self.clone()
        })
    }

    /// A copy with `dry_run` set (report only).
    pub fn with_dry_run(&self, dry_run: bool) -> Engine {
        Engine {
            dry_run,
            ..self.clone()
        }
    }

    /// Whether this engine only reports.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether streaming responses should be inspected.
    pub fn streaming_enabled(&self) -> bool {
        self.det.enabled && self.streaming
    }

    /// Whether non-streaming responses should be inspected.
    pub fn responses_enabled(&self) -> bool {
        self.det.enabled && self.responses
    }

    /// Whether the engine detects anything at all.
    pub fn enabled(&self) -> bool {
        self.det.enabled
    }

    /// The inspection limit for bodies.
    pub fn body_bytes_max(&self) -> usize {
        self.body_bytes_max
    }

    /// Tag of an entity (`SSN`, custom names...).
    pub fn entity_name(&self, e: Entity) -> &str {
        self.det.names.get(slot(e)).map_or("UNKNOWN", |n| &**n)
    }

    /// Shared tag of an entity (cheap clone for audit records).
    pub fn entity_name_arc(&self, e: Entity) -> Arc<str> {
        self.det
            .names
            .get(slot(e))
            .cloned()
            .unwrap_or_else(|| Arc::from("UNKNOWN"))
    }

    /// True when some entity, built-in or custom (patterns, dictionaries), is configured to
    /// `block` and the engine is not in dry-run: a body it cannot read must then be refused.
    pub fn can_block(&self) -> bool {
        !self.dry_run && self.actions.contains(&Action::Block)
    }

    /// Configured action for an entity.
    pub fn action_for(&self, e: Entity) -> Action {
        self.actions.get(slot(e)).copied().unwrap_or(Action::Redact)
    }

    /// Streaming hold-back of this engine in bytes (= chars for the ASCII entities): the longest
    /// bounded entity it detects plus 2 bytes of boundary look-ahead. Never more than
    /// [`crate::pii::HOLDBACK_CHARS_MAX`] unless custom patterns/dictionaries are longer.
    pub fn holdback_bytes(&self) -> usize {
        self.det.holdback_bytes
    }

    /// Streaming hold-back floor in bytes: the longest entity that may contain whitespace, or a
    /// numeric entity plus its trailing context window, plus boundary look-ahead.
    pub fn stream_hold_min_bytes(&self) -> usize {
        let d = &*self.det;
        (d.spaced_bytes.max(IP_BYTES_MAX + d.window_bytes) + BOUNDARY_LOOKAHEAD_BYTES)
            .min(d.holdback_bytes.max(1))
    }

    /// Scan `text`, replacing the contents of `out` with findings sorted by start, non-overlapping,
    /// with confidence `>= threshold`. Linear time; no allocation beyond `out` growth.
    pub fn scan(&self, text: &str, out: &mut Vec<Finding>) {
        self.scan_from(text, 0, out);
    }

    /// Like [`Engine::scan`], but candidates starting before `min_start` are discarded *before*
    /// overlap resolution, so text kept only as left context (streaming) never suppresses a
    /// finding after it. `text[..min_start]` still serves for boundaries and context words.
    pub fn scan_from(&self, text: &str, min_start: usize, out: &mut Vec<Finding>) {
        out.clear();
        let d = &*self.det;
        if !d.enabled || text.is_empty() {
            return;
        }
        let t = text.as_bytes();
        // secret prefixes are merged into the numeric pass by start, so the default candidate
        // list comes out sorted and overlap resolution skips its sort
        let mut lits = Literals {
            iter: d.lit_ac.as_ref().map(|ac| ac.find_iter(t)),
            lits: &d.lits,
            t,
            claimed: 0,
            next: None,
        };
        self.scan_numeric(t, out, &mut lits);
        lits.flush(usize::MAX, out);
        self.scan_anchors(text, out);
        if let Some(ac) = &d.dict_ac {
            for m in ac.find_iter(t) {
                let (s, e) = (m.start(), m.end());
                let lb = s == 0 || !v::is_word(t[s - 1]) || !v::is_word(t[s]);
                let rb = e >= t.len() || !v::is_word(t[e]) || !v::is_word(t[e - 1]);
                if lb && rb {
                    out.push(Finding {
                        entity: d.dict_entity[m.pattern().as_usize()],
                        start: s,
                        end: e,
                        confidence: 1.0,
                    });
                }
            }
        }
        for cr in d.custom.iter().filter(|c| !c.anchored) {
            for m in cr.regex.find_iter(text) {
                if m.end() > m.start() {
                    out.push(Finding {
                        entity: cr.entity,
                        start: m.start(),
                        end: m.end(),
                        confidence: cr.confidence,
                    });
                }
            }
        }
        // start filter, context, threshold: one pass
        out.retain_mut(|f| {
            if f.start < min_start {
                return false;
            }
            self.apply_context(t, f);
            reaches(f.confidence, d.threshold)
        });
        if out.is_empty() {
            return;
        }
        resolve_overlaps(out);
    }

    fn on(&self, e: Entity) -> bool {
        self.det.builtin[slot(e)]
    }

    fn scan_numeric(&self, t: &[u8], out: &mut Vec<Finding>, lits: &mut Literals<'_>) {
        /// Clean text is skipped this many bytes per test; a chunk that hits is split in halves
        /// once, so dense text does not pay a long SWAR walk per event.
        const CHUNK_BYTES: usize = 64;
        const HALF_BYTES: usize = CHUNK_BYTES / 2;
        #[inline]
        fn any_interesting(chunk: &[u8]) -> bool {
            let mut hit = false;
            for &b in chunk {
                hit |= (b.wrapping_sub(b'0') < 10) | (b == b'@') | (b == b':');
            }
            hit
        }
        let want_digits = [
            Entity::Ssn,
            Entity::CreditCard,
            Entity::Phone,
            Entity::Iban,
            Entity::IpAddress,
        ]
        .iter()
        .any(|&e| self.on(e));
        let want_at = self.on(Entity::Email);
        let want_colon = self.on(Entity::IpAddress);
        if !want_digits && !want_at && !want_colon {
            return;
        }
        let n = t.len();
        let mut i = 0;
        while i < n {
            // vectorisable skip over uninteresting 64-byte chunks, then one 32-byte half
            while let Some(chunk) = t.get(i..i + CHUNK_BYTES) {
                if any_interesting(chunk) {
                    break;
                }
                i += CHUNK_BYTES;
            }
            if t.get(i..i + HALF_BYTES)
                .is_some_and(|h| !any_interesting(h))
            {
                i += HALF_BYTES;
            }
            // then 8 bytes at a time to the interesting byte, and byte-wise in the tail
            while i + 8 <= n {
                let mut w = [0u8; 8];
                w.copy_from_slice(&t[i..i + 8]);
                let m = interesting_mask(u64::from_le_bytes(w));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            while i < n && !((t[i].wrapping_sub(b'0') < 10) | (t[i] == b'@') | (t[i] == b':')) {
                i += 1;
            }
            if i >= n {
                break;
            }
            lits.flush(i, out);
            let b = t[i];
            if b.is_ascii_digit() {
                if want_digits && (i == 0 || !t[i - 1].is_ascii_digit()) {
                    let next = self.digit_candidates(t, i, out);
                    let glued = i > 0 && v::is_word(t[i - 1]);
                    // inside a word token (base64, hex, identifiers) no numeric entity can start
                    // before the token ends, so skip the whole token, not just the digit run
                    let run_end = if glued {
                        i + t[i..].iter().take_while(|&&c| v::is_word(c)).count()
                    } else {
                        i + t[i..].iter().take_while(|c| c.is_ascii_digit()).count()
                    };
                    i = next.max(run_end);
                } else {
                    i += 1;
                }
            } else if b == b'@' && want_at {
                match v::email(t, i) {
                    Some((s, e, c)) => {
                        push_sorted(
                            out,
                            Finding {
                                entity: Entity::Email,
                                start: s,
                                end: e,
                                confidence: c,
                            },
                        );
                        i = e;
                    }
                    None => i += 1,
                }
            } else if b == b':' && want_colon {
                match v::ipv6(t, i) {
                    Some((s, e, c)) => {
                        push_sorted(
                            out,
                            Finding {
                                entity: Entity::IpAddress,
                                start: s,
                                end: e,
                                confidence: c,
                            },
                        );
                        i = e.max(i + 1);
                    }
                    None => i += 1,
                }
            } else {
                i += 1;
            }
        }
    }

    /// Try every numeric validator at the digit run starting at `i`; returns the furthest end.
    fn digit_candidates(&self, t: &[u8], i: usize, out: &mut Vec<Finding>) -> usize {
        let mut far = i;
        if i > 0 && v::is_word(t[i - 1]) {
            // glued to a word (base64, hex, identifiers): only an IBAN (`DE89...`) can start here
            let iban_shape = i >= 2
                && t[i - 1].is_ascii_uppercase()
                && t[i - 2].is_ascii_uppercase()
                && (i < 3 || !v::is_word(t[i - 3]));
            if iban_shape && self.on(Entity::Iban) {
                if let Some((end, c)) = v::iban(t, i - 2) {
                    push_sorted(
                        out,
                        Finding {
                            entity: Entity::Iban,
                            start: i - 2,
                            end,
                            confidence: c,
                        },
                    );
                    far = end;
                }
            }
            return far;
        }
        // Classify the run once (length, separator after it) and call only the validators whose
        // shape can match: each condition below is a necessary condition the validator itself
        // checks first, so skipping a validator never changes a result.
        let n = v::digit_run_len(t, i);
        let sep = t.get(i + n).copied().unwrap_or(0);
        let digit_after_sep = t.get(i + n + 1).is_some_and(u8::is_ascii_digit);
        let grouped = |seps: &[u8]| seps.contains(&sep) && digit_after_sep;
        let mut push = |e: Entity, s: usize, r: Option<(usize, f32)>, out: &mut Vec<Finding>| {
            if let Some((end, c)) = r {
                push_sorted(
                    out,
                    Finding {
                        entity: e,
                        start: s,
                        end,
                        confidence: c,
                    },
                );
                far = far.max(end);
            }
        };
        // ssn: 9 bare digits or `3<sep>2<sep>4`
        if self.on(Entity::Ssn) && (n == 9 || (n == 3 && grouped(b"- ."))) {
            push(Entity::Ssn, i, v::ssn(t, i), out);
        }
        // card: 13-19 bare digits or groups starting with 4 digits
        if self.on(Entity::CreditCard) && ((13..=19).contains(&n) || (n == 4 && grouped(b" -"))) {
            push(Entity::CreditCard, i, v::card(t, i), out);
        }
        if self.on(Entity::Phone) {
            // nanp at a digit: 10 bare digits, a 3-digit area code and a separator, or a `1`
            // trunk prefix and a separator
            let nanp_shape = n == 10
                || (n == 3 && matches!(sep, b' ' | b'-' | b'.'))
                || (n == 1 && t[i] == b'1' && matches!(sep, b' ' | b'-' | b'.'));
            if nanp_shape {
                push(Entity::Phone, i, v::nanp(t, i), out);
            }
            if i > 0 && matches!(t[i - 1], b'(' | b'+') {
                push(Entity::Phone, i - 1, v::nanp(t, i - 1), out);
                push(Entity::Phone, i - 1, v::e164(t, i - 1), out);
            }
        }
        // ipv4: a 1-3 digit octet, a dot and a digit
        if self.on(Entity::IpAddress) && (1..=3).contains(&n) && grouped(b".") {
            push(Entity::IpAddress, i, v::ipv4(t, i), out);
        }
        if self.on(Entity::Iban) && i >= 2 && t[i - 1].is_ascii_uppercase() {
            push(Entity::Iban, i - 2, v::iban(t, i - 2), out);
        }
        far
    }

    /// Custom patterns with an anchor literal: the regex runs on a bounded window at each hit.
    fn scan_anchors(&self, text: &str, out: &mut Vec<Finding>) {
        let d = &*self.det;
        let t = text.as_bytes();
        if let Some(ac) = &d.anchor_ac {
            for m in ac.find_iter(t) {
                let s = m.start();
                // anchors are numbered in the order of the anchored patterns (a short list: no
                // per-scan index vector, so a scan allocates nothing beyond `out`)
                let Some(cr) = d
                    .custom
                    .iter()
                    .filter(|c| c.anchored)
                    .nth(m.pattern().as_usize())
                else {
                    continue;
                };
                let mut lim = (s + cr.max_len_bytes).min(t.len());
                while !text.is_char_boundary(lim) {
                    lim -= 1;
                }
                if let Some(mm) = text
                    .get(s..lim)
                    .and_then(|w| cr.regex.find(w))
                    .filter(|mm| mm.end() > 0)
                {
                    out.push(Finding {
                        entity: cr.entity,
                        start: s,
                        end: s + mm.end(),
                        confidence: cr.confidence,
                    });
                }
            }
        }
    }

    /// Context scoring of one finding when its words can change the outcome. The cheap test is
    /// inlined into the caller's loop (most findings need no window).
    #[inline]
    fn apply_context(&self, t: &[u8], f: &mut Finding) {
        let d = &*self.det;
        let Some(ctx) = &d.ctx_words_trie else { return };
        let numeric = matches!(
            f.entity,
            Entity::Ssn
                | Entity::CreditCard
                | Entity::Phone
                | Entity::IpAddress
                | Entity::Iban
                | Entity::Custom(_)
        );
        if !numeric {
            return;
        }
        let now = reaches(f.confidence, d.threshold);
        let could_drop = now && !reaches(f.confidence - d.penalty, d.threshold);
        let could_rise = !now && reaches(f.confidence + d.boost, d.threshold);
        if !could_drop && !could_rise {
            return;
        }
        self.score_window(t, ctx, f);
    }

    /// Adds `boost` for a positive word of `f`'s entity and subtracts `penalty` for a negative
    /// word within `window_bytes` of `f` (whole words, not inside `f`).
    #[inline(never)]
    fn score_window(&self, t: &[u8], ctx: &CtxWords, f: &mut Finding) {
        let d = &*self.det;
        let ws = f.start.saturating_sub(d.window_bytes);
        let we = (f.end + d.window_bytes).min(t.len());
        let (mut pos, mut neg) = (false, false);
        let entity_bit = 1u64.checked_shl(slot(f.entity) as u32).unwrap_or(0);
        // every whole-word occurrence inside the window (see `CtxWords`)
        ctx.window(t, ws, we, |m| {
            if m.start < f.end && m.end > f.start {
                return true; // inside the match itself
            }
            let Some(meaning) = d.ctx_meanings.get(m.pid) else {
                return true;
            };
            pos |= meaning.positive & entity_bit != 0;
            neg |= meaning.negative;
            if meaning.positive_high {
                for w in d.ctx_words.get(m.pid).map_or(&[][..], |v| &v[..]) {
                    pos |= w.positive && w.entity == Some(f.entity);
                }
            }
            !(pos && neg) // once both are seen nothing further can change the score
        });
        if pos {
            f.confidence += d.boost;
        }
        if neg {
            f.confidence -= d.penalty;
        }
        f.confidence = f.confidence.clamp(0.0, 1.0);
    }

    /// Append the replacement for `value` (the matched text of `entity`) under `action` to `out`.
    /// `Block` and `Redact` produce `[REDACTED:TAG]`; `Log` reproduces the value.
    pub fn replacement(&self, entity: Entity, action: Action, value: &str, out: &mut String) {
        match action {
            Action::Log => out.push_str(value),
            Action::Redact | Action::Block => {
                out.push_str("[REDACTED:");
                out.push_str(self.entity_name(entity));
                out.push(']');
            }
            Action::Mask => {
                let n = value.chars().count();
                for (k, ch) in value.chars().enumerate() {
                    out.push(if k + 4 >= n { ch } else { '*' });
                }
            }
            Action::Hash => {
                let tag = self.entity_name(entity);
                out.push('[');
                out.push_str(tag);
                out.push(':');
                match &self.hash_key {
                    Some(k) => {
                        let mut mac = k.0.clone();
                        mac.update(tag.as_bytes());
                        mac.update(&[0]);
                        normalize_into(entity, value, &mut mac);
                        let tagb = mac.finalize().into_bytes();
                        const HEX: &[u8; 16] = b"0123456789abcdef";
                        for b in tagb.iter().take(4) {
                            out.push(char::from(HEX[usize::from(b >> 4)]));
                            out.push(char::from(HEX[usize::from(b & 15)]));
                        }
                    }
                    None => out.push_str("nokey"),
                }
                out.push(']');
            }
        }
    }

    /// Rewrite `text` applying the actions of `findings` into `out` (cleared first).
    /// `Block` is rendered as redaction (for responses/streams). Returns whether anything changed.
    pub fn apply(&self, text: &str, findings: &[Finding], out: &mut String) -> bool {
        out.clear();
        let mut last = 0;
        let mut changed = false;
        for f in findings {
            let a = self.action_for(f.entity);
            if !a.rewrites() || self.dry_run || f.start < last || f.end > text.len() {
                continue;
            }
            let (Some(pre), Some(val)) = (text.get(last..f.start), text.get(f.start..f.end)) else {
                continue;
            };
            out.push_str(pre);
            self.replacement(f.entity, a, val, out);
            last = f.end;
            changed = true;
        }
        out.push_str(text.get(last..).unwrap_or(""));
        changed
    }

    /// Convenience: scan and rewrite a plain text. Returns `(rewritten, findings)`.
    pub fn redact_text(&self, text: &str) -> (String, Vec<Finding>) {
        let mut f = Vec::new();
        self.scan(text, &mut f);
        let mut out = String::with_capacity(text.len());
        self.apply(text, &f, &mut out);
        (out, f)
    }
}

/// Secret-prefix findings (`AKIA`, `sk-`, `ghp_`, PEM, JWT ...) in start order, pulled lazily so
/// [`Engine::scan_numeric`] can merge them into its own (start-ordered) candidates.
/// Overlapping prefix hits inside an accepted secret are skipped (`claimed`).
struct Literals<'a> {
    iter: Option<aho_corasick::FindIter<'a, 'a>>,
    lits: &'a [Lit],
    t: &'a [u8],
    claimed: usize,
    /// The next validated finding, not yet emitted.
    next: Option<Finding>,
}

impl Literals<'_> {
    /// Emit every secret starting at or before `pos` into `out` (kept sorted).
    #[inline]
    fn flush(&mut self, pos: usize, out: &mut Vec<Finding>) {
        // common case at a numeric event: the next secret is already known and lies ahead
        if self.next.is_some_and(|f| f.start > pos) {
            return;
        }
        self.flush_slow(pos, out);
    }

    #[inline(never)]
    fn flush_slow(&mut self, pos: usize, out: &mut Vec<Finding>) {
        loop {
            if self.next.is_none() {
                if self.iter.is_none() {
                    return;
                }
                self.next = self.pull();
            }
            match self.next {
                Some(f) if f.start <= pos => {
                    push_sorted(out, f);
                    self.next = None;
                }
                _ => return,
            }
        }
    }

    fn pull(&mut self) -> Option<Finding> {
        let t = self.t;
        for m in self.iter.as_mut()? {
            let s = m.start();
            if s < self.claimed {
                continue;
            }
            let (entity, r) = match self.lits.get(m.pattern().as_usize()) {
                Some(Lit::Aws) => (Entity::AwsKey, v::aws_key(t, s)),
                Some(Lit::Sk) => (Entity::ApiKey, v::sk_key(t, s)),
                Some(Lit::Github) => (Entity::GithubToken, v::github(t, s, 4)),
                Some(Lit::GithubPat) => (Entity::GithubToken, v::github(t, s, 11)),
                Some(Lit::Pem) => (Entity::PrivateKey, v::pem(t, s)),
                Some(Lit::Jwt) => (Entity::Jwt, v::jwt(t, s)),
                None => continue,
            };
            if let Some((e, c)) = r {
                self.claimed = e;
                return Some(Finding {
                    entity,
                    start: s,
                    end: e,
                    confidence: c,
                });
            }
        }
        self.iter = None; // exhausted: later flushes return at once
        None
    }
}

/// Slack for comparing a confidence with the threshold. Confidences are sums of a few decimal
/// constants (`0.9 - 0.4`) that `f32` cannot hold exactly: `0.9 - 0.4` is `0.49999997`, so
/// without it a dashed SSN or a formatted phone number beside a negative word fell under the
/// default threshold of 0.5 that the documented arithmetic says it reaches.
const CONF_SLACK: f32 = 1e-4;

/// Whether `confidence` reaches `threshold` (see [`CONF_SLACK`]).
#[inline]
fn reaches(confidence: f32, threshold: f32) -> bool {
    confidence + CONF_SLACK >= threshold
}

/// Append `f` keeping `out` sorted by (start, longest first); equal keys keep push order, so the
/// result equals a stable sort of the pushes. Candidates arrive nearly in order (a validator may
/// start a few bytes, an email up to its local part, before the event that found it), so the
/// backward shift is bounded by the candidates in that span.
#[inline]
fn push_sorted(out: &mut Vec<Finding>, f: Finding) {
    out.push(f);
    let mut k = out.len() - 1;
    while k > 0
        && (out[k - 1].start, std::cmp::Reverse(out[k - 1].end))
            > (f.start, std::cmp::Reverse(f.end))
    {
        out.swap(k - 1, k);
        k -= 1;
    }
}

/// SWAR test of 8 bytes (little-endian word) for the bytes `scan_numeric` stops at: ASCII digits,
/// `:` (0x30..=0x3a) and `@` (0x40). Returns a word whose byte `k` has its high bit set exactly
/// when byte `k` is one of them. Every sum stays within its byte (operands are masked to 7 bits),
/// so no carry crosses into a neighbour and the per-byte answer is exact.
#[inline]
fn interesting_mask(x: u64) -> u64 {
    const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HI: u64 = 0x8080_8080_8080_8080;
    const fn splat(b: u8) -> u64 {
        0x0101_0101_0101_0101 * b as u64
    }
    let ascii = !x & HI;
    let y = x & LO7;
    let ge_0 = y + splat(0x80 - b'0');
    let ge_past_colon = y + splat(0x80 - (b':' + 1));
    let in_range = ge_0 & !ge_past_colon;
    let z = y ^ splat(b'@');
    let is_at = !((z + LO7) | z);
    (in_range | is_at) & ascii
}

/// Overlap resolution. Secrets (keys, tokens, PEM, JWT) win over anything they overlap (a token
/// in `https://ghp_...@github.com` is a token, not an email); among the rest, earliest start then
/// longest wins. Linear after sorting, in place (no allocation).
///
/// Rules (one pass over the list sorted by start, longest first): a secret is kept when it starts
/// at or after the end of the last kept secret; a non-secret is dropped when it overlaps a kept
/// secret, and otherwise kept when it starts at or after the end of the last kept non-secret.
/// Kept secrets never overlap each other, so a non-secret can only overlap the last kept secret
/// before it or the first kept secret after it; `ahead` finds the latter, only reading entries
/// past the cursor, which the compaction has not overwritten yet.
fn resolve_overlaps(out: &mut Vec<Finding>) {
    let is_secret = |f: &Finding| {
        matches!(
            f.entity,
            Entity::AwsKey
                | Entity::ApiKey
                | Entity::GithubToken
                | Entity::PrivateKey
                | Entity::Jwt
        )
    };
    let ordered = out.windows(2).all(|w| {
        (w[0].start, std::cmp::Reverse(w[0].end)) <= (w[1].start, std::cmp::Reverse(w[1].end))
    });
    if !ordered {
        // stable sort: the candidate list is a few concatenated, nearly sorted runs (numeric pass,
        // literal pass), which the run-detecting merge sort handles in near-linear time
        out.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    }
    let n = out.len();
    let (mut secret_end, mut other_end) = (0usize, 0usize);
    // index of the first kept secret after the cursor (valid while `ahead > r`)
    let mut ahead = 0usize;
    let mut w = 0usize;
    for r in 0..n {
        let f = out[r];
        let keep = if is_secret(&f) {
            f.start >= secret_end
        } else if f.start < secret_end || f.start < other_end {
            false
        } else {
            if ahead <= r {
                ahead = r + 1;
                while ahead < n && !(is_secret(&out[ahead]) && out[ahead].start >= secret_end) {
                    ahead += 1;
                }
            }
            ahead >= n || out[ahead].start >= f.end
        };
        if keep {
            if is_secret(&f) {
                secret_end = f.end;
            } else {
                other_end = f.end;
            }
            out[w] = f;
            w += 1;
        }
    }
    out.truncate(w);
}

/// Normalise a value before hashing so formatting variants pseudonymise identically
/// (`123-45-6789` == `123 45 6789`, emails case-folded).
fn normalize_into(entity: Entity, value: &str, mac: &mut Hmac<Sha256>) {
    match entity {
        Entity::Ssn | Entity::CreditCard | Entity::Phone | Entity::Iban => {
            for b in value.bytes().filter(u8::is_ascii_alphanumeric) {
                mac.update(&[b.to_ascii_uppercase()]);
            }
        }
        Entity::Email => {
            for b in value.bytes() {
                mac.update(&[b.to_ascii_lowercase()]);
            }
        }
        _ => mac.update(value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eng() -> Engine {
        Engine::new(&PiiConfig::default()).expect("engine")
    }

    fn tags(e: &Engine, s: &str) -> Vec<(String, String)> {
        let mut f = Vec::new();
        e.scan(s, &mut f);
        f.iter()
            .map(|x| {
                (
                    e.entity_name(x.entity).to_string(),
                    s[x.start..x.end].to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn unanchored_custom_pattern_and_config_errors() {
        let cfg: PiiConfig = serde_json::from_str(
            r#"{"custom_patterns":[{"name":"TICKET","pattern":"\\bT[0-9]{5}\\b","unanchored_ok":true}],
                "actions":{"TICKET":"log"}}"#,
        )
        .expect("cfg");
        let e = Engine::new(&cfg).expect("engine");
        let got = tags(&e, "see T12345 and XT12345");
        assert_eq!(got, [("TICKET".to_string(), "T12345".to_string())]);
        assert_eq!(
            e.redact_text("see T12345").0,
            "see T12345",
            "log never rewrites"
        );
        for bad in [
            r#"{"entities":["NOPE"]}"#,
            r#"{"actions":{"NOPE":"redact"}}"#,
            r#"{"custom_patterns":[{"name":"lower","pattern":"x","anchor":"x"}]}"#,
            r#"{"custom_patterns":[{"name":"X","pattern":"(","anchor":"("}]}"#,
            r#"{"custom_patterns":[{"name":"X","pattern":"ab","anchor":"zz"}]}"#,
            r#"{"dictionaries":[{"name":"D","terms":[" "]}]}"#,
            r#"{"hash_key":{"env":"A","file":"B"}}"#,
        ] {
            let cfg: PiiConfig = serde_json::from_str(bad).expect("parses");
            assert!(Engine::new(&cfg).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<PiiConfig>(r#"{"dryrun":true}"#).is_err());
        assert!(eng()
            .with_actions(&[("NOPE".to_string(), Action::Log)].into_iter().collect())
            .is_err());
        let only_ssn: PiiConfig = serde_json::from_str(r#"{"entities":["SSN"]}"#).expect("cfg");
        let e = Engine::new(&only_ssn).expect("engine");
        assert_eq!(tags(&e, "123-45-6789 a@example.com").len(), 1);
        let off: PiiConfig = serde_json::from_str(r#"{"enabled":false}"#).expect("cfg");
        assert!(tags(&Engine::new(&off).expect("engine"), "123-45-6789").is_empty());
    }

    #[test]
    fn interesting_mask_is_exact_per_byte() {
        let scalar = |b: u8| b.is_ascii_digit() || b == b':' || b == b'@';
        for b in 0..=255u8 {
            for k in 0..8 {
                // the byte under test at lane k, every other lane a neighbour that is or is not
                // interesting, so a carry or borrow across lanes would show
                for fill in [b'a', b'0', 0xff, 0x3f, 0x41, 0x7f, 0x80, 0x2f, 0x3b] {
                    let mut w = [fill; 8];
                    w[k] = b;
                    let m = interesting_mask(u64::from_le_bytes(w));
                    for (j, &x) in w.iter().enumerate() {
                        assert_eq!(m >> (8 * j + 7) & 1 == 1, scalar(x), "{w:?} lane {j}");
                    }
                    assert_eq!(m & !0x8080_8080_8080_8080, 0);
                }
            }
        }
    }

    #[test]
    fn engine_is_send_sync() {
        fn ok<T: Send + Sync>() {}
        ok::<Engine>();
    }

    #[test]
    fn finds_mixed_entities() {
        let e = eng();
        let got = tags(&e, "SSN 123-45-6789, card 4111 1111 1111 1111, mail a.b@example.com, call (212) 555-0142, ip 10.1.2.3, key AKIAIOSFODNN7EXAMPLE");
        let names: Vec<&str> = got.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "SSN",
                "CREDIT_CARD",
                "EMAIL",
                "PHONE",
                "IP_ADDRESS",
                "AWS_KEY"
            ],
            "{got:?}"
        );
    }

    #[test]
    fn bare_nine_digits_need_context() {
        let e = eng();
        assert!(tags(&e, "invoice 123456789 paid").is_empty());
        assert!(tags(&e, "the number 123456789 here").is_empty());
        assert_eq!(tags(&e, "my ssn is 123456789").len(), 1);
        assert!(tags(&e, "order 4111111111111111").is_empty());
        assert!(tags(&e, "version 1.2.3.4").is_empty());
    }

    /// A confidence whose decimal arithmetic reaches the threshold is kept although `f32`
    /// rounds it just under (`0.9 - 0.4` is `0.49999997`): a dashed SSN or a formatted phone
    /// number beside a negative word stays a finding, as `docs/pii.md` computes.
    #[test]
    fn confidences_at_the_threshold_are_kept() {
        let e = eng();
        assert_eq!(tags(&e, "order 123-45-6789 shipped").len(), 1);
        assert_eq!(tags(&e, "ticket (212) 555-0142 closed").len(), 1);
        // one step further under stays dropped
        assert!(tags(&e, "order 123 45 6789 shipped").is_empty());
    }

    #[test]
    fn actions_render() {
        let mut cfg = PiiConfig::default();
        cfg.actions.insert("SSN".into(), Action::Mask);
        cfg.actions.insert("EMAIL".into(), Action::Hash);
        let e = Engine::with_hash_key(&cfg, b"0123456789abcdef0123").expect("engine");
        let (out, _) = e.redact_text("ssn 123-45-6789 mail A@Example.com card 4111111111111111");
        assert!(out.starts_with("ssn *******6789 mail [EMAIL:"), "{out}");
        assert!(out.ends_with("card [REDACTED:CREDIT_CARD]"), "{out}");
        let (o2, _) = e.redact_text("x a@example.com");
        let h = |s: &str| s[s.find("[EMAIL:").unwrap_or(0)..][..16].to_string();
        assert_eq!(h(&out), h(&o2));
        assert!(Engine::new(&cfg).is_err());
    }

    /// Context words of custom entities beyond the 64 slots of the per-word bit set (the
    /// `positive_high` path) boost only their own entity.
    #[test]
    fn context_words_of_high_custom_slots() {
        let patterns: Vec<String> = (0..60)
            .map(|i| {
                format!(
                    r#"{{"name":"C{i}","pattern":"K{i}X-[0-9]{{4}}","anchor":"K{i}X-","confidence":0.3}}"#
                )
            })
            .collect();
        let cfg: PiiConfig = serde_json::from_str(&format!(
            r#"{{"custom_patterns":[{}],
                "context":{{"positive":{{"C59":["zeta"],"C3":["eta"],"C58":["zeta"]}}}}}}"#,
            patterns.join(",")
        ))
        .expect("cfg");
        let e = Engine::new(&cfg).expect("engine");
        let found = |s: &str| tags(&e, s).into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        assert_eq!(found("zeta K59X-1234"), ["C59"]); // slot 70: list path
        assert_eq!(found("zeta K58X-1234"), ["C58"]);
        assert!(found("eta K59X-1234").is_empty());
        assert!(found("zeta K3X-1234").is_empty()); // slot 14: bit set path
        assert_eq!(found("eta K3X-1234"), ["C3"]);
        assert!(found("K59X-1234").is_empty());
    }

    #[test]
    fn custom_patterns_and_dictionaries() {
        let cfg: PiiConfig = serde_json::from_str(
            r#"{"custom_patterns":[{"name":"EMPLOYEE_ID","pattern":"EMP-[0-9]{6}","anchor":"EMP-"}],
                "dictionaries":[{"name":"CUSTOMER","terms":["Acme Corp","Globex"]}]}"#,
        )
        .expect("cfg");
        let e = Engine::new(&cfg).expect("engine");
        let got = tags(&e, "EMP-123456 works for ACME CORP, not globexx or Globex.");
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, "EMPLOYEE_ID");
        assert_eq!(got[2].1, "Globex");
        let bad: PiiConfig =
            serde_json::from_str(r#"{"custom_patterns":[{"name":"X","pattern":"[0-9]+"}]}"#)
                .expect("cfg");
        assert!(Engine::new(&bad).is_err());
        let per_route = e
            .with_actions(
                &[("CUSTOMER".to_string(), Action::Block)]
                    .into_iter()
                    .collect(),
            )
            .expect("override");
        assert_eq!(per_route.action_for(Entity::Custom(1)), Action::Block);
    }
}
