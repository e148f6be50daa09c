"""Stands in for KServe's wrapper in the pod (tests/kserve/pod.sh): waits as it does for a READY
worker through TorchServe's management API (no token), sends one v1 request, writes the answer as
JSON to ANSWER.json (TorchServe logs to the same stdout), stops TorchServe.

    python probe.py MODEL REQUEST.json ANSWER.json
"""

import json
import subprocess
import sys
import time
import urllib.request

BASE = "http://127.0.0.1:8085"  # the exported config's address, inside the pod


def ready(model: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{BASE}/models/{model}", timeout=5) as answer:
                if any(w["status"] == "READY" for w in json.loads(answer.read())[0]["workers"]):
                    return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{model} never had a READY worker")


def main(model: str, request_path: str, answer_path: str) -> None:
    ready(model)
    request = urllib.request.Request(f"{BASE}/v1/models/{model}:predict",
                                     data=open(request_path, "rb").read(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        result = {"status": answer.status, "body": json.loads(answer.read())}
    with open(answer_path, "w") as out:
        json.dump(result, out)
    subprocess.run(["torchserve", "--stop"], check=True, capture_output=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
