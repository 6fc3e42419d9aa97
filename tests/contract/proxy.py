"""A TCP proxy in front of the real API that can cut a connection part-way, the way a load
balancer restart or a flaky network does, to test resumption against the real service."""
from __future__ import annotations

import socket
import threading


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to the upstream. A connection whose request line contains
    `cut_path` has its response cut after `cut_after` bytes, `cuts` times in all."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.cut_path: bytes | None = None
        self.cut_after = 0
        self.cuts = 0
        self.cut_done = 0
        self.requests: list[bytes] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self, path: str, after_bytes: int, times: int = 1) -> None:
        self.cut_path, self.cut_after, self.cuts = path.encode(), after_bytes, times

    def close(self) -> None:
        self._stop = True
        self._server.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        # Requests on a kept-alive connection are sequential: once a request for cut_path goes
        # up, the response bytes that follow are its response.
        state = {"armed": False, "sent": 0}
        threading.Thread(target=self._pump_up, args=(client, upstream, state), daemon=True).start()
        self._pump_down(upstream, client, state)

    def _pump_up(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                for line in data.split(b"\r\n"):
                    if line.startswith((b"GET ", b"POST ")):
                        self.requests.append(line)
                        if self.cut_path and self.cut_path in line and self.cut_done < self.cuts:
                            self.cut_done += 1
                            state["armed"], state["sent"] = True, 0
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)

    def _pump_down(self, src: socket.socket, dst: socket.socket, state: dict) -> None:
        try:
            while data := src.recv(65536):
                if state["armed"] and state["sent"] + len(data) >= self.cut_after:
                    dst.sendall(data[: max(0, self.cut_after - state["sent"])])
                    break
                dst.sendall(data)
                state["sent"] += len(data)
        except OSError:
            pass
        finally:
            _close(src, dst)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
