"""A real Prometheus server scrapes sluice's admin /metrics; PromQL sees exact token counts."""

import openai
import pytest

from conftest import sluice_config, start_mock, start_sluice
from prom import Prometheus, ensure_prometheus

N = 5
TOKENS = 16  # the mock's default completion tokens


@pytest.fixture(scope="session")
def prometheus_bin():
    # Installs the Debian package when missing; never skips.
    return ensure_prometheus()


@pytest.fixture
def stack(prometheus_bin):
    mock = start_mock()
    routes = "- match: { path_prefix: / }\n  upstream: mock\n  inspect: { include_usage: inject }\n"
    top = ("caller: { sources: [header, static], static_name: svc }\n"
           "pricing: { models: { gpt-4o-mini: { input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 } } }\n")
    s = start_sluice(sluice_config(mock.addr, "{port}", "{admin_port}", routes=routes, top_extra=top))
    prom = Prometheus([f"127.0.0.1:{s.admin_port}"], binary=prometheus_bin)
    try:
        prom.start()
        yield mock, s, prom
    finally:
        prom.stop()
        s.stop()
        mock.stop()


def value(result) -> float:
    return float(result[0]["value"][1]) if result else float("nan")


def test_prometheus_scrapes_exact_token_counts(stack):
    mock, s, prom = stack
    c = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0,
                      default_headers={"x-sluice-caller": "prom-team"})
    # One caller whose name needs escaping in the exposition format: the scrape must still parse.
    odd = 'we"ird\\caller x'
    c.with_options(default_headers={"x-sluice-caller": odd}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    for i in range(N - 1):
        if i % 2:
            list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                           stream=True))
        else:
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    q = 'sum(sluice_gen_ai_tokens_total{gen_ai_token_type="output"})'
    res = prom.wait_query(q, lambda r: value(r) == N * TOKENS)
    assert value(res) == N * TOKENS, (res, prom.targets_health())
    by_caller = prom.query('sum by (caller) (sluice_gen_ai_tokens_total{gen_ai_token_type="output"})')
    assert {r["metric"]["caller"]: float(r["value"][1]) for r in by_caller} == {"prom-team": (N - 1) * TOKENS, odd: TOKENS}
    # Exact counts, not estimates: the streams had usage injected upstream.
    est = prom.query('sum(sluice_gen_ai_tokens_total{estimated="true"})')
    assert est == [] or value(est) == 0
    reqs = prom.query('sum by (outcome) (sluice_gen_ai_requests_total{caller="prom-team"})')
    assert {r["metric"]["outcome"]: float(r["value"][1]) for r in reqs} == {"ok": N - 1}
    [t] = prom.targets_health()
    assert t["health"] == "up", t
