//! Benchmarks of the routing/resilience hot path (criterion): what an exchange pays per request
//! for the decisions of `sluice::route` and `sluice::resilience`.
//!
//! * `split/*`: a weighted arm choice, sticky (hash of a header value) and random.
//! * `model/*`: the top-level `model` scan of a ~2 KiB chat body, and its alias rewrite.
//! * `breaker/*`: admit + report of one attempt on a shared endpoint breaker.
//! * `balance/*`: endpoint choice over 4 endpoints, round robin and p2c (with breakers).
//! * `plan/*`: the first attempt of a route with a breaker, retry budget and failover, as the
//!   exchange runs it (target choice, guard, report, drop).
//!
//! Run: `cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3`.

use std::cell::Cell;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice::http1::{parse_request, HeadLimits};
use sluice::resilience::balance::{pick, Endpoints};
use sluice::resilience::breaker::EndpointHealth;
use sluice::resilience::config::{Balance, BreakerConfig};
use sluice::resilience::plan::{AttemptResult, Plan};
use sluice::route::{model, Split};

struct Eps(Vec<EndpointHealth>);
impl Endpoints for Eps {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn has_address(&self, _: usize) -> bool {
        true
    }
    fn health(&self, i: usize) -> &EndpointHealth {
        &self.0[i]
    }
}

fn chat_body() -> Vec<u8> {
    let content = "Tell me about the weather in Paris. ".repeat(50);
    format!(
        r#"{{"model":"fast","messages":[{{"role":"system","content":"You are helpful."}},{{"role":"user","content":"{content}"}}],"stream":true,"temperature":0.2}}"#
    )
    .into_bytes()
}

fn benches(c: &mut Criterion) {
    let limits = HeadLimits {
        header_bytes_max: 65536,
        headers_count_max: 100,
    };
    let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api\r\nx-user-id: user-123456\r\ncontent-length: 2\r\n\r\n{}";
    let (head, _) = parse_request(raw, &limits).unwrap().unwrap();
    let sticky = Split::new(Some("x-user-id"), &[(0, 90), (1, 10)]);
    let random = Split::new(None, &[(0, 90), (1, 10)]);
    c.bench_function("split/sticky", |b| b.iter(|| black_box(sticky.pick(&head))));
    c.bench_function("split/random", |b| b.iter(|| black_box(random.pick(&head))));

    let body = chat_body();
    c.bench_function("model/scan_2k", |b| {
        b.iter(|| black_box(model::scan(black_box(&body))))
    });
    let f = model::scan(&body).unwrap();
    c.bench_function("model/rewrite_2k", |b| {
        b.iter(|| black_box(model::rewrite(&body, &f.model_spans, "gpt-4o-mini")))
    });

    let cfg = BreakerConfig::default();
    let h = EndpointHealth::new(cfg.window_ms);
    c.bench_function("breaker/admit_report", |b| {
        b.iter(|| {
            let a = h.admit(Some(&cfg), 1000).unwrap();
            h.on_result(Some(&cfg), a, false, 1000)
        })
    });

    let eps = Eps((0..4).map(|_| EndpointHealth::new(10_000)).collect());
    let rr = Cell::new(0);
    for (name, bal) in [
        ("balance/round_robin", Balance::RoundRobin),
        ("balance/p2c", Balance::P2c),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                pick(&eps, bal, Some(&cfg), &rr, 1000, None, &mut |n| {
                    fastrand::usize(..n)
                })
            })
        });
    }

    let yaml = r#"
listeners:
  - name: l
    bind: 127.0.0.1:1
    routes:
      - match: { path_prefix: / }
        upstream: a
        retry: { attempts_max: 2 }
        failover: [ { upstream: b } ]
upstreams:
  a: { endpoints: ["127.0.0.1:2", "127.0.0.1:3"], breaker: {}, balance: p2c }
  b: { endpoints: ["127.0.0.1:4"] }
"#;
    let snap =
        sluice::snapshot::Snapshot::build(sluice::config::parse("b.yaml", yaml).unwrap(), 1, None)
            .unwrap();
    let route = &snap.listeners[0].routes[0];
    c.bench_function("plan/first_attempt", |b| {
        b.iter(|| {
            let now = sluice::resilience::now_ms();
            let mut p = Plan::new(&snap.upstreams, &route.policy, 0);
            let mut ch = p.first(&rr, now).unwrap();
            ch.guard.report(AttemptResult::Success, now);
            black_box(ch.upstream)
        })
    });
}

criterion_group!(routing, benches);
criterion_main!(routing);
