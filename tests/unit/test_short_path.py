"""The short path (handlers/short_path.py) decodes a batch of one-sample requests in one go; every
batch gets exactly the answers it gets request by request, whatever its requests hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.build import build_archive
from tests.helpers import InProcessHandler, example_spec
from tests.unit.test_fuzz import FUZZ, _json, _oip_binary, json_request, mutated, oip_request


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> InProcessHandler:
    folder = tmp_path_factory.mktemp("short")
    spec, _ = example_spec(folder, "digits_cnn")
    return InProcessHandler(build_archive(spec, export_path=folder / "store",
                                          archive_format="folder").archive)


def _sample(seed: int, extreme: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = rng.random((1, 8, 8)).astype(np.float32)
    if extreme:  # the float32 range's edges, signed zeros, subnormals
        sample.flat[:6] = [3.4e38, -3.4e38, 1e-45, -0.0, 0.0, -1e-40]
    return sample


def _ours(sample: np.ndarray) -> tuple[dict, dict]:
    return _json({"inputs": sample.tolist()})


def _binary(sample: np.ndarray) -> tuple[dict, dict]:
    return _oip_binary("input", "FP32", sample[None])


def _both_ways(served: InProcessHandler, batch: list[tuple[dict, dict]]) -> tuple[list, list]:
    requests, headers = [r for r, _ in batch], [h for _, h in batch]
    short = served.send(requests, headers)
    kept, served.handler._short_path = served.handler._short_path, None
    try:
        general = served.send(requests, headers)
    finally:
        served.handler._short_path = kept
    return short, general


@pytest.mark.parametrize("form", [_ours, _binary])
def test_a_batch_of_single_samples_takes_the_short_path(served, form):
    batch = [form(_sample(i, extreme=i == 3)) for i in range(16)]
    decoded = served.handler._short_path.decode([r for r, _ in batch], [h for _, h in batch])
    assert decoded is not None and len(decoded) == 16
    short, general = _both_ways(served, batch)
    assert [s for _, s, _ in short] == [200] * 16
    assert short == general


@pytest.mark.parametrize("odd_one", [
    _json({"inputs": [[[float("nan")] * 8] * 8]}),  # refused: NaN
    _json({"inputs": [_sample(1).tolist(), _sample(2).tolist()]}),  # two samples
    _json({"instances": [_sample(1).tolist()]}),  # another protocol
    _binary(_sample(1)),  # a batch of two protocols
    _json({"inputs": [[[1.0] * 8] * 7]}),  # the wrong shape
])
def test_one_request_off_the_common_case_sends_the_batch_the_general_way(served, odd_one):
    batch = [_ours(_sample(i)) for i in range(3)] + [odd_one]
    assert served.handler._short_path.decode([r for r, _ in batch], [h for _, h in batch]) is None
    short, general = _both_ways(served, batch)
    assert short == general
    assert [s for _, s, _ in short[:3]] == [200] * 3


@st.composite
def batches(draw) -> list[tuple[dict, dict]]:
    valid = [_ours(_sample(0)), _binary(_sample(0))]
    one = st.one_of(st.builds(lambda seed, extreme: _ours(_sample(seed, extreme)),
                              st.integers(0, 2**32 - 1), st.booleans()),
                    st.builds(lambda seed, extreme: _binary(_sample(seed, extreme)),
                              st.integers(0, 2**32 - 1), st.booleans()),
                    json_request(["input"]), oip_request(["input"]), mutated(valid))
    return draw(st.lists(one, min_size=1, max_size=6))


def test_every_batch_gets_the_answers_it_gets_request_by_request(served):
    @FUZZ
    @given(batches())
    def check(batch):
        short, general = _both_ways(served, batch)
        assert json.dumps(short, default=str) == json.dumps(general, default=str)

    check()
