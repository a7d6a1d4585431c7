"""PII redaction of streamed completions through the proxy: an entity split over several SSE
deltas is caught, every event the app gets is valid JSON, only the hold-back is delayed (the
first event reaches the client before the upstream finishes), and a stream the upstream cuts
short still releases its held text, redacted."""

import json
import time

import openai
import pytest

from conftest import PyUpstream, raw_exchange
from test_dataplane import post

CARD_PARTS = ["Your card 4111 11", "11 1111 ", "1111 is on file", ". Anything else?"]


def chunk(text=None, finish=None, usage=None):
    delta = {} if text is None else {"content": text}
    ev = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
          "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        ev["usage"] = usage
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


class StreamServer(PyUpstream):
    """Answers each request with an SSE stream of `parts` (one event per write, `gap` apart),
    chunked; `cut` closes the connection before the end instead. `bodies` holds the parsed
    request bodies."""

    def __init__(self, parts, gap=0.15, cut=False):
        self.bodies = []

        def respond(h, head, body):
            self.bodies.append(json.loads(body))
            wants_usage = self.bodies[-1].get("stream_options", {}).get("include_usage")
            h.request.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
            events = [chunk("")] + [chunk(p) for p in parts]
            if not cut:
                events.append(chunk(finish="stop"))
                if wants_usage:
                    events.append(chunk(usage={"prompt_tokens": 7, "completion_tokens": 12,
                                               "total_tokens": 19}))
                events.append(b"data: [DONE]\n\n")
            for ev in events:
                h.request.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(gap)
            if not cut:
                h.request.sendall(b"0\r\n\r\n")

        super().__init__(respond)


@pytest.fixture
def stream_server():
    servers = []

    def make(*a, **kw):
        s = StreamServer(*a, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def start(sluice_factory, addr, inspect=""):
    top = "pii: { actions: { CREDIT_CARD: redact, SSN: redact } }\n"
    routes = f"- match: {{ path_prefix: /v1/ }}\n  upstream: mock\n  pii: {{}}\n{inspect}"
    return sluice_factory(upstream=addr, top_extra=top, routes=routes)


@pytest.mark.parametrize("inspect", ["", "  inspect: { include_usage: inject }\n"],
                         ids=["pii-only", "with-usage-injection"])
def test_card_split_over_deltas_is_redacted_in_the_stream(sluice_factory, stream_server, inspect):
    up = stream_server(CARD_PARTS)
    s = start(sluice_factory, up.addr, inspect)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-test", max_retries=0)
    t0 = time.time()
    arrivals, text = [], ""
    for ev in client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[{"role": "user", "content": "card?"}]):
        arrivals.append(time.time() - t0)
        # The usage chunk sluice asked for is stripped: the client never sees an empty choices list.
        assert ev.choices, ev
        text += ev.choices[0].delta.content or ""
    assert "4111" not in text and "1111 1111" not in text, text
    assert text == "Your card [REDACTED:CREDIT_CARD] is on file. Anything else?", text
    # Events are forwarded as they come (only the text's hold-back moves): the first event
    # reached the app long before the upstream's last one was written.
    assert arrivals[0] < arrivals[-1] - 0.5, arrivals
    deadline = time.time() + 5
    while time.time() < deadline and s.metric("sluice_pii_detections_total", direction="response") < 1:
        time.sleep(0.05)
    assert s.metric("sluice_pii_detections_total", entity="CREDIT_CARD", direction="response") == 1
    if inspect:
        assert up.bodies[-1]["stream_options"]["include_usage"] is True
        deadline = time.time() + 5
        while time.time() < deadline and s.metric("sluice_gen_ai_tokens_total", gen_ai_token_type="output") < 12:
            time.sleep(0.05)
        assert s.metric("sluice_gen_ai_tokens_total", gen_ai_token_type="output") == 12
    # The card never reaches the log, in any of its pieces (a bare "4111" could be a port).
    log = s.log()
    assert "4111 11" not in log and "11 1111" not in log and "1111 is on file" not in log, log


def test_every_forwarded_event_is_valid_json(sluice_factory, stream_server):
    up = stream_server(CARD_PARTS, gap=0.02)
    s = start(sluice_factory, up.addr)
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    out = raw_exchange(s.port, post(s.port, "/v1/chat/completions", body, {"Connection": "close"}))
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    # De-chunk.
    data, p = b"", 0
    while True:
        eol = rest.index(b"\r\n", p)
        n = int(rest[p:eol], 16)
        if n == 0:
            break
        data += rest[eol + 2:eol + 2 + n]
        p = eol + 2 + n + 2
    events = [e for e in data.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    text = ""
    for e in events[:-1]:
        assert e.startswith(b"data: "), e
        v = json.loads(e[6:])
        text += v["choices"][0]["delta"].get("content") or ""
    assert text == "Your card [REDACTED:CREDIT_CARD] is on file. Anything else?"


def test_stream_cut_short_releases_held_text_redacted(sluice_factory, stream_server):
    up = stream_server(["my ssn: ", "123-45-67", "89"], gap=0.05, cut=True)
    s = start(sluice_factory, up.addr)
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    out = raw_exchange(s.port, post(s.port, "/v1/chat/completions", body, {"Connection": "close"}))
    # Never dressed up as complete: no chunked terminator.
    assert not out.endswith(b"0\r\n\r\n")
    assert b"6789" not in out
    assert b"[REDACTED:SSN]" in out, out
