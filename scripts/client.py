"""A thin client of TorchServe's management and inference APIs, with token authorization.

TorchServe writes fresh tokens to `key_file.json` at every start; the client reads them for each call,
so it keeps working across restarts without any token handling by the user.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from scripts.config import ServerConfig
from scripts.errors import MarError

__all__ = ["TorchServeClient", "Response"]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

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
        try:
            key = self.config.key("inference") if self.config.key_file.exists() else None
            response = self._send("GET", self.config.inference_url + "/ping", key=key, timeout=5)
        except (MarError, OSError):
            return None
        try:
            return str(response.json().get("status"))
        except (ValueError, AttributeError):
            return f"HTTP {response.status}"

    def predict(self, name: str, body: bytes, *, version: str | None = None) -> Response:
        path = f"/predictions/{quote(name)}" + (f"/{quote(version)}" if version else "")
        return self._call("POST", self.config.inference_url + path, key_kind="inference",
                          body=body, content_type="application/json")

    # ---- management API ----
    def register(self, url: str, *, initial_workers: int) -> Response:
        query = urlencode({"url": url, "initial_workers": initial_workers, "synchronous": "true"})
        return self._call("POST", f"{self.config.management_url}/models?{query}",
                          key_kind="management")

    def unregister(self, name: str, version: str | None = None) -> Response:
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        return self._call("DELETE", self.config.management_url + path, key_kind="management")

    def list_models(self) -> list[dict]:
        """Every registered model name with its default archive (follows pagination)."""
        models, token = [], None
        while True:
            query = urlencode({"limit": 100, **({"next_page_token": token} if token else {})})
            page = self._call("GET", f"{self.config.management_url}/models?{query}",
                              key_kind="management").json()
            models += page.get("models", [])
            token = page.get("nextPageToken")
            if not token:
                return models

    def describe(self, name: str, version: str | None = "all") -> list[dict]:
        """TorchServe's description of `version` of `name` ("all" versions; None: the default)."""
        path = f"/models/{quote(name)}" + (f"/{quote(version)}" if version else "")
        response = self._call("GET", self.config.management_url + path, key_kind="management")
        if response.status != 200:
            raise MarError(f"TorchServe has no model {name} {version or ''}(HTTP {response.status}: "
                           f"{response.message}). `mar models` lists what is registered.")
        return response.json()

    # ---- transport ----
    def _call(self, method: str, url: str, *, key_kind: str, body: bytes | None = None,
              content_type: str | None = None) -> Response:
        try:
            return self._send(method, url, key=self.config.key(key_kind), body=body,
                              content_type=content_type, timeout=self.timeout_s)
        except OSError as err:
            raise MarError(f"cannot reach TorchServe at {url} ({err}). Is it running? "
                           f"`mar serve status --config {self.config.path}` tells.") from None

    @staticmethod
    def _send(method: str, url: str, *, key: str | None, body: bytes | None = None,
              content_type: str | None = None, timeout: float) -> Response:
        request = urllib.request.Request(url, data=body, method=method)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Response(answer.status, answer.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, err.read())
