"""`make demo`: train the digits CNN, build its archive, serve it, and measure it through TorchServe.

Steps, each through the same code a user runs: train and save only the state_dict, `mar build`
(twice: the JSON model and its image twin, model_defs/specs/digits_cnn_png.yaml, same weights),
`mar serve start`, `mar register`, one HTTP request per held-back test image, as JSON and as an
image/png body, `mar serve stop`.
"""

from __future__ import annotations

import io
import statistics
import sys
import time

import numpy as np
from PIL import Image

from handlers.spec import load_spec
from scripts.build import build_archive
from scripts.client import TorchServeClient, our_request
from scripts.config import DEFAULT_CONFIG, DEMO_SPEC, REPO_ROOT, read_config

PNG_SPEC = DEMO_SPEC.with_name("digits_cnn_png.yaml")
from scripts.examples.digits import accuracy, load_split, save_state_dict, train
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
    png = build_archive(PNG_SPEC, export_path=config.model_store)
    print(f"built {result.archive} and {png.archive}")

    start_server(config, restore=False)  # the demo starts from an empty server
    print(f"TorchServe started ({config.path})")
    try:
        register_archive(config, result.archive, workers=1)
        register_archive(config, png.archive, workers=1)
        print(f"registered {spec.name} {spec.version} and {png.spec.name} {png.spec.version}")
        client = TorchServeClient(config)
        correct, latencies_ms = _predict_all(client, spec.name, split, _json_body,
                                             "application/json")
        correct_png, png_latencies_ms = _predict_all(client, png.spec.name, split, _png_body,
                                                     "image/png")
        for archive in (result, png):  # so the next `mar serve start` starts empty
            client.unregister(archive.spec.name, archive.spec.version)
    finally:
        stop_server(config)
        print("TorchServe stopped")

    count = len(split.test_labels)
    accuracy_json, accuracy_png = correct / count, correct_png / count
    print(f"\naccuracy through TorchServe: {accuracy_json:.2%} on {count} held-back images as JSON, "
          f"{accuracy_png:.2%} as PNG images (bar: {MIN_ACCURACY:.0%})")
    for label, times in (("JSON", latencies_ms), ("PNG", png_latencies_ms)):
        print(f"request latency, {label}: median {statistics.median(times):.1f} ms, p99 "
              f"{statistics.quantiles(times, n=100)[98]:.1f} ms (one image per request, sequential, "
              "loopback)")
    return 0 if min(accuracy_json, accuracy_png) >= MIN_ACCURACY else 1


def _json_body(image: np.ndarray) -> bytes:
    return our_request({"input": image})


def _png_body(image: np.ndarray) -> bytes:
    """The held-back digit rendered as an 8x8 grey PNG: pixels 0..255 (the data set's 0..16)."""
    out = io.BytesIO()
    Image.fromarray(np.round(image[0] * 255).astype(np.uint8), "L").save(out, format="PNG")
    return out.getvalue()


def _predict_all(client: TorchServeClient, name: str, split, encode,
                 content_type: str) -> tuple[int, list[float]]:
    correct, latencies_ms = 0, []
    for image, label in zip(split.test_images, split.test_labels):
        body = encode(image)
        started = time.perf_counter()
        response = client.predict(name, body, content_type=content_type)
        latencies_ms.append((time.perf_counter() - started) * 1000)
        correct += response.json()["predictions"][0]["label"] == str(label)
    return correct, latencies_ms


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MarError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        sys.exit(1)
