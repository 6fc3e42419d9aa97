"""A real HTTP webhook receiver on 127.0.0.1 for the tests: records every request, and can be
told to answer with another status, to redirect, or to hold a request until released."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, port: int = 0):
        self.port = port
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 204
        self.location: str | None = None       # with status 3xx: a redirect
        self.hold: threading.Event | None = None
        self.holding = threading.Event()        # set while a request is held
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/vtrans"

    def start(self) -> "Receiver":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer._lock:
                    outer.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if outer.hold is not None:
                    outer.holding.set()
                    outer.hold.wait(60)
                self.send_response(outer.status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self) -> list[str]:
        with self._lock:
            return [h.get("webhook-id", "") for h, _ in self.received]

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(set(self.ids())) >= n:
                return
            time.sleep(0.1)
        raise AssertionError(f"receiver got {len(set(self.ids()))} distinct messages, expected {n}")
