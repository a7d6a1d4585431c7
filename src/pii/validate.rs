//! Hand-written validators. Each reads a bounded number of bytes from a candidate start and
//! returns `Some((end, base_confidence))` when the bytes at `start..end` form a valid entity with
//! proper boundaries on both sides.
//!
//! Invariants: no regex, no backtracking, no allocation; every function touches at most a
//! constant number of bytes (the entity's maximum length plus 2 bytes of boundary context), except
//! the secret-run validators which read one run of token characters (callers only invoke them at
//! run starts, so total work stays linear). Never panics on any input: every index is checked.

use std::net::Ipv6Addr;

use super::entity::{
    EMAIL_BYTES_MAX, EMAIL_LOCAL_BYTES_MAX, IP_BYTES_MAX, PEM_BLOCK_BYTES_MAX,
    SECRET_PREFIX_BYTES_MAX,
};

/// Prefix length within which a secret run must show its evidence (digit+letter for `sk-`,
/// or sheer length).
pub const SECRET_EVIDENCE_BYTES: usize = SECRET_PREFIX_BYTES_MAX - 32;

/// Base confidences. Context adds `boost` / subtracts `penalty`; the default threshold is 0.5.
pub const CONF_SSN_DASHED: f32 = 0.9;
pub const CONF_SSN_SPACED: f32 = 0.7;
pub const CONF_SSN_BARE: f32 = 0.3;
pub const CONF_CARD_GROUPED: f32 = 0.95;
pub const CONF_CARD_BARE: f32 = 0.85;
pub const CONF_PHONE_INTL: f32 = 0.85;
pub const CONF_PHONE_FORMATTED: f32 = 0.9;
pub const CONF_PHONE_BARE: f32 = 0.3;
pub const CONF_IPV4: f32 = 0.65;
pub const CONF_IPV6: f32 = 0.85;
pub const CONF_STRONG: f32 = 0.95;

/// Byte classes, one table lookup instead of a chain of range compares on the hottest tests.
const CLASS_WORD: u8 = 1;
const CLASS_LOCAL: u8 = 2;
const CLASS_TOK: u8 = 4;
const CLASS_LABEL: u8 = 8;
const CLASS_UPPER_DIGIT: u8 = 16;

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let alnum = c.is_ascii_alphanumeric();
        let mut k = 0;
        if alnum || c == b'_' {
            k |= CLASS_WORD;
        }
        if alnum || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-') {
            k |= CLASS_LOCAL;
        }
        if alnum || c == b'_' || c == b'-' {
            k |= CLASS_TOK;
        }
        if alnum || c == b'-' {
            k |= CLASS_LABEL;
        }
        if c.is_ascii_uppercase() || c.is_ascii_digit() {
            k |= CLASS_UPPER_DIGIT;
        }
        t[b] = k;
        b += 1;
    }
    t
};

/// ASCII letter, digit or `_`.
#[inline]
pub fn is_word(b: u8) -> bool {
    CLASS[usize::from(b)] & CLASS_WORD != 0
}

#[inline]
fn at(t: &[u8], i: usize) -> u8 {
    t.get(i).copied().unwrap_or(0)
}

/// Left boundary for numeric entities: not glued to a word, and not the continuation of a dotted
/// or dashed number (`1.2.3.4.5`, `2024-123-45-6789`).
pub fn left_ok(t: &[u8], s: usize) -> bool {
    if s == 0 {
        return true;
    }
    let p = t[s - 1];
    if is_word(p) {
        return false;
    }
    if matches!(p, b'.' | b'-' | b'/' | b':') && s >= 2 && t[s - 2].is_ascii_digit() {
        return false;
    }
    true
}

/// Right boundary for numeric entities (mirror of [`left_ok`]).
pub fn right_ok(t: &[u8], e: usize) -> bool {
    if e >= t.len() {
        return true;
    }
    let n = t[e];
    if is_word(n) {
        return false;
    }
    if matches!(n, b'.' | b'-' | b'/' | b':') && at(t, e + 1).is_ascii_digit() {
        return false;
    }
    true
}

/// Length of the digit run at `s`, counted up to [`DIGIT_RUN_CAP`] (enough to tell every
/// numeric shape apart: the longest is a 19-digit card).
pub fn digit_run_len(t: &[u8], s: usize) -> usize {
    digit_run(t, s, DIGIT_RUN_CAP - 1)
}

/// Digit runs are counted up to this length by [`digit_run_len`].
pub const DIGIT_RUN_CAP: usize = 20;

fn digit_run(t: &[u8], s: usize, max: usize) -> usize {
    let mut e = s;
    while e < t.len() && e - s <= max && t[e].is_ascii_digit() {
        e += 1;
    }
    e - s
}

/// Up to `N` digit groups separated by single separators from `seps`.
struct Groups {
    /// (start, end) of each group.
    g: [(usize, usize); 8],
    n: usize,
    /// separator after group i.
    sep: [u8; 8],
}

fn groups(t: &[u8], s: usize, seps: &[u8], max_group: usize) -> Groups {
    let mut out = Groups {
        g: [(0, 0); 8],
        n: 0,
        sep: [0; 8],
    };
    let mut p = s;
    while out.n < 8 {
        let len = digit_run(t, p, max_group);
        if len == 0 || len > max_group {
            if len > max_group {
                // an over-long group ends the sequence and poisons it
                out.g[out.n] = (p, p + len);
                out.n += 1;
            }
            break;
        }
        out.g[out.n] = (p, p + len);
        out.n += 1;
        let e = p + len;
        let c = at(t, e);
        if seps.contains(&c) && at(t, e + 1).is_ascii_digit() {
            out.sep[out.n - 1] = c;
            p = e + 1;
        } else {
            break;
        }
    }
    out
}

fn num(t: &[u8], s: usize, e: usize) -> u32 {
    t[s..e].iter().fold(0u32, |a, &d| {
        a.saturating_mul(10).saturating_add(u32::from(d - b'0'))
    })
}

/// SSN area/group/serial rules.
pub fn ssn_parts_valid(area: u32, group: u32, serial: u32) -> bool {
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// US SSN at `s` (a digit-run start).
pub fn ssn(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !left_ok(t, s) {
        return None;
    }
    // fast path for the common `ddd<sep>dd<sep>dddd` shape: the same decision as the group split
    // below reaches for it (groups of 3, 2 and 4 digits, one separator kind, no fourth group
    // after the same separator), without the general split
    if let Some(&[a0, a1, a2, s1, b0, b1, s2, c0, c1, c2, c3]) = t.get(s..s + 11) {
        let d = |x: u8| u32::from(x.wrapping_sub(b'0'));
        let digits = [a0, a1, a2, b0, b1, c0, c1, c2, c3];
        if digits.iter().all(u8::is_ascii_digit)
            && matches!(s1, b'-' | b' ' | b'.')
            && s2 == s1
            && !at(t, s + 11).is_ascii_digit()
        {
            let e = s + 11;
            if at(t, e) == s1 && at(t, e + 1).is_ascii_digit() {
                return None; // 123-45-6789-12: part of a longer number
            }
            let area = d(a0) * 100 + d(a1) * 10 + d(a2);
            let group = d(b0) * 10 + d(b1);
            let serial = d(c0) * 1000 + d(c1) * 100 + d(c2) * 10 + d(c3);
            if ssn_parts_valid(area, group, serial) && right_ok(t, e) {
                let c = if s1 == b'-' {
                    CONF_SSN_DASHED
                } else {
                    CONF_SSN_SPACED
                };
                return Some((e, c));
            }
            return None;
        }
    }
    ssn_split(t, s)
}

/// [`ssn`] by the general group split (the reference its fast path is tested against); `s` has
/// passed [`left_ok`].
fn ssn_split(t: &[u8], s: usize) -> Option<(usize, f32)> {
    let g = groups(t, s, b"- .", 9);
    let lens = |i: usize| g.g[i].1 - g.g[i].0;
    if g.n >= 1 && lens(0) == 9 {
        let e = g.g[0].1;
        let (a, gr, se) = (num(t, s, s + 3), num(t, s + 3, s + 5), num(t, s + 5, e));
        if ssn_parts_valid(a, gr, se) && right_ok(t, e) && !(g.n > 1 && g.sep[0] != b' ') {
            return Some((e, CONF_SSN_BARE));
        }
        return None;
    }
    if g.n >= 3 && lens(0) == 3 && lens(1) == 2 && lens(2) == 4 && g.sep[0] == g.sep[1] {
        let e = g.g[2].1;
        if g.n > 3 && g.sep[2] == g.sep[1] {
            return None; // 123-45-6789-12: part of a longer number
        }
        let v = ssn_parts_valid(
            num(t, g.g[0].0, g.g[0].1),
            num(t, g.g[1].0, g.g[1].1),
            num(t, g.g[2].0, g.g[2].1),
        );
        if v && right_ok(t, e) {
            let c = if g.sep[0] == b'-' {
                CONF_SSN_DASHED
            } else {
                CONF_SSN_SPACED
            };
            return Some((e, c));
        }
    }
    None
}

/// Luhn checksum over the digits of `t[s..e]` (separators skipped).
pub fn luhn(t: &[u8], s: usize, e: usize) -> bool {
    let mut sum = 0u32;
    let mut dbl = false;
    for &b in t[s..e].iter().rev() {
        if !b.is_ascii_digit() {
            continue;
        }
        let mut d = u32::from(b - b'0');
        if dbl {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        dbl = !dbl;
    }
    matches!(sum % 10, 0)
}

/// Known issuer (IIN) range and length: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay.
pub fn card_brand_ok(digits: &[u8]) -> bool {
    let len = digits.len();
    let p = |n: usize| -> u32 {
        digits
            .iter()
            .take(n)
            .fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'))
    };
    // one fold: the shorter prefixes of a 6+ digit number are its leading digits
    let (p1, p2, p3, p4, p6) = if len >= 6 {
        let p6 = p(6);
        (p6 / 100_000, p6 / 10_000, p6 / 1_000, p6 / 100, p6)
    } else {
        (p(1), p(2), p(3), p(4), p(6))
    };
    // Visa
    (p1 == 4 && matches!(len, 13 | 16 | 19))
        // Mastercard
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16)
        // Amex
        || ((p2 == 34 || p2 == 37) && len == 15)
        // Discover
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6))
            && (16..=19).contains(&len))
        // JCB
        || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        // Diners Club
        || (((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len))
        // UnionPay
        || (p2 == 62 && (16..=19).contains(&len))
}

/// Credit card at `s` (a digit-run start): bare 13-19 digits, or consistent `4-4-4-4(-3)`,
/// `4-4-4-1..4`, `4-6-5` / `4-6-4` groups separated by one kind of space or dash.
pub fn card(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !left_ok(t, s) {
        return None;
    }
    // fast path for the common `dddd<sep>dddd<sep>dddd<sep>dddd` shape with no fifth group: the
    // group loop below then tries exactly this 16-digit card and nothing else
    if let Some(&[a0, a1, a2, a3, s1, b0, b1, b2, b3, s2, c0, c1, c2, c3, s3, d0, d1, d2, d3]) =
        t.get(s..s + 19)
    {
        let d = [
            a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3,
        ];
        let e = s + 19;
        if matches!(s1, b' ' | b'-')
            && s2 == s1
            && s3 == s1
            && d.iter().all(u8::is_ascii_digit)
            && !at(t, e).is_ascii_digit()
            && !(matches!(at(t, e), b' ' | b'-') && at(t, e + 1).is_ascii_digit())
        {
            let ok = right_ok(t, e) && luhn_digits(&d) && card_brand_ok(&d);
            return ok.then_some((e, CONF_CARD_GROUPED));
        }
    }
    card_split(t, s)
}

/// [`card`] by the general group split (the reference its fast path is tested against); `s` has
/// passed [`left_ok`].
fn card_split(t: &[u8], s: usize) -> Option<(usize, f32)> {
    let g = groups(t, s, b" -", 19);
    let lens: [usize; 8] = std::array::from_fn(|i| g.g[i].1.saturating_sub(g.g[i].0));
    let mut best = None;
    // bare
    if (13..=19).contains(&lens[0]) {
        let e = g.g[0].1;
        if right_ok(t, e) && card_digits_ok(t, s, e) {
            best = Some((e, CONF_CARD_BARE));
        }
        return best;
    }
    if lens[0] != 4 || g.n < 2 {
        return None;
    }
    // grouped: try the longest prefix of groups first
    for k in (2..=g.n.min(5)).rev() {
        if g.sep[..k - 1].iter().any(|&c| c != g.sep[0]) {
            continue;
        }
        let l = &lens[..k];
        let total: usize = l.iter().sum();
        if !(13..=19).contains(&total) {
            continue;
        }
        let shape_ok = (l[..k - 1].iter().all(|&x| x == 4) && (1..=4).contains(&l[k - 1]))
            || (k == 3 && l[1] == 6 && (l[2] == 5 || l[2] == 4));
        if !shape_ok {
            continue;
        }
        let e = g.g[k - 1].1;
        if k < g.n && g.sep[k - 1] == g.sep[0] {
            continue; // more groups follow with the same separator: a longer number
        }
        if right_ok(t, e) && card_digits_ok(t, s, e) {
            return Some((e, CONF_CARD_GROUPED));
        }
    }
    best
}

fn card_digits_ok(t: &[u8], s: usize, e: usize) -> bool {
    let mut d = [0u8; 19];
    let mut n = 0;
    for &b in &t[s..e] {
        if b.is_ascii_digit() {
            if n == 19 {
                return false;
            }
            d[n] = b;
            n += 1;
        }
    }
    (13..=19).contains(&n) && luhn_digits(&d[..n]) && card_brand_ok(&d[..n])
}

/// [`luhn`] over already collected ASCII digits (the same digits [`luhn`] reads between the
/// separators), with the doubled-digit sums from a table.
fn luhn_digits(d: &[u8]) -> bool {
    const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    let mut sum = 0u32;
    for (k, &b) in d.iter().rev().enumerate() {
        let x = usize::from(b.wrapping_sub(b'0')).min(9);
        sum += if k & 1 == 1 { DOUBLED[x] } else { x as u32 };
    }
    sum.is_multiple_of(10)
}

/// NANP area code NXX: N in 2-9, not N11, middle digit not 9, not 37X/96X (reserved).
pub fn nanp_area_ok(a: &[u8]) -> bool {
    a.len() == 3
        && (b'2'..=b'9').contains(&a[0])
        && a[1] != b'9'
        && !(a[1] == b'1' && a[2] == b'1')
        && !(a[0] == b'3' && a[1] == b'7')
        && !(a[0] == b'9' && a[1] == b'6')
}

/// NANP exchange NXX: N in 2-9, not N11.
pub fn nanp_exchange_ok(x: &[u8]) -> bool {
    x.len() == 3 && (b'2'..=b'9').contains(&x[0]) && !(x[1] == b'1' && x[2] == b'1')
}

/// NANP phone starting at `s` (`+1`, `1-`, `(` or the area code).
pub fn nanp(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !left_ok(t, s) {
        return None;
    }
    let mut p = s;
    let mut intl = false;
    if at(t, p) == b'+' {
        if at(t, p + 1) != b'1' {
            return None;
        }
        intl = true;
        p += 2;
        if matches!(at(t, p), b' ' | b'-' | b'.') {
            p += 1;
        }
    } else if at(t, p) == b'1' && matches!(at(t, p + 1), b' ' | b'-' | b'.') {
        p += 2;
        intl = true;
    }
    let area_start;
    let mut sep: Option<u8> = None;
    let paren = at(t, p) == b'(';
    if paren {
        area_start = p + 1;
        if digit_run(t, area_start, 3) != 3 || at(t, area_start + 3) != b')' {
            return None;
        }
        p = area_start + 4;
        if matches!(at(t, p), b' ' | b'-') {
            p += 1;
        }
    } else {
        area_start = p;
        let n = digit_run(t, p, 10);
        if n == 10 {
            // bare 10 digits
            let e = p + 10;
            let ok = nanp_area_ok(&t[p..p + 3]) && nanp_exchange_ok(&t[p + 3..p + 6]);
            if ok && right_ok(t, e) {
                return Some((
                    e,
                    if intl {
                        CONF_PHONE_INTL
                    } else {
                        CONF_PHONE_BARE
                    },
                ));
            }
            return None;
        }
        if n != 3 {
            return None;
        }
        p += 3;
        let c = at(t, p);
        if !matches!(c, b' ' | b'-' | b'.') {
            return None;
        }
        sep = Some(c);
        p += 1;
    }
    if !nanp_area_ok(&t[area_start..area_start + 3]) {
        return None;
    }
    if digit_run(t, p, 3) != 3 || !nanp_exchange_ok(&t[p..p + 3]) {
        return None;
    }
    p += 3;
    let c = at(t, p);
    if !matches!(c, b' ' | b'-' | b'.') || sep.is_some_and(|s0| s0 != c) {
        return None;
    }
    p += 1;
    if digit_run(t, p, 4) != 4 {
        return None;
    }
    let e = p + 4;
    if !right_ok(t, e) {
        return None;
    }
    let conf = if intl {
        CONF_PHONE_INTL
    } else if paren || c != b' ' {
        CONF_PHONE_FORMATTED
    } else {
        CONF_PHONE_FORMATTED - 0.1
    };
    Some((e, conf))
}

/// ITU-T E.164 country calling code check for the leading digits of an international number.
/// Returns the code length when the prefix is an assigned (or plausibly assigned) code.
pub fn country_code_len(d: &[u8]) -> Option<usize> {
    let v = |n: usize| -> Option<u32> {
        if d.len() < n {
            return None;
        }
        Some(d[..n].iter().fold(0, |a, &x| a * 10 + u32::from(x - b'0')))
    };
    let one = v(1)?;
    if one == 1 || one == 7 {
        return Some(1);
    }
    let two = v(2)?;
    const TWO: &[u32] = &[
        20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55,
        56, 57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
    ];
    if TWO.contains(&two) {
        return Some(2);
    }
    // three-digit codes live in these two-digit blocks
    const THREE_BLOCKS: &[u32] = &[
        21, 22, 23, 24, 25, 26, 29, 35, 37, 38, 42, 50, 59, 67, 68, 69, 85, 87, 88, 96, 97, 99,
    ];
    if THREE_BLOCKS.contains(&two) && d.len() >= 3 {
        return Some(3);
    }
    None
}

/// International `+CC ...` number (E.164: 8-15 digits) starting at the `+` at `s`.
pub fn e164(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if at(t, s) != b'+' || !left_ok(t, s) || !(b'1'..=b'9').contains(&at(t, s + 1)) {
        return None;
    }
    let mut digits = [0u8; 16];
    let mut nd = 0usize;
    let mut p = s + 1;
    let mut e = p;
    let mut seps = 0;
    while p < t.len() && p - s <= 26 {
        let c = t[p];
        if c.is_ascii_digit() {
            if nd == 16 {
                return None;
            }
            digits[nd] = c;
            nd += 1;
            p += 1;
            e = p;
        } else if matches!(c, b' ' | b'-' | b'.')
            && (at(t, p + 1).is_ascii_digit() || at(t, p + 1) == b'(')
            && p > s + 1
        {
            seps += 1;
            p += 1;
        } else if c == b'(' && at(t, p + 1).is_ascii_digit() {
            // "(0)" trunk prefix or "(20)" area code
            let n = digit_run(t, p + 1, 5);
            if at(t, p + 1 + n) != b')' {
                break;
            }
            p += 1;
            seps += 1;
        } else if c == b')' && p > s + 1 && t[p - 1].is_ascii_digit() {
            p += 1;
            if matches!(at(t, p), b' ' | b'-') {
                p += 1;
            }
        } else {
            break;
        }
    }
    if !(8..=15).contains(&nd) || seps > 6 || !right_ok(t, e) {
        return None;
    }
    let cc = country_code_len(&digits[..nd])?;
    if cc == 1 && digits[0] == b'1' {
        return None; // NANP numbers are validated by `nanp`
    }
    Some((e, CONF_PHONE_INTL))
}

/// IBAN lengths per country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// [`IBAN_LENGTHS`] indexed by `(c0 - 'A') * 26 + (c1 - 'A')`; 0 = no such country.
static IBAN_LEN_BY_CC: [u8; 26 * 26] = {
    let mut a = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let (c, l) = IBAN_LENGTHS[i];
        a[(c[0] - b'A') as usize * 26 + (c[1] - b'A') as usize] = l as u8;
        i += 1;
    }
    a
};

/// IBAN length per country (ISO 13616 registry).
pub fn iban_len(cc: &[u8]) -> Option<usize> {
    let [c0, c1] = cc else { return None };
    if !c0.is_ascii_uppercase() || !c1.is_ascii_uppercase() {
        return None;
    }
    let l = IBAN_LEN_BY_CC[usize::from(c0 - b'A') * 26 + usize::from(c1 - b'A')];
    (l != 0).then_some(usize::from(l))
}

/// IBAN starting at `s` (the country letters): compact or in groups of 4 separated by single
/// spaces; length per country table; ISO 7064 mod-97 check.
pub fn iban(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if s > 0 && is_word(t[s - 1]) {
        return None;
    }
    let cc = t.get(s..s + 2)?;
    if !cc.iter().all(u8::is_ascii_uppercase)
        || !t.get(s + 2..s + 4)?.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let len = iban_len(cc)?;
    // ISO 7064 mod 97 over the rearranged string (characters 5.. then the first four), folded in
    // while reading, one group of (up to) four characters at a time; reducing once per group
    // keeps the accumulator below 97 * 100^4
    let fold = |r: u64, c: u8| -> Option<u64> {
        match c {
            b'0'..=b'9' => Some(r * 10 + u64::from(c - b'0')),
            b'A'..=b'Z' => Some(r * 100 + u64::from(c - b'A') + 10),
            _ => None,
        }
    };
    // the first four (country letters, check digits) were validated above; every later group
    // is preceded by one space or none, as decided after the first group
    let spaced = at(t, s + 4) == b' ';
    let mut r: u64 = 0;
    let mut n = 4;
    let mut p = s + 4;
    while n < len {
        if (at(t, p) == b' ') != spaced {
            return None;
        }
        if spaced {
            p += 1;
        }
        let k = (len - n).min(4);
        r %= 97;
        for &c in t.get(p..p + k)? {
            r = fold(r, c)?;
        }
        n += k;
        p += k;
    }
    if p < t.len() && is_word(t[p]) {
        return None;
    }
    r %= 97;
    for &c in t.get(s..s + 4)? {
        r = fold(r, c)?;
    }
    (r % 97 == 1).then_some((p, CONF_STRONG))
}

/// Dotted-quad IPv4 at `s`: four octets 0-255 without leading zeros.
pub fn ipv4(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !left_ok(t, s) {
        return None;
    }
    let mut p = s;
    for i in 0..4 {
        // the octet's digits (a fourth digit already rejects it) and value, in one read
        let (mut n, mut v) = (0usize, 0u32);
        while n < 4 {
            let c = at(t, p + n);
            if !c.is_ascii_digit() {
                break;
            }
            v = v * 10 + u32::from(c - b'0');
            n += 1;
        }
        if n == 0 || n > 3 || (n > 1 && t[p] == b'0') || v > 255 {
            return None;
        }
        p += n;
        if i < 3 {
            if at(t, p) != b'.' {
                return None;
            }
            p += 1;
        }
    }
    // a `:port` suffix is fine for an address, unlike for other numbers
    let port = at(t, p) == b':' && !at(t, p + 1).is_ascii_hexdigit()
        || at(t, p) == b':' && at(t, p + 1).is_ascii_digit();
    (right_ok(t, p) || port).then_some((p, CONF_IPV4))
}

fn is_v6(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// IPv6 around the `:` at `colon`; returns `(start, end, confidence)`.
/// Requires a full parse (`std::net::Ipv6Addr`) and at least three non-empty groups, so times
/// (`12:30:45`), MAC addresses and `a::b` paths do not match.
pub fn ipv6(t: &[u8], colon: usize) -> Option<(usize, usize, f32)> {
    let mut s = colon;
    while s > 0 && colon - s < IP_BYTES_MAX && (t[s - 1].is_ascii_hexdigit() || t[s - 1] == b':') {
        s -= 1;
    }
    if s > 0 && (is_word(t[s - 1]) || t[s - 1] == b'.') {
        return None;
    }
    let mut e = colon;
    while e < t.len() && e - s < IP_BYTES_MAX && is_v6(t[e]) {
        e += 1;
    }
    if e < t.len() && (is_word(t[e]) || is_v6(t[e])) {
        return None;
    }
    // trailing punctuation: "addr 2001:db8::1." or "fe80::1:"
    while e > colon && t[e - 1] == b'.' {
        e -= 1;
    }
    if e >= 2 && t[e - 1] == b':' && t[e - 2] != b':' {
        e -= 1;
    }
    let txt = std::str::from_utf8(&t[s..e]).ok()?;
    if txt.parse::<Ipv6Addr>().is_err() {
        return None;
    }
    let groups = txt.split(':').filter(|g| !g.is_empty()).count();
    if groups < 3 {
        return None;
    }
    Some((s, e, CONF_IPV6))
}

/// ASCII letter, digit or `-` (a domain label byte).
#[inline]
fn is_label(b: u8) -> bool {
    CLASS[usize::from(b)] & CLASS_LABEL != 0
}

#[inline]
fn is_local(b: u8) -> bool {
    CLASS[usize::from(b)] & CLASS_LOCAL != 0
}

/// Email around the `@` at `at_pos`; returns `(start, end, confidence)`.
pub fn email(t: &[u8], at_pos: usize) -> Option<(usize, usize, f32)> {
    let mut s = at_pos;
    while s > 0 && is_local(t[s - 1]) {
        s -= 1;
        if at_pos - s > EMAIL_LOCAL_BYTES_MAX {
            return None;
        }
    }
    while s < at_pos && !t[s].is_ascii_alphanumeric() {
        s += 1; // local part starts with an alphanumeric (drops a leading "." or "-")
    }
    if s == at_pos || t[at_pos - 1] == b'.' {
        return None;
    }
    // domain labels
    let mut p = at_pos + 1;
    let mut labels = 0;
    let mut last_label = (p, p);
    let mut end = p;
    loop {
        let ls = p;
        while p < t.len() && is_label(t[p]) && p - at_pos < EMAIL_BYTES_MAX {
            p += 1;
        }
        if p == ls || t[ls] == b'-' || t[p - 1] == b'-' {
            break;
        }
        labels += 1;
        last_label = (ls, p);
        end = p;
        if at(t, p) == b'.' && at(t, p + 1).is_ascii_alphanumeric() {
            p += 1;
        } else {
            break;
        }
    }
    if labels < 2 || end - s > EMAIL_BYTES_MAX {
        return None;
    }
    let tld = &t[last_label.0..last_label.1];
    if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    // asset names like `icon@2x.png`: every extension has at most four letters, so one packed
    // lower-case word per extension (the TLD is alphabetic: no zero byte, lengths stay distinct)
    const fn pack(x: &[u8]) -> u32 {
        let mut k = 0u32;
        let mut i = 0;
        while i < x.len() {
            k |= (x[i] as u32) << (8 * i);
            i += 1;
        }
        k
    }
    const FILE_EXTS: [u32; 11] = [
        pack(b"png"),
        pack(b"jpg"),
        pack(b"jpeg"),
        pack(b"gif"),
        pack(b"svg"),
        pack(b"webp"),
        pack(b"bmp"),
        pack(b"ico"),
        pack(b"css"),
        pack(b"js"),
        pack(b"json"),
    ];
    if tld.len() <= 4 {
        let key = tld.iter().enumerate().fold(0u32, |k, (i, c)| {
            k | u32::from(c.to_ascii_lowercase()) << (8 * i)
        });
        if FILE_EXTS.contains(&key) {
            return None;
        }
    }
    if end < t.len() && (is_word(t[end]) || t[end] == b'@') {
        return None;
    }
    Some((s, end, CONF_STRONG))
}

#[inline]
fn is_tok(b: u8) -> bool {
    CLASS[usize::from(b)] & CLASS_TOK != 0
}

fn tok_left_ok(t: &[u8], s: usize) -> bool {
    s == 0 || !is_tok(t[s - 1])
}

fn run(t: &[u8], s: usize, f: impl Fn(u8) -> bool) -> usize {
    let mut e = s;
    while e < t.len() && f(t[e]) {
        e += 1;
    }
    e
}

/// AWS access key id `AKIA`/`ASIA` + 16 upper-case alphanumerics.
pub fn aws_key(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if s > 0 && is_word(t[s - 1]) {
        return None;
    }
    let e = s + 20;
    let body = t.get(s + 4..e)?;
    if !body
        .iter()
        .all(|&b| CLASS[usize::from(b)] & CLASS_UPPER_DIGIT != 0)
    {
        return None;
    }
    if e < t.len() && is_word(t[e]) {
        return None;
    }
    Some((e, CONF_STRONG))
}

/// OpenAI / Anthropic style `sk-...` key: `sk-` then >= 20 token characters, with a digit and a
/// letter within the first [`SECRET_EVIDENCE_BYTES`] (covers `sk-proj-`, `sk-svcacct-`,
/// `sk-ant-api03-`), or any token run of at least that length. The evidence is decidable within a
/// bounded prefix, which the streaming hold-back relies on.
pub fn sk_key(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !tok_left_ok(t, s) {
        return None;
    }
    let b = s + 3;
    let e = run(t, b, is_tok);
    let body = &t[b..e];
    let head = &body[..body.len().min(SECRET_EVIDENCE_BYTES)];
    let evidence = (head.iter().any(u8::is_ascii_digit)
        && head.iter().any(u8::is_ascii_alphabetic))
        || body.len() >= SECRET_EVIDENCE_BYTES;
    if body.len() < 20 || !evidence {
        return None;
    }
    Some((e, CONF_STRONG))
}

/// GitHub tokens: `ghp_/gho_/ghu_/ghs_/ghr_` + >= 30 alphanumerics, `github_pat_` + >= 22.
pub fn github(t: &[u8], s: usize, prefix_len: usize) -> Option<(usize, f32)> {
    if !tok_left_ok(t, s) {
        return None;
    }
    let b = s + prefix_len;
    let (e, min) = if prefix_len == 4 {
        (run(t, b, |c| c.is_ascii_alphanumeric()), 30)
    } else {
        (run(t, b, |c| c.is_ascii_alphanumeric() || c == b'_'), 22)
    };
    if e - b < min || (e < t.len() && is_tok(t[e])) {
        return None;
    }
    Some((e, CONF_STRONG))
}

/// JWT: `eyJ` header . `eyJ` payload [. signature], base64url segments; or a base64url-encoded
/// JSON run (`eyJ...`) of at least [`SECRET_EVIDENCE_BYTES`] (a long token header), so the
/// decision never needs more than a bounded prefix (streaming hold-back).
pub fn jwt(t: &[u8], s: usize) -> Option<(usize, f32)> {
    if !tok_left_ok(t, s) {
        return None;
    }
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let e1 = run(t, s, b64);
    let hdr = e1 - s;
    if hdr < 10 {
        return None;
    }
    let mut payload = 0;
    if at(t, e1) == b'.' && t.get(e1 + 1..e1 + 4) == Some(b"eyJ") {
        payload = run(t, e1 + 1, b64) - e1 - 1;
    }
    let long = hdr >= SECRET_EVIDENCE_BYTES;
    if payload < 10 && !long {
        return None;
    }
    // The finding covers the whole dotted token run (a JWT glued to more token characters is
    // still a credential; this is also exactly what streaming swallows).
    Some((run(t, s, |c| b64(c) || c == b'.'), CONF_STRONG))
}

/// PEM private key block from `-----BEGIN`: header must name a PRIVATE KEY. The block ends after
/// the `-----END ...-----` footer; without a footer (truncated or still streaming) the finding
/// runs to the end of the text, capped at `PEM_BLOCK_BYTES_MAX` (fail-closed).
pub fn pem(t: &[u8], s: usize) -> Option<(usize, f32)> {
    let hdr_end = (s + 80).min(t.len());
    let hdr = &t[s..hdr_end];
    let close = memchr::memmem::find(hdr.get(10..)?, b"-----")? + 10;
    let label = hdr.get(10..close)?;
    memchr::memmem::find(label, b"PRIVATE KEY")?;
    let body_start = s + close + 5;
    let lim = (s + PEM_BLOCK_BYTES_MAX).min(t.len());
    if body_start > lim {
        return Some((lim, 1.0));
    }
    let Some(f) = memchr::memmem::find(&t[body_start..lim], b"-----END") else {
        return Some((lim, 1.0));
    };
    let fs = body_start + f + 8;
    let fe_lim = (fs + 64).min(t.len());
    match memchr::memmem::find(&t[fs..fe_lim], b"-----") {
        Some(x) => Some((fs + x + 5, 1.0)),
        None => Some((fe_lim.max(fs).min(t.len()), 1.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(f: impl Fn(&[u8], usize) -> Option<(usize, f32)>, s: &str) -> bool {
        f(s.as_bytes(), 0).is_some_and(|(e, _)| e == s.len())
    }

    #[test]
    fn byte_class_table() {
        for b in 0..=255u8 {
            assert_eq!(is_word(b), b.is_ascii_alphanumeric() || b == b'_', "{b}");
            assert_eq!(
                is_local(b),
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-'),
                "{b}"
            );
            assert_eq!(is_label(b), b.is_ascii_alphanumeric() || b == b'-', "{b}");
            assert_eq!(
                CLASS[usize::from(b)] & CLASS_UPPER_DIGIT != 0,
                b.is_ascii_uppercase() || b.is_ascii_digit(),
                "{b}"
            );
            assert_eq!(
                is_tok(b),
                b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
                "{b}"
            );
        }
    }

    #[test]
    fn ssn_table() {
        for ok in [
            "123-45-6789",
            "078-05-1120",
            "123 45 6789",
            "001-01-0001",
            "899-99-9999",
        ] {
            assert!(whole(ssn, ok), "{ok}");
        }
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
            "123 45-6789",
            "12-345-6789",
            "123-45-67890",
            "123-45-6789-1",
            "1234-56-789",
        ] {
            assert!(!whole(ssn, bad), "{bad}");
        }
        assert_eq!(ssn(b"123456789", 0).map(|x| x.1), Some(CONF_SSN_BARE));
        assert!(ssn(b"x123-45-6789", 1).is_none());
    }

    #[test]
    fn luhn_digits_matches_luhn() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = 1 + (x % 19) as usize;
            let d: Vec<u8> = (0..n).map(|k| b'0' + ((x >> (3 * k)) % 10) as u8).collect();
            assert_eq!(luhn_digits(&d), luhn(&d, 0, n), "{d:?}");
        }
    }

    type Validator = fn(&[u8], usize) -> Option<(usize, f32)>;

    /// The SSN and card fast paths decide exactly as the general group split, on random strings
    /// of digits and separators around the fast-path shapes.
    #[test]
    fn fast_paths_equal_group_split() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let shapes: [&[u8]; 6] = [
            b"ddd-dd-dddd",
            b"ddd dd dddd",
            b"ddd.dd.dddd",
            b"dddd dddd dddd dddd",
            b"dddd-dddd-dddd-dddd",
            b"4ddd dddd dddd dddd",
        ];
        let alphabet = b"0123456789- .a(_/:";
        let (mut ssn_hits, mut card_hits) = (0, 0);
        for _ in 0..200_000 {
            let shape = shapes[(next() % shapes.len() as u64) as usize];
            let mut t: Vec<u8> = Vec::new();
            for _ in 0..next() % 3 {
                t.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let s = t.len();
            for &c in shape {
                let r = next();
                t.push(match c {
                    // mostly the shape, sometimes any byte of the alphabet
                    _ if r % 23 == 0 => alphabet[(r / 23 % alphabet.len() as u64) as usize],
                    b'd' => b'0' + (r % 10) as u8,
                    c => c,
                });
            }
            for _ in 0..next() % 5 {
                t.push(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let split_or_none = |f: Validator| {
                if left_ok(&t, s) {
                    f(&t, s)
                } else {
                    None
                }
            };
            let want = split_or_none(ssn_split);
            assert_eq!(ssn(&t, s), want, "{:?}", String::from_utf8_lossy(&t));
            ssn_hits += usize::from(want.is_some());
            let want = split_or_none(card_split);
            assert_eq!(card(&t, s), want, "{:?}", String::from_utf8_lossy(&t));
            card_hits += usize::from(want.is_some());
        }
        assert!(
            ssn_hits > 1_000 && card_hits > 300,
            "{ssn_hits} {card_hits}"
        );
    }

    /// The IBAN and IPv4 validators as they were before their single-pass rewrites (per-char
    /// mod 97 with a reduction test; digit run then value per octet), as references.
    fn iban_reference(t: &[u8], s: usize) -> Option<(usize, f32)> {
        if s > 0 && is_word(t[s - 1]) {
            return None;
        }
        let cc = t.get(s..s + 2)?;
        if !cc.iter().all(u8::is_ascii_uppercase)
            || !t.get(s + 2..s + 4)?.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let len = iban_len(cc)?;
        let step = |r: u64, c: u8| -> u64 {
            let r = if c.is_ascii_digit() {
                r * 10 + u64::from(c - b'0')
            } else {
                r * 100 + u64::from(c - b'A') + 10
            };
            if r >= 1 << 56 {
                r % 97
            } else {
                r
            }
        };
        let (mut head, mut r, mut n, mut p) = ([0u8; 4], 0u64, 0, s);
        let mut spaced: Option<bool> = None;
        while n < len {
            let c = at(t, p);
            if !(c.is_ascii_uppercase() || c.is_ascii_digit()) {
                return None;
            }
            if n < 4 {
                head[n] = c;
            } else {
                r = step(r, c);
            }
            n += 1;
            p += 1;
            if n % 4 == 0 && n < len {
                let sp = at(t, p) == b' ';
                match spaced {
                    None => spaced = Some(sp),
                    Some(x) if x != sp => return None,
                    _ => {}
                }
                if sp {
                    p += 1;
                }
            }
        }
        if p < t.len() && is_word(t[p]) {
            return None;
        }
        for c in head {
            r = step(r, c);
        }
        (r % 97 == 1).then_some((p, CONF_STRONG))
    }

    fn ipv4_reference(t: &[u8], s: usize) -> Option<(usize, f32)> {
        if !left_ok(t, s) {
            return None;
        }
        let mut p = s;
        for i in 0..4 {
            let n = digit_run(t, p, 3);
            if n == 0 || n > 3 || (n > 1 && t[p] == b'0') || num(t, p, p + n) > 255 {
                return None;
            }
            p += n;
            if i < 3 {
                if at(t, p) != b'.' {
                    return None;
                }
                p += 1;
            }
        }
        let port = at(t, p) == b':' && !at(t, p + 1).is_ascii_hexdigit()
            || at(t, p) == b':' && at(t, p + 1).is_ascii_digit();
        (right_ok(t, p) || port).then_some((p, CONF_IPV4))
    }

    #[test]
    fn iban_and_ipv4_equal_references() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = [
            "DE89 3704 0044 0532 0130 00",
            "DE89370400440532013000",
            "GB82 WEST 1234 5698 7654 32",
            "NL91ABNA0417164300",
            "FR1420041010050500013M02606",
            "10.20.30.40",
            "192.168.1.1",
            "255.255.255.255:8080",
        ];
        let noise = b"0123456789 .:-AZaz_";
        let (mut ibans, mut ips) = (0, 0);
        for _ in 0..200_000 {
            let mut t: Vec<u8> = Vec::new();
            for _ in 0..next() % 3 {
                t.push(noise[(next() % noise.len() as u64) as usize]);
            }
            let s = t.len();
            for &c in valid[(next() % valid.len() as u64) as usize].as_bytes() {
                let r = next();
                t.push(if r % 29 == 0 {
                    noise[(r / 29 % noise.len() as u64) as usize]
                } else {
                    c
                });
            }
            for _ in 0..next() % 4 {
                t.push(noise[(next() % noise.len() as u64) as usize]);
            }
            let want = iban_reference(&t, s);
            assert_eq!(iban(&t, s), want, "{:?}", String::from_utf8_lossy(&t));
            ibans += usize::from(want.is_some());
            let want = ipv4_reference(&t, s);
            assert_eq!(ipv4(&t, s), want, "{:?}", String::from_utf8_lossy(&t));
            ips += usize::from(want.is_some());
        }
        assert!(ibans > 1_000 && ips > 1_000, "{ibans} {ips}");
    }

    #[test]
    fn card_table() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500 0000 0000 0004",
            "2221000000000009",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "6200000000000005",
            "4222222222222",
        ] {
            assert!(whole(card, ok), "{ok}");
        }
        for bad in [
            "4111111111111112",
            "4111 1111-1111 1111",
            "1234567812345678",
            "4111 11111 1111 111",
            "9111111111111111",
            "41111111111111111111",
            "0000000000000000",
        ] {
            assert!(!whole(card, bad), "{bad}");
        }
    }

    #[test]
    fn phone_table() {
        for ok in [
            "(212) 555-0142",
            "212-555-0142",
            "212.555.0142",
            "+1 212 555 0142",
            "+12125550142",
            "1-212-555-0142",
            "+1 (212) 555-0142",
            "212 555 0142",
        ] {
            assert!(whole(nanp, ok), "{ok}");
        }
        for bad in [
            "112-555-0142",
            "212-155-0142",
            "911-555-0142",
            "212-911-0142",
            "212-555.0142",
            "295-555-0142",
            "372-555-0142",
            "965-555-0142",
        ] {
            assert!(!whole(nanp, bad), "{bad}");
        }
        for ok in [
            "+44 20 7946 0958",
            "+49 30 901820",
            "+33 1 42 68 53 00",
            "+81-3-1234-5678",
            "+44 (0)20 7946 0958",
        ] {
            assert!(whole(e164, ok), "{ok}");
        }
        for bad in [
            "+0 123 456 789",
            "+44 12",
            "+1 212 555 0142",
            "+999999999999999999",
        ] {
            assert!(!whole(e164, bad), "{bad}");
        }
    }

    #[test]
    fn iban_table() {
        for ok in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
        ] {
            assert!(whole(iban, ok), "{ok}");
        }
        for bad in [
            "DE89370400440532013001",
            "DE8937040044053201300",
            "XX89370400440532013000",
            "DE89 37040044 0532 0130 00",
        ] {
            assert!(!whole(iban, bad), "{bad}");
        }
    }

    #[test]
    fn ip_table() {
        for ok in ["192.168.1.1", "10.0.0.254", "8.8.8.8", "255.255.255.255"] {
            assert!(whole(ipv4, ok), "{ok}");
        }
        for bad in ["256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4.5"] {
            assert!(!whole(ipv4, bad), "{bad}");
        }
        assert!(ipv4(b"v1.2.3.4", 1).is_none());
        assert!(ipv4(b"1.2.3.4.5", 2).is_none());
        let v6 = |s: &str| {
            let c = s.find(':').unwrap_or(0);
            ipv6(s.as_bytes(), c).is_some_and(|(a, b, _)| a == 0 && b == s.len())
        };
        for ok in [
            "2001:db8::1",
            "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            "fe80::1ff:fe23:4567:890a",
        ] {
            assert!(v6(ok), "{ok}");
        }
        for bad in ["12:30:45", "00:1A:2B:3C:4D:5E", "a::b", "::1", "std::io"] {
            assert!(!v6(bad), "{bad}");
        }
    }

    #[test]
    fn email_and_secrets() {
        let em = |s: &str| {
            let a = s.find('@').unwrap_or(0);
            email(s.as_bytes(), a).map(|(x, y, _)| s[x..y].to_string())
        };
        assert_eq!(
            em("mail john.doe+x@example.co.uk.").as_deref(),
            Some("john.doe+x@example.co.uk")
        );
        assert_eq!(em("@decorator"), None);
        assert_eq!(em("a@localhost"), None);
        assert_eq!(em("x@1.2"), None);
        for asset in [
            "icon@2x.png",
            "a@b.JPEG",
            "x@y.Json",
            "s@t.js",
            "logo@3x.webp",
        ] {
            assert_eq!(em(asset), None, "{asset}");
        }
        for mail in ["a@b.jsx", "a@b.pn", "a@b.pngs", "a@b.icon", "a@b.io"] {
            assert_eq!(em(mail).as_deref(), Some(mail), "{mail}");
        }
        assert!(whole(aws_key, "AKIAIOSFODNN7EXAMPLE"));
        assert!(!whole(aws_key, "AKIAIOSFODNN7EXAMPL"));
        assert!(whole(sk_key, "sk-proj-abcDEF1234567890abcdefGHIJ"));
        assert!(!whole(sk_key, "sk-this-is-not-a-key-at-all"));
        assert!(sk_key(b"task-abcdef1234567890abcdef", 2).is_none());
        assert!(whole(
            |t, s| github(t, s, 4),
            "ghp_0123456789abcdefghijABCDEFGHIJ012345"
        ));
        assert!(whole(
            |t, s| github(t, s, 11),
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"
        ));
        assert!(whole(
            jwt,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abc-_123"
        ));
        assert!(!whole(jwt, "eyJhbGciOiJIUzI1NiJ9"));
        assert!(!whole(jwt, "eyJhbGciOiJIUzI1NiJ9.notjson"));
        assert!(whole(
            jwt,
            &format!("eyJ{}", "a".repeat(SECRET_EVIDENCE_BYTES))
        ));
        let pemtxt = "-----BEGIN RSA PRIVATE KEY-----\nMIIabc\n-----END RSA PRIVATE KEY-----";
        assert!(whole(pem, pemtxt));
        assert!(pem(
            b"-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----",
            0
        )
        .is_none());
    }
}
