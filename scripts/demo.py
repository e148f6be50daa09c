"""`make demo`: train the digits CNN, build its archive, serve it, and measure it through TorchServe.

Steps, each through the same code a user runs: train and save only the state_dict, `mar build`,
`mar serve start`, `mar register`, one HTTP request per held-back test image, `mar serve stop`.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from handlers.spec import load_spec
from scripts.build import build_archive
from scripts.client import TorchServeClient
from scripts.config import DEFAULT_CONFIG, DEMO_SPEC, REPO_ROOT, read_config
from scripts.digits import accuracy, load_split, save_state_dict, train
from handlers.errors import MarError
from scripts.manage import register_archive
from scripts.server import start_server, stop_server

MIN_ACCURACY = 0.95


def main() -> int:
    spec = load_spec(DEMO_SPEC)
    config = read_config(DEFAULT_CONFIG)
    split = load_split()

    started = time.perf_counter()
    model = train(split, spec.params)
    weights = REPO_ROOT / spec.weights  # the spec's path, read relative to the repo
    save_state_dict(model, weights)
    print(f"trained {spec.arch} in {time.perf_counter() - started:.1f} s on "
          f"{len(split.train_labels)} images; eager test accuracy "
          f"{accuracy(model, split.test_images, split.test_labels):.2%}; state_dict -> {weights}")

    result = build_archive(DEMO_SPEC, export_path=config.model_store)
    print(f"built {result.archive}")

    start_server(config, restore=False)  # the demo starts from an empty server
    print(f"TorchServe started ({config.path})")
    try:
        register_archive(config, result.archive, workers=1)
        print(f"registered {spec.name} {spec.version}")
        client = TorchServeClient(config)
        correct, latencies_ms = _predict_all(client, spec.name, split)
        client.unregister(spec.name, spec.version)  # so the next `mar serve start` starts empty
    finally:
        stop_server(config)
        print("TorchServe stopped")

    served_accuracy = correct / len(split.test_labels)
    p50 = statistics.median(latencies_ms)
    p99 = statistics.quantiles(latencies_ms, n=100)[98]
    print(f"\naccuracy through TorchServe: {served_accuracy:.2%} on {len(split.test_labels)} "
          f"held-back images (bar: {MIN_ACCURACY:.0%})")
    print(f"request latency: median {p50:.1f} ms, p99 {p99:.1f} ms (one image per request, "
          "sequential, loopback)")
    return 0 if served_accuracy >= MIN_ACCURACY else 1


def _predict_all(client: TorchServeClient, name: str, split) -> tuple[int, list[float]]:
    correct, latencies_ms = 0, []
    for image, label in zip(split.test_images, split.test_labels):
        body = json.dumps({"inputs": image.tolist()}).encode()
        started = time.perf_counter()
        response = client.predict(name, body)
        latencies_ms.append((time.perf_counter() - started) * 1000)
        correct += response.json()["predictions"][0]["label"] == str(label)
    return correct, latencies_ms


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MarError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        sys.exit(1)
