"""A real S3-compatible server for the tests: moto's server mode (`pip install 'moto[server]'`) in
its own process on a free port. The code under test reaches it exactly as it reaches AWS or MinIO
in production: an s3:// artifact URL plus the standard AWS_ENDPOINT_URL / AWS_* variables."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "vtrans-test", "AWS_SECRET_ACCESS_KEY": "vtrans-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, port: int, log_path):
        self.port, self.log_path = port, log_path
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}
        self.proc = None

    def start(self, timeout: float = 900) -> None:   # moto imports slowly on a loaded machine
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, open(self.log_path).read()
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
                return
            except urllib.error.HTTPError:
                return          # it answered (an error page for GET /): up
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"moto server not up after {timeout}s")

    def new_bucket(self) -> str:
        import s3fs

        name = f"vtrans-{secrets.token_hex(4)}"
        s3fs.S3FileSystem(anon=False, client_kwargs={"endpoint_url": self.endpoint}, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).mkdir(name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint}, key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        root = f"{bucket}/{prefix}".rstrip("/")
        return sorted(p[len(bucket) + 1:] for p in fs.find(root)) if fs.exists(root) else []

    def log(self) -> str:
        """The server's request log (one line per S3 call)."""
        self._log.flush()
        return open(self.log_path, errors="replace").read()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
