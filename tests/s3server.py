"""A real S3-compatible server for the tests and benchmarks: moto's server mode in its own process on
127.0.0.1, on a free port, with the standard AWS environment that points every client at it.

    with MotoServer() as server:
        server.make_bucket("augzarr-test")
        run_cli("build-aug", ..., env=server.env)

Its own process, not a thread of the test process: a build's workers and the test both talk to it over
HTTP as they would to S3, and it can be started with credential checks on (auth=True).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TEST_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# moto checks signatures only after this many requests when asked to (INITIAL_NO_AUTH_ACTION_COUNT):
# the free ones create a user, its key, a policy allowing everything, and the bucket
FREE_REQUESTS_WITH_AUTH = 4


class MotoServer:
    def __init__(self, auth: bool = False):
        self.auth = auth
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.env: dict[str, str] = {}

    def start(self) -> MotoServer:
        extra = {"INITIAL_NO_AUTH_ACTION_COUNT": str(FREE_REQUESTS_WITH_AUTH)} if self.auth else {}
        self.process = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, **extra},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if match := re.search(r"Running on (http://127\.0\.0\.1:\d+)", line):
                self.url = match.group(1)
                break
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
        else:
            raise RuntimeError("moto_server did not say which port it took")
        # its request log goes on: keep reading it, or the server blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()
        self.env = endpoint_env(self.url)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def make_bucket(self, name: str) -> None:
        client(self.url).create_bucket(Bucket=name)

    def make_user(self) -> dict[str, str]:
        """With auth: a user allowed everything, and its keys (3 of the free requests)."""
        import boto3

        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1", **lower(TEST_KEYS))
        iam.create_user(UserName="augzarr")
        key = iam.create_access_key(UserName="augzarr")["AccessKey"]
        iam.put_user_policy(
            UserName="augzarr",
            PolicyName="all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}',
        )
        return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def endpoint_env(url: str, keys: dict[str, str] = TEST_KEYS) -> dict[str, str]:
    return {**keys, "AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}


def lower(keys: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": keys["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": keys["AWS_SECRET_ACCESS_KEY"]}


def client(url: str, keys: dict[str, str] = TEST_KEYS):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", **lower(keys))
