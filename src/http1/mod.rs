//! HTTP/1.1 codec (placeholder; implemented on the http1 branch).
