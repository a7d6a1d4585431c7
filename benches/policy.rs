//! Criterion benchmarks for the policy filters' per-request work (no IO).
//!
//! * `ratelimit/local_requests`: admission by one local rule keyed by caller (hash, slot
//!   lookup, one CAS) and the `x-ratelimit-*` header formatting.
//! * `ratelimit/local_requests_tokens`: a rule with both limits, reserve + reconcile.
//! * `auth/static_key`: SHA-256 of the presented key and the digest lookup.
//! * `auth/jwt_hs256_cached`: a JWT already verified on this thread (cache hit + exp check).
//!
//! Run: `cargo bench --bench policy -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice::auth::{AuthFilter, InboundConfig};
use sluice::filter::ExchangeCtx;
use sluice::http1::{parse_request, HeadLimits, RequestHead};
use sluice::ratelimit::{self, RateLimitConfig, RateLimitFilter, RuleConfig};

/// Poll a future that never waits (local admission) to completion.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("local admission never waits"),
    }
}

fn head(extra: &str) -> RequestHead {
    let raw = format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    parse_request(raw.as_bytes(), &HeadLimits::default())
        .unwrap()
        .unwrap()
        .0
}

fn rule(yaml: &str) -> Arc<ratelimit::Rule> {
    let cfg: RuleConfig = serde_saphyr::from_str(yaml).unwrap();
    ratelimit::rule("bench", &cfg, &RateLimitConfig::default()).unwrap()
}

fn bench_ratelimit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    let f = RateLimitFilter {
        route: Arc::from("r"),
        rules: vec![rule(
            "{name: a, key: [caller, route], requests_per_second: 1000000000}",
        )],
        needs_body: false,
        stream_cutoff: false,
    };
    let h = head("");
    let caller: Arc<str> = Arc::from("team-a");
    let mut out = Vec::with_capacity(512);
    g.bench_function("local_requests", |b| {
        b.iter(|| {
            let mut ctx = ExchangeCtx::new(caller.clone());
            now(f.on_request_head(&mut ctx, black_box(&h))).unwrap();
            out.clear();
            ctx.ratelimit.headers.write(&mut out);
            black_box(&out);
        })
    });
    let f = RateLimitFilter {
        route: Arc::from("r"),
        rules: vec![rule(
            "{name: b, key: [caller], requests_per_second: 1000000000, tokens_per_minute: 1000000000}",
        )],
        needs_body: true,
        stream_cutoff: false,
    };
    g.bench_function("local_requests_tokens", |b| {
        b.iter(|| {
            let mut ctx = ExchangeCtx::new(caller.clone());
            now(f.on_request_body(&mut ctx, black_box(&h), 400)).unwrap();
            f.reconcile(&mut ctx, Some(150), true);
        })
    });
    g.finish();
}

fn bench_auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    let key_hex = "7f6a64e4311c440dc15928e6ebc4ccd07aeffbaa8942e87d43996ac4d81a0aab"; // sk-loadtest
    let cfg: InboundConfig = serde_saphyr::from_str(&format!(
        "{{api_keys: [{{name: loadtest, sha256: \"{key_hex}\"}}]}}"
    ))
    .unwrap();
    let a = AuthFilter::build(&cfg, "bench").unwrap();
    let h = head("Authorization: Bearer sk-loadtest\r\n");
    let caller: Arc<str> = Arc::from("x");
    g.bench_function("static_key", |b| {
        b.iter(|| {
            let mut ctx = ExchangeCtx::new(caller.clone());
            a.on_request_head(&mut ctx, black_box(&h)).unwrap();
            black_box(&ctx.caller);
        })
    });

    // HS256 JWT, verified once, then served from this thread's cache.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let secret = [7u8; 32];
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        format!(
            r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#,
            b64.encode(secret)
        ),
    )
    .unwrap();
    let cfg: InboundConfig =
        serde_saphyr::from_str(&format!("{{jwt: {{jwks_file: \"{}\"}}}}", jwks.display())).unwrap();
    let a = AuthFilter::build(&cfg, "bench").unwrap();
    let mut tok = format!(
        "{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(r#"{"sub":"svc","exp":9999999999}"#)
    );
    let sig = {
        use hmac::{KeyInit, Mac};
        let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
        m.update(tok.as_bytes());
        m.finalize().into_bytes()
    };
    tok.push('.');
    tok.push_str(&b64.encode(sig));
    let h = head(&format!("Authorization: Bearer {tok}\r\n"));
    g.bench_function("jwt_hs256_cached", |b| {
        b.iter(|| {
            let mut ctx = ExchangeCtx::new(caller.clone());
            a.on_request_head(&mut ctx, black_box(&h)).unwrap();
            black_box(&ctx.caller);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_ratelimit, bench_auth);
criterion_main!(benches);
