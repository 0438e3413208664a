"""A local fake OpenAI-compatible chat server for the agent scenario of ``bench/compare.py``.

``POST /v1/chat/completions`` answers, after ``latency_ms`` milliseconds (``time.sleep``), an
OpenAI ``chat.completion``. It decides by counting the messages with role ``tool`` in the
request: fewer than ``turns - 1`` → a call of the tool ``lookup`` with ``{"n": count}``;
otherwise the final assistant text ``"done"``. So a conversation makes exactly ``turns`` calls.
The answers carry ``usage`` token counts (about four characters a token) and deterministic ids,
so a replayed conversation sees the same answers.

Importable: ``start(latency_ms, turns) -> (base_url, stop)`` serves from a daemon thread.
Runnable: ``python bench/_fake_llm.py --port 0 --latency-ms 50 --turns 50`` prints
``URL <base_url>`` and serves until interrupted. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer(request: dict[str, Any], turns: int) -> dict[str, Any]:
    """The chat.completion for ``request``, by the number of tool results it holds."""
    messages = request.get("messages") or []
    count = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
    message: dict[str, Any]
    if count < turns - 1:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{count}",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"n": count})},
                }
            ],
        }
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": "done"}
        finish = "stop"
    prompt_tokens = max(1, len(json.dumps(messages)) // 4)
    completion_tokens = max(1, len(json.dumps(message)) // 4)
    return {
        "id": f"chatcmpl-fake-{count}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(request.get("model") or "fake"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def make_handler(latency_ms: float, turns: int) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one latency and one conversation length."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real API

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every answer on a kept-alive connection.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                request = json.loads(body or b"{}")
            except ValueError as exc:
                self._send(400, {"error": {"message": f"bad JSON: {exc}"}})
                return
            if request.get("stream"):
                self._send(400, {"error": {"message": "streaming is not supported"}})
                return
            time.sleep(latency_ms / 1000.0)
            self._send(200, answer(request, turns))

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def start(
    latency_ms: float, turns: int, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve from a daemon thread; returns the base URL (``http://host:port/v1``) and a
    function that stops the server."""
    server = ThreadingHTTPServer((host, port), make_handler(latency_ms, turns))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-llm", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return f"http://{host}:{server.server_address[1]}/v1", stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible chat server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--turns", type=int, default=50, help="LLM calls per conversation")
    args = parser.parse_args(argv)
    base_url, stop = start(args.latency_ms, args.turns, args.host, args.port)
    print(f"URL {base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
