//! JSON parsing scratch shared by request and usage inspection.
//!
//! Owns: the reusable buffers simd-json needs. simd-json parses *in place* (it unescapes strings
//! into its input), so bytes that must still be forwarded are first copied into
//! [`JsonScratch`]'s own buffer; that buffer, simd-json's stage buffers and the tape are reused
//! across parses, so steady state does no allocation per parse beyond growth to the largest
//! document seen.
//!
//! One scratch lives per thread ([`with_scratch`]): sluice is thread-per-core, the inspector
//! never calls user code while the scratch is borrowed, so the `RefCell` cannot be re-entered.
//! Callers that prefer explicit ownership can hold their own [`JsonScratch`].

use simd_json::tape::{Tape, Value};
use std::cell::RefCell;

/// Scratch capacity kept between parses; a larger document's buffers are freed after use so
/// one huge body does not pin memory on the thread forever.
pub const SCRATCH_RETAIN_BYTES_MAX: usize = 1024 * 1024;

/// Reusable simd-json buffers. Cheap to create; grows to the largest document parsed.
pub struct JsonScratch {
    bytes: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for JsonScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for JsonScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonScratch")
            .field("capacity", &self.bytes.capacity())
            .finish()
    }
}

impl JsonScratch {
    /// Empty scratch; buffers grow on first use.
    pub fn new() -> Self {
        JsonScratch {
            bytes: Vec::new(),
            buffers: simd_json::Buffers::new(512),
            tape: None,
        }
    }

    /// Copy `src`, parse it, and run `f` on the root value. `None` when `src` is not JSON.
    pub fn parse<R>(&mut self, src: &[u8], f: impl FnOnce(Value<'_, '_>) -> R) -> Option<R> {
        self.bytes.clear();
        self.bytes.extend_from_slice(src);
        let mut tape: Tape<'_> = match self.tape.take() {
            Some(t) => t.reset(),
            None => Tape::null(),
        };
        let out = match simd_json::fill_tape(&mut self.bytes, &mut self.buffers, &mut tape) {
            Ok(()) => Some(f(tape.as_value())),
            Err(_) => None,
        };
        self.tape = Some(tape.reset());
        if self.bytes.capacity() > SCRATCH_RETAIN_BYTES_MAX {
            *self = JsonScratch::new();
        }
        out
    }
}

thread_local! {
    static SCRATCH: RefCell<JsonScratch> = RefCell::new(JsonScratch::new());
}

/// Run `f` with this thread's scratch. Falls back to a fresh scratch if (impossibly) re-entered.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut JsonScratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut JsonScratch::new()),
    })
}

/// Parse `src` with this thread's scratch.
pub(crate) fn parse<R>(src: &[u8], f: impl FnOnce(Value<'_, '_>) -> R) -> Option<R> {
    with_scratch(|s| s.parse(src, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use simd_json::prelude::*;

    #[test]
    fn parses_copy_and_reuses() {
        let src = br#"{"a":"x\ny","b":[1,2]}"#.to_vec();
        let mut s = JsonScratch::new();
        for _ in 0..3 {
            let got = s.parse(&src, |v| {
                v.get("a").and_then(|a| a.into_string()).map(str::to_owned)
            });
            assert_eq!(got, Some(Some("x\ny".to_owned())));
        }
        assert_eq!(
            src,
            br#"{"a":"x\ny","b":[1,2]}"#.to_vec(),
            "input untouched"
        );
        assert!(s.parse(b"{nope", |_| ()).is_none());
        assert!(s.parse(b"", |_| ()).is_none());
    }
}
