"""The OpenAI server (``python -m vllm.entrypoints.openai.api_server``) with ``--hf-overrides``: beam search
under a policy gets a 400 naming why, greedy requests are served, and a mistyped key stops the server at start.

Each test starts the server in a subprocess over the tiny LLaVA, as docs/serving.md says to.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import ENGINE

from futuremask.integrations.vllm import PLATFORMS

START_S = 240


def command(path: str, overrides: dict, port: int) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--host", "127.0.0.1",
        "--port", str(port), "--model-impl", ENGINE["model_impl"], "--dtype", ENGINE["dtype"],
        "--max-model-len", str(ENGINE["max_model_len"]), "--kv-cache-memory-bytes", str(ENGINE["kv_cache_memory_bytes"]),
        "--enforce-eager", "--hf-overrides", json.dumps(overrides), "--worker-cls", PLATFORMS["cpu"].worker,
        "--no-enable-chunked-prefill", "--no-enable-prefix-caching",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, route: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.fixture(scope="module")
def server(tiny):
    """``(port, model path)`` of a server under ``future``."""
    path, _ = tiny
    port = free_port()
    proc = subprocess.Popen(command(path, {"futuremask_policy": "future"}, port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
        yield port, path
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


PROMPT = "USER: what color is the circle ?\nASSISTANT:"


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"prompt": PROMPT}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "what color is the circle ?"}]}),
])
def test_server_beam_search_is_refused_under_a_policy(server, route, body):
    port, path = server
    status, reply = post(port, route, {**body, "model": path, "max_tokens": 3, "n": 3, "use_beam_search": True})
    assert status == 400, reply
    assert "beam search is refused under futuremask policy 'future'" in reply["error"]["message"]


def test_server_serves_greedy_requests_under_the_policy(server):
    port, path = server
    status, reply = post(port, "/v1/completions", {"prompt": PROMPT, "model": path, "max_tokens": 3,
                                                   "temperature": 0, "ignore_eos": True})
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 3


def test_server_with_a_mistyped_key_stops_at_start(tiny):
    path, _ = tiny
    run = subprocess.run(command(path, {"futuremask_polcy": "future"}, free_port()), capture_output=True, text=True,
                         timeout=START_S)
    assert run.returncode != 0
    assert "unknown futuremask key 'futuremask_polcy'" in run.stdout + run.stderr
