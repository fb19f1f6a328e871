"""A small HTTP relay in front of a real server: counts requests and injects faults.

It forwards every POST to the upstream server unchanged (headers included) and returns its
answer, unless a fault is queued for that request: an HTTP status (429, 503, ...) answered
by the relay itself, "drop" (the connection closed with no answer, as a dying server does),
"stall" (no answer for `stall_s` seconds, then dropped), or "echo_key" (a 401 that quotes
the Authorization header back, as hosted APIs do). `rewrite` may change the upstream's
successful answers, to add what another server would (vLLM's log-probabilities).
If the upstream cannot be reached, the connection is dropped the same way.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Relay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")  # http://127.0.0.1:PORT
        self.faults: deque[int | str] = deque()
        self.forwarded = 0  # requests the upstream answered
        self.injected: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.after_forward: Callable[[int], None] | None = None
        # changes the upstream's successful JSON answers (adds what another server would)
        self.rewrite: Callable[[dict], dict] | None = None
        self.barrier: threading.Barrier | None = None  # hold requests until N are in flight
        self.stall_s = 10.0
        self.lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                relay.handle(self)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/v1"

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
        auth = request.headers.get("Authorization")
        with self.lock:
            self.authorizations.append(auth)
            fault = self.faults.popleft() if self.faults else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.barrier is not None:
                self.barrier.wait()
            if fault is not None:
                self.injected[str(fault)] += 1
                self.inject(request, fault, auth)
                return
            try:
                status, answer = self.forward(request, body)
            except OSError:  # the server is gone: so is the connection
                request.close_connection = True
                return
            with self.lock:
                self.forwarded += 1
                count = self.forwarded
            if self.after_forward is not None:  # before the client hears back: no race
                self.after_forward(count)
            if self.rewrite is not None and 200 <= status < 300:
                answer = json.dumps(self.rewrite(json.loads(answer))).encode()
            self.reply(request, status, answer)
        finally:
            with self.lock:
                self.in_flight -= 1

    def forward(self, request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, bytes]:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        upstream = urllib.request.Request(self.upstream + request.path, data=body,
                                          headers=headers, method="POST")
        try:
            with urllib.request.urlopen(upstream, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, body: bytes,
              headers: dict[str, str] | None = None) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(body)

    def inject(self, request: BaseHTTPRequestHandler, fault: int | str, auth: str | None) -> None:
        if fault in ("drop", "stall"):
            if fault == "stall":
                time.sleep(self.stall_s)
            request.close_connection = True
        elif fault == "echo_key":
            message = f"Incorrect API key provided: {auth}"
            self.reply(request, 401, json.dumps({"error": {"message": message}}).encode())
        else:
            body = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
            self.reply(request, int(fault), body, {"Retry-After": "0"})
