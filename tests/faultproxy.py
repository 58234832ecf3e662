"""A tiny HTTP proxy in front of moto_server that injects transient faults: a 503 SlowDown
or a dropped connection (socket closed with no response), for the next `fail_next`
requests or every `every`-th request. Stop/start it on the same port to simulate the
server going away and coming back while moto (and its data) lives on.

    p = FaultProxy(upstream_port).start(); p.fail_next, p.mode = 2, "503"
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}


class FaultProxy:
    def __init__(self, upstream_port: int, port: int = 0):
        self.upstream_port = upstream_port
        self.port = port
        self.mode = "503"  # or "drop"
        self.fail_next = 0
        self.every = 0
        self.only = ""  # when set, faults hit only requests whose path contains it (".lock": the lease)
        self.delay = 0.0  # seconds each request waits before it is forwarded (a slow link: a build that lasts)
        self.undelayed = ""  # when set, requests whose path contains it are not delayed (".lock": the lease renewals)
        self.count = 0
        self.faults = 0
        self.log: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server = None
        self.conns: set = set()

    def _decide(self, path: str = "") -> bool:
        if self.only and self.only not in path:
            return False
        with self.lock:
            self.count += 1
            if self.fail_next > 0:
                self.fail_next -= 1
                self.faults += 1
                return True
            if self.every and self.count % self.every == 0:
                self.faults += 1
                return True
            return False

    def start(self) -> FaultProxy:
        proxy = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # an answer goes out in two writes (head, body): with Nagle's algorithm on, the body waits for the client's
            # delayed ACK, 40 ms a request, and a build of a thousand requests through the proxy took 40 s more
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                proxy.conns.add(self.connection)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _any(self):
                body = self._body()
                if proxy.delay and not (proxy.undelayed and proxy.undelayed in self.path):
                    time.sleep(proxy.delay)
                if proxy.mode == "lose_response" and proxy._decide(self.path):
                    # forward the request, let it take effect, then drop the connection
                    c = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                    hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    hdrs["Content-Length"] = str(len(body))
                    c.request(self.command, self.path, body=body, headers=hdrs)
                    st = c.getresponse().status
                    proxy.log.append((self.command, self.path, st))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if proxy.mode != "lose_response" and proxy._decide(self.path):
                    proxy.log.append((self.command, self.path, -1))
                    if proxy.mode == "drop":
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOWDOWN)))
                    self.end_headers()
                    self.wfile.write(SLOWDOWN)
                    return
                c = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if body or self.command in ("PUT", "POST"):
                    hdrs["Content-Length"] = str(len(body))
                c.request(self.command, self.path, body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                proxy.log.append((self.command, self.path, r.status))
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                c.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for c in list(self.conns):  # a real outage also kills the open keep-alive connections
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()
