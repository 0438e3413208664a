"""A local stand-in for an OpenAI-compatible server: speaks the chat completions API.

It plans like a small research agent (search, fetch, fetch, save a note, answer) from how many
tool results the conversation holds, answers after ``delay`` seconds, and counts requests, so
tests can prove which model calls were really sent. Used with the real ``openai`` SDK.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PLAN: list[tuple[str, dict[str, str]] | str] = [
    ("search_web", {"query": "durable execution"}),
    ("fetch_page", {"url": "https://example.org/crash-recovery"}),
    ("fetch_page", {"url": "https://example.org/journaling"}),
    ("save_note", {"text": "Durability keeps paid calls from running twice."}),
    "Durable execution journals each step so a crash does not repeat paid work.",
]


class FakeOpenAI:
    """Serve on 127.0.0.1 (a free port) in a daemon thread; ``with FakeOpenAI() as server``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages", [])
        seen = sum(1 for m in messages if m.get("role") == "tool")
        move = PLAN[min(seen, len(PLAN) - 1)]
        message: dict[str, Any] = {"role": "assistant", "content": None}
        if isinstance(move, str):
            message["content"] = move
            finish = "stop"
        else:
            name, args = move
            function = {"name": name, "arguments": json.dumps(args)}
            message["tool_calls"] = [
                {"id": f"call_{seen}", "type": "function", "function": function}
            ]
            finish = "tool_calls"
        prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 10
        return {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": 12,
                      "total_tokens": prompt + 12},
        }  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                fake.requests.append(body)
                time.sleep(fake.delay)
                payload = json.dumps(fake.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
