//! Incremental message-body framing (RFC 9112 §6.3, §7.1).
//!
//! # What it owns
//! [`BodyDecoder`]: given the bytes that follow a head, it says how many of them belong to the
//! body and whether the body is complete, and reports decoded payload slices to a callback.
//!
//! # Invariants
//! * **Never reads beyond the body's end.** `Progress::consumed` stops exactly after the last
//!   byte of the body (for chunked: after the CRLF that ends the trailer section); the bytes
//!   after it belong to the next pipelined message.
//! * **Never allocates.** State is a small enum; payload slices handed to `on_data` are
//!   sub-slices of the caller's input. Chunk extensions and trailers are validated and skipped
//!   in place, bounded by [`CHUNK_EXT_BYTES_MAX`] and [`TRAILER_BYTES_MAX`].
//! * **Split-invariant.** Feeding the same bytes in any partition yields the same concatenated
//!   payload, the same total `consumed`, the same `done`, and the same error.
//! * Errors are sticky: after an error, every call returns the same error.
//!
//! # Chunked grammar enforced (RFC 9112 §7.1)
//! ```text
//! chunk      = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size = 1*16HEXDIG              ; more than 16 digits rejected (u64 never overflows)
//! chunk-ext  = *( BWS ";" ... )        ; BWS allowed only before ';'; bytes: HTAB / SP / VCHAR
//!                                      ; / obs-text; total ≤ CHUNK_EXT_BYTES_MAX
//! last-chunk = 1*("0") [ chunk-ext ] CRLF
//! trailer    = *( field-name ":" field-value CRLF ) CRLF   ; ≤ TRAILER_BYTES_MAX, no obs-fold
//! ```
//! Every line ending must be CRLF: a bare LF or bare CR anywhere in the framing is rejected,
//! because parsers that disagree on line endings are the classic chunked smuggling vector.
//!
//! # Trade-offs
//! The proxy forwards the raw framed bytes (including extensions and trailers) instead of
//! re-chunking: zero copies, and since the framing was validated strictly the upstream cannot
//! parse it differently. The cost is that extensions/trailers are not filtered; a filter that
//! needs that re-frames with [`super::write_chunk`].

use super::{is_tchar, is_text, BodyKind, CodecError};

/// Maximum bytes of chunk extensions (everything between the size digits and the CRLF,
/// including BWS and `;`) on one chunk-size line.
pub const CHUNK_EXT_BYTES_MAX: usize = 4 * 1024;
/// Maximum bytes of the trailer section (all trailer lines including their CRLFs, excluding the
/// final empty line).
pub const TRAILER_BYTES_MAX: usize = 16 * 1024;
/// Maximum number of hex digits in a chunk size (16 digits = the full `u64` range).
pub const CHUNK_SIZE_HEX_DIGITS_MAX: usize = 16;

/// Result of one [`BodyDecoder::advance`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes at the front of the input that belong to this body.
    pub consumed: usize,
    /// The body is complete; input after `consumed` belongs to the next message.
    pub done: bool,
}

/// Position inside a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading hex digits of a chunk size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: optional BWS, extensions, then CR. `ext` counts bytes since the digits.
    Ext {
        size: u64,
        ext: u32,
        in_ext: bool,
    },
    /// Saw CR ending the size line.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// Start of a trailer line or of the final CRLF.
    TrailerStart {
        used: u32,
    },
    TrailerName {
        used: u32,
    },
    TrailerValue {
        used: u32,
    },
    TrailerLf {
        used: u32,
    },
    FinalLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    Close,
    Chunked(Chunk),
    Done,
    Failed(CodecError),
}

/// Incremental body framing for one message. See the module docs for the invariants.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    kind: BodyKind,
    state: State,
}

fn hex_val(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

fn bad(msg: &'static str) -> CodecError {
    CodecError::BadChunk(msg)
}

impl BodyDecoder {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length { remaining: n },
            BodyKind::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            BodyKind::CloseDelimited => State::Close,
        };
        BodyDecoder { kind, state }
    }

    /// The kind this decoder was created with.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected for a `Length` body (`Some(0)` once done); `None` otherwise.
    pub fn bytes_remaining_hint(&self) -> Option<u64> {
        match (self.kind, self.state) {
            (_, State::Length { remaining }) => Some(remaining),
            (BodyKind::Length(_) | BodyKind::Empty, State::Done) => Some(0),
            _ => None,
        }
    }

    /// The peer closed the connection. `Ok` if the body is complete (a close-delimited body is
    /// complete now), `Err(Truncated)` otherwise.
    pub fn on_eof(&mut self) -> Result<(), CodecError> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            State::Failed(e) => Err(e),
            State::Length { .. } | State::Chunked(_) => {
                self.state = State::Failed(CodecError::Truncated);
                Err(CodecError::Truncated)
            }
        }
    }

    /// Consume the prefix of `input` that belongs to this body; see the module docs.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Progress, CodecError> {
        match self.state {
            State::Done => Ok(Progress {
                consumed: 0,
                done: true,
            }),
            State::Failed(e) => Err(e),
            State::Close => {
                if !input.is_empty() {
                    on_data(input);
                }
                Ok(Progress {
                    consumed: input.len(),
                    done: false,
                })
            }
            State::Length { remaining } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                if let Some(data) = input.get(..n) {
                    if n > 0 {
                        on_data(data);
                    }
                }
                let remaining = remaining.saturating_sub(n as u64);
                self.state = if remaining == 0 {
                    State::Done
                } else {
                    State::Length { remaining }
                };
                Ok(Progress {
                    consumed: n,
                    done: remaining == 0,
                })
            }
            State::Chunked(c) => match chunked(c, input, &mut on_data) {
                Ok((next, consumed)) => {
                    let done = next.is_none();
                    self.state = match next {
                        Some(c) => State::Chunked(c),
                        None => State::Done,
                    };
                    Ok(Progress { consumed, done })
                }
                Err(e) => {
                    self.state = State::Failed(e);
                    Err(e)
                }
            },
        }
    }
}

/// Run the chunked state machine over `input`. Returns the next state (`None` = body complete)
/// and the number of bytes consumed.
fn chunked(
    mut st: Chunk,
    input: &[u8],
    on_data: &mut impl FnMut(&[u8]),
) -> Result<(Option<Chunk>, usize), CodecError> {
    let mut pos = 0usize;
    loop {
        // Bulk path: chunk data.
        if let Chunk::Data { remaining } = st {
            let avail = input.len().saturating_sub(pos);
            let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(avail);
            if n > 0 {
                if let Some(data) = input.get(pos..pos + n) {
                    on_data(data);
                }
                pos += n;
            }
            let remaining = remaining.saturating_sub(n as u64);
            st = if remaining == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data { remaining }
            };
            if remaining != 0 {
                return Ok((Some(st), pos));
            }
        }
        let Some(&b) = input.get(pos) else {
            return Ok((Some(st), pos));
        };
        pos += 1;
        st = match st {
            Chunk::Size { size, digits } => match hex_val(b) {
                Some(v) => {
                    if usize::from(digits) >= CHUNK_SIZE_HEX_DIGITS_MAX {
                        return Err(bad("chunk size has too many hex digits"));
                    }
                    // Cannot overflow with ≤ 16 digits; checked anyway.
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(v))
                        .ok_or(bad("chunk size overflow"))?;
                    Chunk::Size {
                        size,
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(bad("missing or invalid chunk size")),
                None => match b {
                    b'\r' => Chunk::SizeLf { size },
                    b';' => Chunk::Ext {
                        size,
                        ext: 1,
                        in_ext: true,
                    },
                    b' ' | b'\t' => Chunk::Ext {
                        size,
                        ext: 1,
                        in_ext: false,
                    },
                    _ => return Err(bad("invalid byte after chunk size")),
                },
            },
            Chunk::Ext { size, ext, in_ext } => {
                if b == b'\r' {
                    if !in_ext {
                        return Err(bad("whitespace after chunk size without extension"));
                    }
                    Chunk::SizeLf { size }
                } else {
                    let ext = ext + 1;
                    if ext as usize > CHUNK_EXT_BYTES_MAX {
                        return Err(bad("chunk extensions too long"));
                    }
                    ext_byte(b, size, ext, in_ext)?
                }
            }
            Chunk::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunk::TrailerStart { used: 0 },
                b'\n' => Chunk::Data { remaining: size },
                _ => return Err(bad("chunk size line not terminated by CRLF")),
            },
            // Handled by the bulk path above, which never falls through with data remaining;
            // should it ever, un-read the byte and let the bulk path take it.
            Chunk::Data { remaining } => {
                pos -= 1;
                Chunk::Data { remaining }
            }
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return Err(bad("missing CRLF after chunk data")),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size { size: 0, digits: 0 },
                _ => return Err(bad("missing CRLF after chunk data")),
            },
            Chunk::TrailerStart { used } => match b {
                b'\r' => Chunk::FinalLf,
                _ if is_tchar(b) => Chunk::TrailerName {
                    used: trailer_used(used)?,
                },
                b' ' | b'\t' => return Err(bad("obs-fold in trailer section")),
                _ => return Err(bad("invalid trailer field")),
            },
            Chunk::TrailerName { used } => {
                let used = trailer_used(used)?;
                match b {
                    b':' => Chunk::TrailerValue { used },
                    _ if is_tchar(b) => Chunk::TrailerName { used },
                    _ => return Err(bad("invalid trailer field name")),
                }
            }
            Chunk::TrailerValue { used } => {
                let used = trailer_used(used)?;
                match b {
                    b'\r' => Chunk::TrailerLf { used },
                    _ if is_text(b) => Chunk::TrailerValue { used },
                    _ => return Err(bad("invalid byte in trailer field value")),
                }
            }
            Chunk::TrailerLf { used } => match b {
                b'\n' => Chunk::TrailerStart {
                    used: trailer_used(used)?,
                },
                _ => return Err(bad("trailer line not terminated by CRLF")),
            },
            Chunk::FinalLf => match b {
                b'\n' => return Ok((None, pos)),
                _ => return Err(bad("chunked body not terminated by CRLF")),
            },
        };
    }
}

/// One byte of BWS / extension text after a chunk size (not CR).
fn ext_byte(b: u8, size: u64, ext: u32, in_ext: bool) -> Result<Chunk, CodecError> {
    Ok(match b {
        b';' => Chunk::Ext {
            size,
            ext,
            in_ext: true,
        },
        b' ' | b'\t' => Chunk::Ext { size, ext, in_ext },
        _ if !in_ext => return Err(bad("whitespace after chunk size without extension")),
        _ if is_text(b) => Chunk::Ext { size, ext, in_ext },
        _ => return Err(bad("invalid byte in chunk extension")),
    })
}

fn trailer_used(used: u32) -> Result<u32, CodecError> {
    let used = used + 1;
    if used as usize > TRAILER_BYTES_MAX {
        return Err(bad("trailer section too large"));
    }
    Ok(used)
}
