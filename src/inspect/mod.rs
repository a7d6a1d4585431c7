//! Model-traffic inspection (placeholder; implemented on the inspect branch).
