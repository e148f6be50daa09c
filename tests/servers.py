"""Real servers the repository tests start on loopback, and the network between them and a client:

    S3Server      moto's standalone S3 server (scripts/bench/loopback_s3.py) with IAM
                  authentication on: a user with a key that may use S3, and keys it refuses
    HTTPSServer   a folder served over HTTPS with a certificate from a CA the test makes (trustme)
    Proxy         a TCP proxy in front of a server, where a test breaks the network: drop a
                  connection after N bytes, stall it, or act when a request passes
The clients are the real ones (boto3, urllib) through their standard variables.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from scripts.bench.loopback_s3 import LoopbackS3


class S3Server(LoopbackS3):
    """moto's S3 server with authentication: its first actions create a user allowed s3:*, then
    every request must be signed with a key moto knows (`key_id`, `secret`)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, auth_free_actions=3)

    def start(self) -> "S3Server":
        super().start()
        self.key_id, self.secret = self._make_user()
        return self

    def _make_user(self) -> tuple[str, str]:
        import boto3

        iam = boto3.session.Session().client("iam", endpoint_url=self.endpoint,
                                             region_name="us-east-1", aws_access_key_id="setup",
                                             aws_secret_access_key="setup")
        iam.create_user(UserName="publisher")
        key = iam.create_access_key(UserName="publisher")["AccessKey"]
        iam.put_user_policy(UserName="publisher", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                     "Resource": "*"}]}))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        return super().env(self.key_id, self.secret, endpoint)

    def client(self):
        return super().client(self.key_id, self.secret)


class HTTPSServer:
    """`root` served over HTTPS on loopback, its certificate issued by a CA made here; the CA's
    bundle is at `ca_file` (what SSL_CERT_FILE names on a client)."""

    def __init__(self, root: Path, workdir: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        self.ca_file = workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class Proxy:
    """A TCP proxy on loopback in front of `port`. Faults, armed by a test, apply to
    connections opened after they are set:
        drop_after(n)       close the connection once n bytes came back from the server
        stall_after(n)      stop forwarding what the client sends after n bytes (a publish hangs)
        stall_on(b)         stop forwarding from the first client bytes that contain b
        on_request(b, fn)   call fn() before forwarding client bytes that contain b
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.drop, self.stall, self.hooks = None, None, []
        self.stalled, self._closed = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_after(self, count: int | None) -> None:
        self.drop = count

    def stall_after(self, count: int | None) -> None:
        self.stall = count

    def stall_on(self, marker: bytes) -> None:
        self.hooks.append([marker, None])

    def on_request(self, marker: bytes, action: Callable[[], None]) -> None:
        self.hooks.append([marker, action])

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        sent, limit = 0, self.drop if direction == "down" else self.stall
        try:
            while data := source.recv(1 << 16):
                stall = False
                if direction == "up":
                    for hook in [h for h in self.hooks if h[0] in data]:
                        self.hooks.remove(hook)
                        if hook[1] is None:
                            stall = True
                        else:
                            hook[1]()
                if stall or limit is not None and sent + len(data) > limit:
                    sink.sendall(b"" if stall else data[:limit - sent])
                    if direction == "up":
                        self.stalled.set()
                        self._closed.wait()  # hold the connection open, forwarding nothing
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
