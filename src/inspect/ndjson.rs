//! Incremental, zero-copy newline-delimited JSON splitter (Ollama streams).
//!
//! Owns: finding line boundaries in an NDJSON byte stream that arrives in arbitrary chunks.
//! Lines end in LF; a trailing CR is trimmed; lines that are empty or whitespace-only are
//! skipped. The splitter does not parse JSON.
//!
//! Invariants (same as [`super::sse`]):
//! * **Zero copy**: a line that lies entirely in one chunk is handed out as a slice of it. Only a
//!   line spanning chunks is assembled in the carry buffer, which is reused.
//! * **Bounded carry**: a line longer than the limit (default [`LINE_BYTES_MAX`], raw bytes
//!   without its LF) is skipped and counted in [`NdjsonSplitter::oversized_lines`], whatever the
//!   chunking.
//! * **Split independence**: every split of the same input yields the same lines.
//!
//! Unlike SSE, a final line without LF is delivered by [`NdjsonSplitter::finish`] (flagged as
//! unterminated): many NDJSON producers omit the last newline, and the caller can judge whether
//! the line parses.

use memchr::memchr;

/// Default bound on one NDJSON line (the carry buffer never grows past it).
pub const LINE_BYTES_MAX: usize = 1024 * 1024;

/// Incremental NDJSON splitter. One per stream; reusable via [`NdjsonSplitter::reset`].
#[derive(Debug)]
pub struct NdjsonSplitter {
    limit_bytes: usize,
    line: Vec<u8>,
    /// Raw length of the line in progress carried from earlier chunks.
    open_len: usize,
    oversized_lines: u32,
}

impl Default for NdjsonSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl NdjsonSplitter {
    /// A splitter with the default [`LINE_BYTES_MAX`] bound.
    pub fn new() -> Self {
        Self::with_limit(LINE_BYTES_MAX)
    }

    /// A splitter whose lines may be at most `limit_bytes` bytes (config override).
    pub fn with_limit(limit_bytes: usize) -> Self {
        NdjsonSplitter {
            limit_bytes: limit_bytes.max(1),
            line: Vec::new(),
            open_len: 0,
            oversized_lines: 0,
        }
    }

    /// Forget the stream, keeping the carry buffer's capacity.
    pub fn reset(&mut self) {
        self.line.clear();
        self.open_len = 0;
        self.oversized_lines = 0;
    }

    /// Lines skipped because they exceeded the limit (counted as malformed).
    pub fn oversized_lines(&self) -> u32 {
        self.oversized_lines
    }

    /// Feed the next chunk; `on_line` gets every complete non-blank line, without its EOL.
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        let mut start = 0usize;
        while let Some(rel) = memchr(b'\n', &chunk[start..]) {
            let i = start + rel;
            if self.open_len > 0 {
                let total = self.open_len + (i - start);
                self.open_len = 0;
                if total > self.limit_bytes {
                    self.oversized_lines = self.oversized_lines.saturating_add(1);
                } else {
                    self.line.extend_from_slice(&chunk[start..i]);
                    deliver(&self.line, &mut on_line);
                }
                self.line.clear();
            } else if i - start > self.limit_bytes {
                self.oversized_lines = self.oversized_lines.saturating_add(1);
            } else {
                deliver(&chunk[start..i], &mut on_line);
            }
            start = i + 1;
        }
        if start < chunk.len() {
            let tail = &chunk[start..];
            let was = self.open_len;
            self.open_len = self.open_len.saturating_add(tail.len());
            if self.open_len <= self.limit_bytes {
                self.line.extend_from_slice(tail);
            } else if was <= self.limit_bytes {
                self.line.clear();
            }
        }
    }

    /// End of stream: delivers a final unterminated line, if any. Returns `true` when such a
    /// line (non-blank, possibly oversized) was pending. The splitter is reset afterwards,
    /// keeping the oversized count.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) -> bool {
        let mut pending = false;
        if self.open_len > 0 {
            if self.open_len > self.limit_bytes {
                self.oversized_lines = self.oversized_lines.saturating_add(1);
                pending = true;
            } else {
                pending = deliver(&self.line, &mut on_line);
            }
        }
        self.line.clear();
        self.open_len = 0;
        pending
    }
}

/// Trim a trailing CR and surrounding whitespace; deliver non-blank lines. Returns delivered.
#[inline]
fn deliver(line: &[u8], on_line: &mut impl FnMut(&[u8])) -> bool {
    let line = line.trim_ascii();
    if line.is_empty() {
        return false;
    }
    on_line(line);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], limit: usize) -> (Vec<Vec<u8>>, bool, u32) {
        let mut s = NdjsonSplitter::with_limit(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(l.to_vec()));
            assert!(s.line.len() <= limit);
        }
        let unterminated = s.finish(|l| out.push(l.to_vec()));
        (out, unterminated, s.oversized_lines())
    }

    fn all_splits(input: &[u8], limit: usize) -> (Vec<Vec<u8>>, bool, u32) {
        let whole = run(&[input], limit);
        for i in 0..=input.len() {
            assert_eq!(run(&[&input[..i], &input[i..]], limit), whole, "split {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&bytes, limit), whole);
        whole
    }

    #[test]
    fn lines_crlf_blank_and_final() {
        let (lines, unterminated, _) = all_splits(b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}", 1024);
        assert_eq!(
            lines,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
        assert!(unterminated);
        let (_, unterminated, _) = all_splits(b"{}\n", 1024);
        assert!(!unterminated);
    }

    #[test]
    fn oversized_line_skipped_whatever_the_split() {
        let (lines, _, over) = all_splits(b"{\"a\":1}\n0123456789abcdef\n{\"b\":2}\n", 10);
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(over, 1);
    }
}
