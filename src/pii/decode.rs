//! Bounded decompression of request/response bodies (gzip, deflate, br, zstd).
//!
//! Invariants: the decoded output never exceeds `limit_bytes` (zip-bomb safe: we read at most
//! `limit + 1` bytes from the decoder and fail with [`PiiError::TooLarge`]); truncated or corrupt
//! streams and unknown encodings are errors (fail-closed). Pure-Rust decoders only
//! (`flate2`/miniz_oxide, `brotli-decompressor`, `ruzstd`): no C toolchain needed.

use std::borrow::Cow;
use std::io::Read;

use super::config::CompressedPolicy;
use super::error::PiiError;

/// Maximum number of stacked content-codings accepted (`gzip, br`).
const CODINGS_MAX: usize = 2;
/// Brotli decoder internal buffer.
const BROTLI_BUFFER_BYTES: usize = 4096;

fn read_bounded(
    mut r: impl Read,
    limit_bytes: usize,
    what: &'static str,
) -> Result<Vec<u8>, PiiError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    (&mut r)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| PiiError::Decode(what))?;
    if out.len() > limit_bytes {
        return Err(PiiError::TooLarge { limit_bytes });
    }
    Ok(out)
}

fn decode_one(body: &[u8], coding: &str, limit_bytes: usize) -> Result<Vec<u8>, PiiError> {
    match coding {
        "gzip" | "x-gzip" => {
            read_bounded(flate2::read::MultiGzDecoder::new(body), limit_bytes, "gzip")
        }
        "deflate" => read_bounded(flate2::read::ZlibDecoder::new(body), limit_bytes, "deflate"),
        "br" => read_bounded(
            brotli_decompressor::Decompressor::new(body, BROTLI_BUFFER_BYTES),
            limit_bytes,
            "br",
        ),
        "zstd" => {
            let dec = ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|_| PiiError::Decode("zstd"))?;
            read_bounded(dec, limit_bytes, "zstd")
        }
        other => Err(PiiError::UnsupportedEncoding(
            other.chars().take(32).collect(),
        )),
    }
}

/// Decode `body` per the `Content-Encoding` header value. Returns the body itself for
/// `None`/`identity`. The result is at most `limit_bytes` long.
pub(crate) fn decode_body<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    policy: CompressedPolicy,
    limit_bytes: usize,
) -> Result<(Cow<'a, [u8]>, bool), PiiError> {
    if body.len() > limit_bytes {
        return Err(PiiError::TooLarge { limit_bytes });
    }
    let codings: Vec<String> = content_encoding
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    if codings.is_empty() {
        return Ok((Cow::Borrowed(body), false));
    }
    if policy == CompressedPolicy::Reject {
        return Err(PiiError::CompressedRejected(
            codings.join(",").chars().take(32).collect(),
        ));
    }
    if codings.len() > CODINGS_MAX {
        return Err(PiiError::UnsupportedEncoding("too many codings".into()));
    }
    let mut cur: Vec<u8> = body.to_vec();
    for c in codings.iter().rev() {
        cur = decode_one(&cur, c, limit_bytes)?;
    }
    Ok((Cow::Owned(cur), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    #[test]
    fn gzip_roundtrip_and_bomb() {
        let g = gz(b"hello");
        let (d, c) = decode_body(&g, Some("gzip"), CompressedPolicy::Decompress, 100).expect("ok");
        assert!(c);
        assert_eq!(&*d, b"hello");
        let bomb = gz(&vec![b'a'; 1_000_000]);
        assert_eq!(
            decode_body(&bomb, Some("gzip"), CompressedPolicy::Decompress, 4096),
            Err(PiiError::TooLarge { limit_bytes: 4096 })
        );
        assert!(matches!(
            decode_body(b"not gzip", Some("gzip"), CompressedPolicy::Decompress, 100),
            Err(PiiError::Decode(_))
        ));
        assert!(matches!(
            decode_body(b"x", Some("gzip"), CompressedPolicy::Reject, 100),
            Err(PiiError::CompressedRejected(_))
        ));
        assert!(matches!(
            decode_body(b"x", Some("lzma"), CompressedPolicy::Decompress, 100),
            Err(PiiError::UnsupportedEncoding(_))
        ));
        assert!(decode_body(b"x", Some("identity"), CompressedPolicy::Reject, 100).is_ok());
        assert!(matches!(
            decode_body(b"x", Some("br"), CompressedPolicy::Decompress, 100),
            Err(PiiError::Decode(_))
        ));
        assert!(matches!(
            decode_body(b"xxxxxxxx", Some("zstd"), CompressedPolicy::Decompress, 100),
            Err(PiiError::Decode(_))
        ));
    }
}
