"""A local stand-in for three LLM APIs, good enough for the official SDK clients, unchanged.

It serves OpenAI chat completions (``POST /v1/chat/completions``), the OpenAI Responses API
(``POST /v1/responses``) and Anthropic messages (``POST /v1/messages``), each also with
``stream=True`` (server-sent events as each API sends them), on 127.0.0.1, in a daemon
thread: ``with FakeLLM() as server``. Point
``openai.OpenAI(base_url=server.openai_url)`` (ends in ``/v1``) or
``anthropic.Anthropic(base_url=server.anthropic_url)`` (no ``/v1``) at it.

The model is one deterministic script for the three APIs, driven only by the request. With
``k`` tool results already in the conversation: if tools are offered and ``k < turns`` (the
server's ``turns``, or ``TURNS=<n>`` in the last user text), it calls the first offered tool
(or, with ``TOOLS=a,b`` in the last user text, the k-th named one, cycling)
once with ``{"<first required param or first property>": "q-<k>"}`` (``k`` for integer and
number params); otherwise it answers ``"done after <k> tool results: <last result[:200]>"``,
or ``"hello: <last user text>"`` when there are neither tools nor tool results.

Token counts: prompt = characters of all message text (and system / instructions) // 4 + 1;
completion = characters of the answer text (or of the tool call's JSON arguments) // 4 + 1.

It records every API request (``requests``, ``headers``, ``count()``, ``GET /_stats``) and
injects faults (``fail_next()``, ``POST /_fail``) in each provider's own error format;
``fail_stream()`` makes the next streamed answer break off mid-way the way each API reports
it (``response.failed`` for the Responses API, an ``error`` event for Anthropic).
Run as ``python fake_llm.py --port 0 --turns N`` it prints ``ready <port>`` and serves until
killed, for tests where the server must outlive a worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MESSAGES = "/v1/messages"
PATHS = (CHAT, RESPONSES, MESSAGES)
TEXT_PARTS = ("text", "input_text")

ANTHROPIC_ERRORS = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 529: "overloaded_error"}  # fmt: skip


def _text(value: Any) -> str:
    """All the text in a message, content part list, tool result or output item."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(v) for v in value)
    if isinstance(value, dict):
        for key in ("text", "content", "output"):
            if key in value:
                return _text(value[key])
    return ""


def _user_text(content: Any) -> str:
    """The plain text of a user message (its text parts; not its tool results)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict)]
        return "".join(str(p.get("text", "")) for p in parts if p.get("type") in TEXT_PARTS)
    return ""


def _tokens(chars: int) -> int:
    return chars // 4 + 1


@dataclass
class View:
    """What the script looks at, whichever API the request came through."""

    tools: list[tuple[str, dict[str, Any]]]
    results: list[str]
    user_text: str
    prompt_chars: int


@dataclass
class Reply:
    """The scripted answer: a text, or one call of ``tool`` with ``args``."""

    k: int
    prompt_tokens: int
    text: str | None = None
    tool: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def arguments(self) -> str:
        return json.dumps(self.args)

    @property
    def completion_tokens(self) -> int:
        return _tokens(len(self.text if self.text is not None else self.arguments))


def _view(path: str, body: dict[str, Any]) -> View:
    system = _text(body.get("system") or body.get("instructions") or "")
    if path == RESPONSES:
        raw = body.get("input", "")
        items: list[Any] = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
        tools = [(t["name"], t.get("parameters") or {}) for t in body.get("tools") or []
                 if t.get("type") == "function"]  # fmt: skip
        results = [_text(i.get("output")) for i in items if i.get("type") == "function_call_output"]
    elif path == CHAT:
        items = list(body.get("messages", []))
        tools = [(t["function"]["name"], t["function"].get("parameters") or {})
                 for t in body.get("tools") or [] if t.get("type") == "function"]  # fmt: skip
        results = [_text(m.get("content")) for m in items if m.get("role") == "tool"]
    else:
        items = list(body.get("messages", []))
        tools = [(t["name"], t.get("input_schema") or {}) for t in body.get("tools") or []
                 if "name" in t]  # fmt: skip
        results = [_text(b.get("content")) for m in items if m.get("role") == "user"
                   for b in (m.get("content") if isinstance(m.get("content"), list) else [])
                   if isinstance(b, dict) and b.get("type") == "tool_result"]  # fmt: skip
    users = (_user_text(i.get("content")) for i in reversed(items) if i.get("role") == "user")
    return View(tools, results, next((u for u in users if u), ""),
                len(system) + sum(len(_text(i)) for i in items))  # fmt: skip


def decide(path: str, body: dict[str, Any], turns: int) -> Reply:
    """The scripted model: the same policy for the three APIs."""
    view = _view(path, body)
    k = len(view.results)
    asked = re.search(r"TURNS=(\d+)", view.user_text)
    turns = int(asked.group(1)) if asked else turns
    reply = Reply(k=k, prompt_tokens=_tokens(view.prompt_chars))
    order = re.search(r"TOOLS=([\w,]+)", view.user_text)
    if view.tools and k < turns:
        reply.tool, schema = view.tools[0]
        if order:  # TOOLS=a,b: the k-th call is of the k-th named tool (cycling)
            wanted = order.group(1).split(",")[k % len(order.group(1).split(","))]
            reply.tool, schema = next((t for t in view.tools if t[0] == wanted), view.tools[0])
        props: dict[str, Any] = schema.get("properties") or {}
        required: list[str] = schema.get("required") or []
        name = required[0] if required else next(iter(props), None)
        if name is not None:
            kind = (props.get(name) or {}).get("type")
            reply.args = {name: k if kind in ("integer", "number") else f"q-{k}"}
    elif view.tools or view.results:
        last = view.results[-1] if view.results else ""
        reply.text = f"done after {k} tool results: {last[:200]}"
    else:
        reply.text = f"hello: {view.user_text}"
    return reply


def _pieces(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def chat_completion(n: int, body: dict[str, Any], r: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
    if r.tool is not None:
        function = {"name": r.tool, "arguments": r.arguments}
        message["tool_calls"] = [{"id": f"call_{r.k}", "type": "function", "function": function}]
    finish = "stop" if r.tool is None else "tool_calls"
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0,
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": _chat_usage(r)}  # fmt: skip


def _chat_usage(r: Reply) -> dict[str, int]:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens}  # fmt: skip


def chat_chunks(n: int, body: dict[str, Any], r: Reply) -> Iterator[dict[str, Any]]:
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base: dict[str, Any] = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk",
                            "created": 0, "model": body.get("model", "fake")}  # fmt: skip
    if with_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    if r.tool is None:
        yield chunk({"role": "assistant", "content": ""})
        for piece in _pieces(r.text or ""):
            yield chunk({"content": piece})
    else:
        function = {"name": r.tool, "arguments": ""}
        call = {"index": 0, "id": f"call_{r.k}", "type": "function", "function": function}
        yield chunk({"role": "assistant", "content": None, "tool_calls": [call]})
        for piece in _pieces(r.arguments):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield chunk({}, "stop" if r.tool is None else "tool_calls")
    if with_usage:
        yield {**base, "choices": [], "usage": _chat_usage(r)}


def _output_item(n: int, r: Reply) -> dict[str, Any]:
    if r.tool is None:
        content: list[Any] = [{"type": "output_text", "text": r.text, "annotations": []}]
        return {"type": "message", "id": f"msg_{n}", "status": "completed",
                "role": "assistant", "content": content}  # fmt: skip
    return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{r.k}",
            "name": r.tool, "arguments": r.arguments, "status": "completed"}  # fmt: skip


def response(n: int, body: dict[str, Any], r: Reply) -> dict[str, Any]:
    item = _output_item(n, r)
    usage = {"input_tokens": r.prompt_tokens, "output_tokens": r.completion_tokens,
             "total_tokens": r.prompt_tokens + r.completion_tokens,
             "input_tokens_details": {"cached_tokens": 0},
             "output_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip
    return {"id": f"resp_{n}", "object": "response", "created_at": 0, "status": "completed",
            "model": body.get("model", "fake"), "output": [item], "error": None,
            "incomplete_details": None, "instructions": body.get("instructions"),
            "metadata": {}, "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": body.get("tools") or [], "temperature": None, "top_p": None,
            "usage": usage}  # fmt: skip


def response_events(
    n: int, body: dict[str, Any], r: Reply, failure: str | None = None
) -> Iterator[dict[str, Any]]:
    """The Responses API's stream: created, in_progress, the output item (added, its text or
    arguments in deltas, done), then completed with the whole response and its usage; with a
    ``failure`` code, ``response.failed`` after the first deltas."""
    whole = response(n, body, r)
    item = whole["output"][0]
    pending = {**whole, "status": "in_progress", "output": [], "usage": None}
    at = {"output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    if r.tool is None:
        empty = {"type": "output_text", "text": "", "annotations": []}
        part = {**at, "item_id": item["id"], "content_index": 0}
        events += [
            {"type": "response.output_item.added", **at,
             "item": {**item, "status": "in_progress", "content": []}},
            {"type": "response.content_part.added", **part, "part": empty},
            *({"type": "response.output_text.delta", **part, "delta": piece, "logprobs": []}
              for piece in _pieces(r.text or "")),
            {"type": "response.output_text.done", **part, "text": r.text, "logprobs": []},
            {"type": "response.content_part.done", **part, "part": item["content"][0]},
        ]  # fmt: skip
    else:
        call = {**at, "item_id": item["id"]}
        events += [
            {"type": "response.output_item.added", **at,
             "item": {**item, "status": "in_progress", "arguments": ""}},
            *({"type": "response.function_call_arguments.delta", **call, "delta": piece}
              for piece in _pieces(r.arguments)),
            {"type": "response.function_call_arguments.done", **call, "name": r.tool,
             "arguments": r.arguments},
        ]  # fmt: skip
    events.append({"type": "response.output_item.done", **at, "item": item})
    if failure is not None:
        error = {"code": failure, "message": f"injected stream failure {failure}"}
        failed = {**pending, "status": "failed", "error": error}
        events = [*events[:5], {"type": "response.failed", "response": failed}]
    else:
        events.append({"type": "response.completed", "response": whole})
    for number, event in enumerate(events):
        yield {**event, "sequence_number": number}


def _block(r: Reply) -> dict[str, Any]:
    if r.tool is None:
        return {"type": "text", "text": r.text}
    return {"type": "tool_use", "id": f"toolu_{r.k}", "name": r.tool, "input": r.args}


def message(n: int, body: dict[str, Any], r: Reply) -> dict[str, Any]:
    return {"id": f"msg_{n}", "type": "message", "role": "assistant",
            "model": body.get("model", "fake"), "content": [_block(r)],
            "stop_reason": "end_turn" if r.tool is None else "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": r.prompt_tokens,
                      "output_tokens": r.completion_tokens}}  # fmt: skip


def message_events(
    n: int, body: dict[str, Any], r: Reply, failure: str | None = None
) -> Iterator[dict[str, Any]]:
    """Anthropic's stream: message_start (usage so far), a ping, the block (start, its text or
    its input's JSON in deltas, stop), message_delta (stop reason, output tokens), message_stop;
    with a ``failure`` error type, an ``error`` event after the first delta."""
    start = {**message(n, body, r), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": r.prompt_tokens, "output_tokens": 1}
    yield {"type": "message_start", "message": start}
    yield {"type": "ping"}
    block = _block(r)
    empty = {**block, "text": ""} if r.tool is None else {**block, "input": {}}
    yield {"type": "content_block_start", "index": 0, "content_block": empty}
    for piece in _pieces((r.text or "") if r.tool is None else r.arguments):
        delta = ({"type": "text_delta", "text": piece} if r.tool is None
                 else {"type": "input_json_delta", "partial_json": piece})  # fmt: skip
        yield {"type": "content_block_delta", "index": 0, "delta": delta}
        if failure is not None:
            text = f"injected stream failure {failure}"
            yield {"type": "error", "error": {"type": failure, "message": text}}
            return
    yield {"type": "content_block_stop", "index": 0}
    stop = "end_turn" if r.tool is None else "tool_use"
    yield {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
           "usage": {"output_tokens": r.completion_tokens}}  # fmt: skip
    yield {"type": "message_stop"}


def error_body(path: str, status: int, text: str) -> dict[str, Any]:
    """An error in the provider's own format (Anthropic for /v1/messages, else OpenAI)."""
    if path == MESSAGES:
        fallback = "api_error" if status >= 500 else "invalid_request_error"
        kind = ANTHROPIC_ERRORS.get(status, fallback)
        return {"type": "error", "error": {"type": kind, "message": text}}
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", None
    else:
        kind, code = "invalid_request_error", "invalid_api_key" if status == 401 else None
    return {"error": {"message": text, "type": kind, "param": None, "code": code}}


@dataclass
class Fault:
    status: int
    times: int
    retry_after: float | None
    path: str | None


@dataclass
class StreamFault:
    code: str
    times: int
    path: str | None


class FakeLLM:
    """Serve on 127.0.0.1 (``port``, 0 picks a free one) in a daemon thread; use as a context
    manager. ``requests`` holds ``(path, body)`` and ``headers`` the lowercased headers of each
    API request (failed ones too), in arrival order."""

    def __init__(self, turns: int = 1, delay: float = 0.0, port: int = 0) -> None:
        self.turns = turns
        self.delay = delay
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self._faults: list[Fault] = []
        self._stream_faults: list[StreamFault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    base_url = openai_url

    @property
    def anthropic_url(self) -> str:
        return self.url

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        """Serve in the calling thread (the command-line entry does, until killed)."""
        self._server.serve_forever(poll_interval)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for p, _ in self.requests if path is None or p == path)

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(PATHS, 0)
        with self._lock:
            for p, _ in self.requests:
                counts[p] = counts.get(p, 0) + 1
        return counts

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None,
                  path: str | None = None) -> None:  # fmt: skip
        """Answer the next ``times`` requests (to ``path``, or any) with ``status``."""
        with self._lock:
            self._faults.append(Fault(status, times, retry_after, path))

    def fail_stream(self, code: str, times: int = 1, path: str | None = None) -> None:
        """Break off the next ``times`` streamed Responses API or Anthropic answers (to
        ``path``, or either) after their first deltas: ``response.failed`` with the error code
        ``code`` (``"server_error"``, ``"invalid_prompt"``...), or an Anthropic ``error`` event
        of type ``code`` (``"overloaded_error"``, ``"invalid_request_error"``...)."""
        with self._lock:
            self._stream_faults.append(StreamFault(code, times, path))

    def reset(self) -> None:
        """Forget recorded requests and pending faults."""
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self._faults.clear()
            self._stream_faults.clear()

    def _stream_failure(self, path: str) -> str | None:
        """The failure code the next stream to ``path`` ends with, if one is pending."""
        with self._lock:
            fault = next((f for f in self._stream_faults if f.path in (None, path)), None)
            if fault is None:
                return None
            fault.times -= 1
            if fault.times <= 0:
                self._stream_faults.remove(fault)
            return fault.code

    def _admit(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Fault | None]:
        with self._lock:
            self.requests.append((path, body))
            self.headers.append(headers)
            n = len(self.requests)
            fault = next((f for f in self._faults if f.path in (None, path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            return n, fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def send_json(self, status: int, payload: Any, **headers: str) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def send_events(self, events: Iterator[dict[str, Any]], named: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for event in events:
                    head = f"event: {event['type']}\n" if named else ""
                    self.wfile.write(f"{head}data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                if not named:
                    self.wfile.write(b"data: [DONE]\n\n")

            def do_GET(self) -> None:
                if urlsplit(self.path).path == "/_stats":
                    self.send_json(200, fake.stats())
                else:
                    self.send_json(404, error_body("", 404, f"no route {self.path}"))

            def do_POST(self) -> None:
                path = urlsplit(self.path).path
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self.send_json(400, error_body(path, 400, "body is not JSON"))
                    return
                if path == "/_fail":
                    fake.fail_next(int(body["status"]), int(body.get("times", 1)),
                                   body.get("retry_after"), body.get("path"))  # fmt: skip
                    self.send_json(200, {"ok": True})
                    return
                if path not in PATHS:
                    self.send_json(404, error_body(path, 404, f"no route {path}"))
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                n, fault = fake._admit(path, body, headers)
                time.sleep(fake.delay)
                rid = {"request-id" if path == MESSAGES else "x-request-id": f"req_{n}"}
                if fault is not None:
                    if fault.retry_after is not None:
                        rid["Retry-After"] = f"{fault.retry_after:g}"
                    text = f"injected fault {fault.status}"
                    self.send_json(fault.status, error_body(path, fault.status, text), **rid)
                    return
                reply = decide(path, body, fake.turns)
                if path == CHAT and body.get("stream"):
                    self.send_events(chat_chunks(n, body, reply), named=False)
                elif body.get("stream"):
                    events = message_events if path == MESSAGES else response_events
                    failure = fake._stream_failure(path)
                    self.send_events(events(n, body, reply, failure), named=True)
                else:
                    build = {CHAT: chat_completion, RESPONSES: response, MESSAGES: message}
                    self.send_json(200, build[path](n, body, reply), **rid)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    server = FakeLLM(turns=args.turns, delay=args.delay, port=args.port)
    print(f"ready {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
