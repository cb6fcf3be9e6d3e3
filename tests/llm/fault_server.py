"""An OpenAI-compatible chat server on loopback that misbehaves on request.

Each POST /v1/chat/completions takes the next fault from `script` ("ok" once it is empty),
so a test spells out exactly what the client meets. The client's preflight (max_tokens 1, no
response_format) is answered "ok" without consuming the script unless `fault_preflight` is
set; `always` applies one fault to every request. Requests are recorded (body, time, fault,
whether the bearer key matched) for the assertions.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], dict[str, Any]]

FAULTS = (
    "ok", "malformed", "wrong_shape", "nan", "out_of_range", "control_chars", "fenced",
    "not_json_at_all", "429", "500", "hang", "401", "403",
)


def _grid_from_schema(body: dict[str, Any]) -> tuple[int, int] | None:
    """(rows, cols) from the schema the client sent, when it sent one."""
    fmt = body.get("response_format") or {}
    schema = fmt.get("schema") or (fmt.get("json_schema") or {}).get("schema")
    if not schema:
        return None
    grid = schema["properties"]["mean_genome"]
    return grid["minItems"], grid["items"]["minItems"]


class FaultServer:
    """Start with `start()`, point a client at `.url`, stop with `stop()`."""

    def __init__(self, api_key: str | None = None, rows: int = 2, cols: int = 2) -> None:
        self.api_key = api_key
        self.rows, self.cols = rows, cols
        self.script: deque[str] = deque()
        self.always: str | None = None
        self.fault_preflight = False
        self.reject_json_schema = False
        self.reject_json_object = False
        self.reject_status = 400  # llama-cpp-python's server rejects json_schema with a 500
        self.retry_after: str | None = "1"
        self.hang_s = 30.0
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer = self.default_answer
        self._release = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [
                        {"id": "fault-model", "object": "model", "owned_by": "tests"}
                    ]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                server.handle(self, body)

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None,
                      raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    # ---- behaviour ------------------------------------------------------------------------
    def default_answer(self, body: dict[str, Any]) -> dict[str, Any]:
        rows, cols = _grid_from_schema(body) or (self.rows, self.cols)
        grid = [[60 + 5 * ((r + c) % 3) for c in range(cols)] for r in range(rows)]
        return {"thought": "push the weights up a little", "mean_genome": grid}

    def chat_requests(self) -> list[dict[str, Any]]:
        """The recorded chat bodies, preflight excluded."""
        return [r["body"] for r in self.requests if not r["preflight"]]

    def handle(self, handler: Any, body: dict[str, Any]) -> None:
        auth = handler.headers.get("Authorization", "")
        key_ok = self.api_key is None or auth == f"Bearer {self.api_key}"
        preflight = body.get("max_tokens") == 1 and "response_format" not in body
        with self._lock:
            if self.always:
                fault = self.always
            elif preflight and not self.fault_preflight:
                fault = "ok"
            else:
                fault = self.script.popleft() if self.script else "ok"
            self.requests.append({"body": body, "time": time.monotonic(), "fault": fault,
                                  "key_ok": key_ok, "preflight": preflight})
        if fault in ("401", "403") or not key_ok:
            status = 403 if fault == "403" else 401
            handler._json(status, {"error": {
                "message": "Incorrect API key provided.", "type": "invalid_request_error",
                "code": "invalid_api_key"}})
            return
        if fault == "429":
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            handler._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                          headers)
            return
        if fault == "500":
            handler._json(500, {"error": {"message": "internal error", "type": "server_error"}})
            return
        if fault == "hang":
            self._release.wait(self.hang_s)
            fault = "ok"
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema" and self.reject_json_schema:
            handler._json(self.reject_status, {"error": {
                "message": "1 validation error: {'type': 'literal_error', 'loc': ('body', "
                           "'response_format', 'type'), 'msg': \"Input should be 'text' or "
                           "'json_object'\", 'input': 'json_schema'}",
                "type": "invalid_request_error", "param": "response_format"}})
            return
        if fmt == "json_object" and self.reject_json_object:
            handler._json(422, {"detail": [{"loc": ["body", "response_format"],
                                            "msg": "unsupported response_format"}]})
            return
        handler._json(200, self._completion(body, self._content(fault, body)))

    def _content(self, fault: str, body: dict[str, Any]) -> str:
        answer = self.answer(body)
        grid = answer["mean_genome"]
        if fault == "ok":
            return json.dumps(answer)
        if fault == "malformed":
            return json.dumps(answer)[:-7]  # cut off mid-list
        if fault == "not_json_at_all":
            return "I think the weights should go up in the later layers."
        if fault == "wrong_shape":
            return json.dumps({**answer, "mean_genome": [*grid, grid[0]]})
        if fault == "nan":
            text = json.dumps({**answer, "mean_genome": [[0] * len(r) for r in grid]})
            return text.replace("[0", "[NaN", 1)
        if fault == "out_of_range":
            bad = [list(r) for r in grid]
            bad[-1][-1] = 150
            return json.dumps({**answer, "mean_genome": bad})
        if fault == "control_chars":
            return ('{"thought": "line one\nline\ttwo", "mean_genome": '
                    + json.dumps(grid) + "}")
        if fault == "fenced":
            return "Here is my proposal:\n```json\n" + json.dumps(answer) + "\n```\nGood luck!"
        raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")

    @staticmethod
    def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fault-model"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


class ConnectionCounter:
    """A loopback port where no server answers: it accepts each connection, counts it and
    hangs up, so a request there fails as "unreachable" and `connections` tells whether
    anything tried to talk to it. Use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1  # counted before the client can see the hang-up
            conn.close()

    def __enter__(self) -> ConnectionCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
