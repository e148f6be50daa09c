"""A thin client of TorchServe's management and inference APIs, with token authorization.

Every call raises TorchServeError (a MarError) with TorchServe's own message when the answer is not
a 2xx, unless the caller passes `check=False` and reads the status itself.

TorchServe writes fresh tokens to `key_file.json` at every start and expires the management and
inference tokens after `token_expiration_min`. The client reads the file for each call, so it keeps
working across restarts, and when TorchServe refuses an expired token (with HTTP 400, not 401) it
asks for a new one with the non-expiring API key and retries once.

The request and response bodies of every protocol are built and read here (`our_request`,
`our_outputs`, `oip_request`, `oip_outputs`), with the handler's own wire format
(handlers/protocols/oip_wire.py): nothing else assembles them by hand.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np

from handlers.errors import MarError, ServerError, TorchServeError
from handlers.protocols.oip_wire import message, read_tensors
from handlers.spec import ServingSpec
from scripts.config import ServerConfig

__all__ = ["TorchServeClient", "Response", "our_request", "our_outputs", "oip_request", "oip_outputs"]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        """TorchServe's error message, or the raw body when it is not TorchServe's error JSON."""
        try:
            return str(self.json().get("message", self.body.decode()))
        except (ValueError, AttributeError):
            return self.body.decode(errors="replace")


class TorchServeClient:
    def __init__(self, config: ServerConfig, *, timeout_s: float = 600.0) -> None:
        self.config = config
        self.timeout_s = timeout_s

    # ---- inference API ----
    def ping_status(self) -> str | None:
        """`Healthy`/`Unhealthy`, another word if it answers oddly, None when nothing listens."""
        url = self.config.inference_url + "/ping"
        try:
            if self.config.key_file.exists():
                response = self._call("GET", url, key_kind="inference", timeout_s=5)
            else:  # still starting, or not ours: any answer means something listens
                response = self._send("GET", url, key=None, timeout=5)
        except (MarError, OSError):
            return None
        try:
            return str(response.json().get("status"))
        except (ValueError, AttributeError):
            return f"HTTP {response.status}"

    def predict(self, name: str, body: bytes, *, version: str | None = None,
                content_type: str = "application/json", check: bool = True) -> Response:
        path = f"/predictions/{quote(name)}" + (f"/{quote(version)}" if version else "")
        response = self.post(path, body, content_type=content_type)
        return _checked(response, f"predicting with {name} {version or ''}".rstrip(), check)

    def infer_v2(self, name: str, body: bytes, *, json_length: int | None = None,
                 check: bool = True) -> Response:
        """The Open Inference Protocol's /v2/models/<name>/infer: JSON, or the binary extension
        when `json_length` says where the JSON header ends."""
        binary = json_length is not None
        response = self.post(f"/v2/models/{quote(name)}/infer", body,
                             content_type="application/octet-stream" if binary else "application/json",
                             headers={"Inference-Header-Content-Length": str(json_length)} if binary else None)
        return _checked(response, f"inferring with {name}", check)

    def post(self, path: str, body: bytes, *, content_type: str,
             headers: dict[str, str] | None = None) -> Response:
        """POST to the inference API (its answer, whatever the status)."""
        return self._call("POST", self.config.inference_url + path, key_kind="inference", body=body,
                          content_type=content_type, headers=headers)

    # ---- management API ----
    def register(self, url: str, *, serving: ServingSpec | None = None,
                 initial_workers: int | None = None, check: bool = True) -> Response:
        """Register synchronously: the answer comes once the workers are up (or failed). Batch
        settings come from `serving` (else the archive's model-config.yaml)."""
        params = serving.register_params(initial_workers=initial_workers) if serving else \
            {"initial_workers": 1 if initial_workers is None else initial_workers}
        query = urlencode({"url": url, "synchronous": "true", **params})
        response = self._call("POST", f"{self.config.management_url}/models?{query}",
                              key_kind="management")
        return _checked(response, f"registering {url}", check)

    def scale(self, name: str, version: str | None, *, min_workers: int,
              max_workers: int) -> Response:
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        query = urlencode({"min_worker": min_workers, "max_worker": max_workers,
                           "synchronous": "true"})
        response = self._call("PUT", f"{self.config.management_url}{path}?{query}",
                              key_kind="management")
        return _checked(response, f"scaling {name} {version or '(default version)'}", True,
                        _LISTS_MODELS)

    def set_default(self, name: str, version: str) -> Response:
        response = self._call("PUT", f"{self.config.management_url}/models/{quote(name)}/"
                              f"{quote(version)}/set-default", key_kind="management")
        return _checked(response, f"making {name} {version} the default version", True,
                        _LISTS_MODELS)

    def default_version(self, name: str) -> str | None:
        """The version /predictions/<name> goes to, or None when `name` is not registered."""
        response = self._call("GET", f"{self.config.management_url}/models/{quote(name)}",
                              key_kind="management")
        return response.json()[0]["modelVersion"] if response.ok else None

    def unregister(self, name: str, version: str | None = None, *, check: bool = True) -> Response:
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        deadline, raced = time.monotonic() + 60, False
        while True:
            response = self._call("DELETE", self.config.management_url + path, key_kind="management")
            # Right after load, TorchServe 0.12 sometimes answers 500 (ConcurrentModification-
            # Exception, or a NullPointerException on a finished job) while the model's workers
            # settle, having removed the model or not: ask again until it says the model is gone
            # (a 404 after such a 500 means the earlier call did it).
            if raced and response.status == 404:
                response = Response(200, b'{"status": "unregistered (TorchServe raced)"}')
            if response.status != 500 or time.monotonic() > deadline:
                break
            raced = True
            time.sleep(0.5)
        return _checked(response, f"unregistering {name} {version or '(default version)'}", check,
                        _LISTS_MODELS)

    def list_models(self) -> list[dict]:
        """Every registered model name with its default archive (follows pagination)."""
        models, token = [], None
        while True:
            query = urlencode({"limit": 100, **({"next_page_token": token} if token else {})})
            response = self._call("GET", f"{self.config.management_url}/models?{query}",
                                  key_kind="management")
            page = _checked(response, "listing models", True).json()
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, name: str, version: str | None = "all") -> list[dict]:
        """TorchServe's description of `version` of `name` ("all" versions; None: the default)."""
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        response = self._call("GET", self.config.management_url + path, key_kind="management")
        if not response.ok:
            raise ServerError(f"TorchServe has no model {name} {version or ''}(HTTP {response.status}: "
                           f"{response.message}). `mar models` lists what is registered.")
        return response.json()

    def is_registered(self, name: str, version: str) -> bool:
        response = self._call("GET", f"{self.config.management_url}/models/{quote(name)}/"
                              f"{quote(version)}", key_kind="management")
        return response.ok

    # ---- transport ----
    def _call(self, method: str, url: str, *, key_kind: str, body: bytes | None = None,
              content_type: str | None = None, headers: dict[str, str] | None = None,
              timeout_s: float | None = None) -> Response:
        timeout = timeout_s or self.timeout_s
        try:
            response = self._send(method, url, key=self.config.key(key_kind), body=body,
                                  content_type=content_type, headers=headers, timeout=timeout)
            if _token_refused(response):
                self._renew(key_kind)
                response = self._send(method, url, key=self.config.key(key_kind), body=body,
                                      content_type=content_type, headers=headers, timeout=timeout)
            return response
        except OSError as err:
            if body is not None and len(body) > 1_000_000 and isinstance(
                    err, (ConnectionError, urllib.error.URLError)):
                raise ServerError(f"TorchServe closed the connection while receiving a {len(body):,} "
                               "byte body: it refuses bodies over max_request_size in "
                               f"{self.config.path} (HTTP 413). Send smaller requests or raise "
                               "max_request_size deliberately.") from None
            raise ServerError(f"cannot reach TorchServe at {url} ({err}). Is it running? "
                           f"`mar serve status --config {self.config.path}` tells.") from None

    def _renew(self, key_kind: str) -> None:
        """Have TorchServe replace an expired key; it rewrites key_file.json."""
        response = self._send("GET", f"{self.config.management_url}/token?type={key_kind}",
                              key=self.config.key("API"), timeout=30)
        if not response.ok:
            raise ServerError(f"TorchServe refused the {key_kind} token and would not issue a new one "
                           f"(HTTP {response.status}: {response.message}). Is {self.config.key_file} "
                           "from the running server?")

    @staticmethod
    def _send(method: str, url: str, *, key: str | None, body: bytes | None = None,
              content_type: str | None = None, headers: dict[str, str] | None = None,
              timeout: float) -> Response:
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, answer.read(), dict(answer.headers))
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read(), dict(err.headers))


def our_request(values: dict[str, Any]) -> bytes:
    """Our protocol's JSON body: {"inputs": value} for one input, {"inputs": {name: value}} for
    several; tensors and arrays as nested lists."""
    plain = {name: v.tolist() if hasattr(v, "tolist") else v for name, v in values.items()}
    return json.dumps({"inputs": plain if len(plain) > 1 else next(iter(plain.values()))}).encode()


def our_outputs(response: Response, output_names: list[str]) -> dict[str, Any]:
    """Our protocol's outputs by name (a one-output model answers its rows alone)."""
    outputs = response.json()["outputs"]
    return outputs if isinstance(outputs, dict) else {output_names[0]: outputs}


def oip_request(tensors: dict[str, np.ndarray], *, binary: bool,
                binary_output: bool = False) -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol request of `tensors` (JSON, or the binary extension) and the
    headers it needs; `binary_output` asks for binary outputs."""
    extra = {"parameters": {"binary_data_output": True}} if binary_output else None
    return message("inputs", tensors, binary=binary, extra=extra)


def oip_outputs(response: Response) -> dict[str, np.ndarray]:
    """The output tensors of an Open Inference Protocol response, JSON or binary, by name."""
    return read_tensors(response.body, response.headers)


_LISTS_MODELS = "`mar models` lists what is registered."


def _checked(response: Response, action: str, check: bool, hint: str = "") -> Response:
    if check and not response.ok:
        raise TorchServeError(action, response, hint)
    return response


def _token_refused(response: Response) -> bool:
    """TorchServe answers a missing, wrong or expired token with 400 InvalidKeyException."""
    return response.status == 400 and b"Token Authorization failed" in response.body
