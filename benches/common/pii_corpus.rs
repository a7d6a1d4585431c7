//! Synthetic PII bench corpora, shared by `benches/pii.rs` and `examples/pii_profile.rs` (the
//! callgrind driver), so instruction counts and criterion numbers measure the same bytes.

const PROSE: &str =
    "The quarterly review covers revenue growth, customer retention and the roadmap \
for the next release. Our team discussed how the new onboarding flow reduces friction, why the \
support backlog shrank, and which experiments should continue. Please summarise the key risks, \
list open questions for finance, and draft a short note to the leadership group explaining the \
trade-offs between speed and quality. Keep the tone neutral and avoid jargon where possible. ";

const PII: &[&str] = &[
    "ssn 123-45-6789",
    "card 4111 1111 1111 1111",
    "mail jane.doe@example.com",
    "call (212) 555-0142",
    "ip 10.20.30.40",
    "iban DE89 3704 0044 0532 0130 00",
    "key AKIAIOSFODNN7EXAMPLE",
];

/// `n` bytes of English prose without PII.
pub fn prose(n: usize) -> String {
    let mut s = String::with_capacity(n + PROSE.len());
    while s.len() < n {
        s.push_str(PROSE);
    }
    s.truncate(n);
    s
}

/// About `n` bytes of text with an entity every ~55 bytes.
pub fn dense(n: usize) -> String {
    let mut s = String::with_capacity(n + 128);
    let mut i = 0;
    while s.len() < n {
        s.push_str(PII[i % PII.len()]);
        s.push_str(", then some words follow here. ");
        i += 1;
    }
    let mut cut = n;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

/// A 3.8 KiB chat request with three entities (SSN, card, e-mail) in 3.6 KiB of prose: the body of
/// `redact_request/chat_4k` and of `pii_profile request`.
pub fn chat_body() -> Vec<u8> {
    let user = format!(
        "{} My SSN is 123-45-6789 and my card is 4111 1111 1111 1111; email me at jane.doe@example.com. {}",
        prose(1800),
        prose(1800)
    );
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a bank."},
            {"role": "user", "content": user}
        ],
        "temperature": 0.2,
        "stream": true
    }))
    .unwrap_or_default()
}
