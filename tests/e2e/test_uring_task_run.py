"""`io_uring_task_run: coop | defer`: the worker's ring created with other task-run flags must
still stream SSE as it arrives, keep connections alive, and drain."""

import socket
import time

import openai
import pytest

from test_dataplane import post, split_response
from conftest import chat_body


@pytest.mark.parametrize("mode", ["coop", "defer"])
def test_task_run_mode_streams_and_keeps_alive(mock, sluice_factory, mode):
    s = sluice_factory(upstream=mock.addr, top_extra=f"io_uring_task_run: {mode}\n")
    assert "refused by the kernel" not in s.log(), s.log()
    assert '"driver":"io_uring"' in s.log(), "the io_uring driver must be the one tested"

    # SSE events 150 ms apart arrive 150 ms apart: deferred completion work must not hold a
    # chunk until some later event.
    req = post(s.port, "/v1/chat/completions", chat_body(stream=True),
               {"x-mock-itl-ms": "150", "x-mock-tokens": "4", "Connection": "close"})
    sock = socket.create_connection(("127.0.0.1", s.port))
    t0 = time.monotonic()
    sock.sendall(req)
    buf, arrivals = b"", []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        arrivals.append(time.monotonic() - t0)
    sock.close()
    assert split_response(buf)[0] == 200
    distinct = sorted(set(round(t, 2) for t in arrivals))
    assert len(distinct) >= 4, f"chunks were held back: {arrivals}"

    # Many requests over one keep-alive connection (the SDK's pool), each answered.
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="sk-test", max_retries=0)
    for _ in range(50):
        r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert r.usage.completion_tokens > 0
    assert s.stop() == 0
