//! Structural scan of one JSON object's top-level members: byte positions only, no tree,
//! nothing allocated.
//!
//! Owns the one copy of the skip-a-value logic that request inspection
//! (`inspect::request::inject_include_usage`) and routing (`route::model`: find and rewrite
//! `model`) both need. Invariants: never panics on any input (every index is checked, the
//! nesting depth never underflows); a malformed object yields `None` where the scan stopped;
//! it does not validate what it skips (callers either validated the body before, or let the
//! upstream judge it).

/// Calls `member(key, value)` for each member of the object at (or after whitespace from) `at`:
/// `key` is the raw bytes between the key's quotes, `value` the value's byte range. Returns the
/// index of the `{`, or `None` when `b` holds no well-formed object there.
pub(crate) fn for_each_member<'a>(
    b: &'a [u8],
    at: usize,
    mut member: impl FnMut(&'a [u8], std::ops::Range<usize>),
) -> Option<usize> {
    let mut i = skip_ws(b, at);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let open = i;
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return Some(open),
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(b, i)?;
        let key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let vs = skip_ws(b, i + 1);
        let ve = skip_value(b, vs)?;
        member(key, vs..ve);
        i = ve;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is `"`; the index after the closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = j + memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// The index after the value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_nesting() {
        let b = br#" {"a": {"x": [1, "}"]}, "b\"c" : "v", "n": -1.5e3}"#;
        let mut got = Vec::new();
        let open = for_each_member(b, 0, |k, r| got.push((k.to_vec(), b[r].to_vec())));
        assert_eq!(open, Some(1));
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), br#"{"x": [1, "}"]}"#.to_vec()),
                (br#"b\"c"#.to_vec(), br#""v""#.to_vec()),
                (b"n".to_vec(), b"-1.5e3".to_vec()),
            ]
        );
    }

    #[test]
    fn malformed_is_none_never_a_panic() {
        for b in [
            &b"[]"[..],
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":}",
            b"{\"a\":[}]",
            b"{\"a\" 1}",
            b"{1:2}",
            b"\"x",
        ] {
            assert_eq!(
                for_each_member(b, 0, |_, _| {}),
                None,
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        // A stray closer inside a value never underflows the depth.
        assert_eq!(skip_value(b"]", 0), None);
    }
}
