//! PII detection and redaction (placeholder; implemented on the pii branch).
