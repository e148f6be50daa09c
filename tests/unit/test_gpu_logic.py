"""The GPU paths' logic, on the CPU: placement config, precision, TF32, compile, channels-last,
transfers."""

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from handlers.device import apply_process_settings
from handlers.startup import load_archive_model
from handlers.model_handler import ModelHandler
from handlers.errors import SpecError
from handlers.spec import load_spec
from scripts.build import build_archive
from tests.helpers import digits_spec_data, save_weights, write_spec


def _archive_dir(tmp_path, digits_model, **serving):
    save_weights(digits_model, tmp_path / "digits.pt")
    data = digits_spec_data(weights="digits.pt")
    data["serving"].update(serving)
    archive = build_archive(write_spec(tmp_path, data), export_path=tmp_path / "store",
                            archive_format="folder").archive
    return archive


def test_gpu_spec_generates_device_type_and_ids(tmp_path, digits_model):
    folder = _archive_dir(tmp_path, digits_model, device="gpu", device_ids=[1, 3])
    config = yaml.safe_load((folder / "model-config.yaml").read_text())
    assert config["deviceType"] == "gpu" and config["deviceIds"] == [1, 3]


@pytest.mark.parametrize("serving,message", [
    ({"device_ids": [0, -1]}, "`serving.device_ids` [0, -1] must be a list of GPU indices"),
    ({"tf32": "yes"}, "`serving.tf32` 'yes' must be true or false"),
    ({"compile": 1}, "`serving.compile` 1 must be true or false"),
    ({"channels_last": "on"}, "`serving.channels_last` 'on' must be true or false"),
])
def test_gpu_settings_are_validated(tmp_path, serving, message):
    data = digits_spec_data()
    data["serving"].update(serving)
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(write_spec(tmp_path, data))


@pytest.mark.parametrize("tf32,expected", [(False, "highest"), (True, "high")])
def test_tf32_is_set_explicitly(tmp_path, digits_model, tf32, expected):
    torch.set_float32_matmul_precision("high" if not tf32 else "highest")  # the opposite first
    load_archive_model(_archive_dir(tmp_path, digits_model, tf32=tf32))
    assert torch.get_float32_matmul_precision() == expected
    assert torch.backends.cudnn.allow_tf32 is tf32


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_load_and_pass_their_golden_check(tmp_path, digits_model, precision):
    loaded = load_archive_model(_archive_dir(tmp_path, digits_model, precision=precision))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    assert loaded.golden_max_error < 0.05


def test_compile_true_serves_a_compiled_model_that_passes_the_golden_check(tmp_path, digits_model,
                                                                            caplog):
    with caplog.at_level(logging.INFO):
        loaded = load_archive_model(_archive_dir(tmp_path, digits_model, compile=True,
                                                 batch_size=2))
    assert "serving the torch.compile'd model" in caplog.text
    assert loaded.golden_max_error < 1e-4


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_stores_convolution_weights_nhwc(tmp_path, digits_model, channels_last):
    loaded = load_archive_model(_archive_dir(tmp_path, digits_model, channels_last=channels_last))
    # with one input channel NCHW and NHWC are the same layout: check the others
    weights = [p for p in loaded.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) is channels_last
                           for p in weights)
    assert loaded.golden_max_error < 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_threads_follow_the_spec_whatever_the_device(tmp_path, digits_model, threads):
    """The setting is applied before the device matters (4 workers on one H200 ran 16 threads
    each when it was applied on the CPU only)."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        spec = load_archive_model(_archive_dir(tmp_path, digits_model, cpu_threads=threads)).spec
        assert torch.get_num_threads() == threads
        torch.set_num_threads(3)
        apply_process_settings(spec)  # what a worker on cuda:0 runs too: no device in sight
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_requests_follow_the_model_precision(tmp_path, digits_model):
    from ts.context import Context, RequestProcessor

    folder = _archive_dir(tmp_path, digits_model, precision="bf16")
    handler = ModelHandler()
    context = Context("digits_cnn", str(folder), {}, 1, None, "0.12.0")
    context.request_processor = [RequestProcessor({})]
    handler.initialize(context)
    (batch,) = handler.batch([handler.decode_request({"body": {"inputs": np.zeros((2, 1, 8, 8)).tolist()}})])
    batch = batch.inputs["input"]
    assert batch.dtype == torch.bfloat16 and batch.device.type == "cpu"
    body = json.loads(handler.handle([{"body": {"inputs": [[[0.5] * 8] * 8]}}], context)[0])
    assert len(body["outputs"][0]) == 10
