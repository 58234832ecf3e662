"""Shared helpers for the S3 prototype: start moto_server in a separate process on a
free port, set the standard AWS environment, make a bucket, build both clients.

    from s3env import MotoProcess
    with MotoProcess() as m:        # sets AWS_* in os.environ
        m.make_bucket("augzarr-test")
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class MotoProcess:
    """moto_server -H 127.0.0.1 -p 0 in its own process; the port is parsed from its
    stderr line ' * Running on http://127.0.0.1:PORT'."""

    def __init__(self, port: int = 0, log: str | None = None, env: dict | None = None):
        self.env = env  # e.g. {"INITIAL_NO_AUTH_ACTION_COUNT": "4"}: check credentials after 4 requests
        self.port = port
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> MotoProcess:
        cmd = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **(self.env or {})},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited {self.proc.returncode}")
                continue
            m = re.search(r"Running on (http://127\.0\.0\.1:(\d+))", line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise RuntimeError("moto_server did not report its port")
        # keep draining stderr so the request log never blocks the server on a full pipe
        import threading

        def drain(f=self.proc.stderr):
            for _ in f:
                pass

        threading.Thread(target=drain, daemon=True).start()
        set_aws_env(self.url)
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def make_bucket(self, name: str):
        make_bucket(name)


def set_aws_env(endpoint: str):
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )


def make_bucket(name: str):
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)  # endpoint from AWS_ENDPOINT_URL


def obstore_s3(bucket: str, prefix: str | None = None, **kw):
    """obstore S3Store from the standard env. allow_http is needed for http:// endpoints;
    obstore reads AWS_ENDPOINT_URL itself (S3Store.__init__ merges the env)."""
    from obstore.store import S3Store

    kw.setdefault("client_options", {"allow_http": True})
    return S3Store(bucket, prefix=prefix, **kw)


def s3fs_fs(asynchronous=False, **kw):
    """s3fs from the standard env (botocore >= 1.31 reads AWS_ENDPOINT_URL)."""
    import s3fs

    return s3fs.S3FileSystem(asynchronous=asynchronous, **kw)
