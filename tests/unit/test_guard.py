"""Per-request isolation and limits before work: what each failure costs, and only whom, and that
each refusal's suggested fix, applied, is answered."""

from __future__ import annotations

import base64
import json
import logging

import numpy as np
import pytest

from scripts.build import build_archive
from tests.helpers import InProcessHandler, example_spec


def _served(root, name: str) -> InProcessHandler:
    folder = root / name
    folder.mkdir()
    spec, _ = example_spec(folder, name)
    return InProcessHandler(build_archive(spec, export_path=folder / "store",
                                          archive_format="folder").archive)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    return _served(tmp_path_factory.mktemp("guard"), "sentiment")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return _served(tmp_path_factory.mktemp("guard"), "digits_cnn")


def _json(payload) -> dict:
    return {"body": json.dumps(payload).encode()}


DIGIT = np.zeros((1, 8, 8), dtype=np.float32).tolist()


def test_an_unforeseen_decode_failure_is_that_requests_500_with_its_error_id_logged(
        digits, monkeypatch, caplog):
    decode = digits.handler.decode_request

    def fragile(request, headers=None):
        if request["body"] == b"boom":
            raise KeyError("a library's surprise")
        return decode(request, headers)

    monkeypatch.setattr(digits.handler, "decode_request", fragile)
    with caplog.at_level(logging.ERROR, logger="handlers.guard"):
        (body, status, _), (ok, ok_status, _) = digits.send([{"body": b"boom"}, _json({"inputs": DIGIT})])
    assert status == 500 and body["code"] == 500 and body["type"] == "InternalServerError"
    assert "the worker failed while decoding this request (KeyError)" in body["message"]
    error_id = body["message"].split("error id ")[1].split()[0]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    assert ok_status == 200 and len(ok["outputs"]) == 1


def test_a_request_the_model_fails_on_is_its_own_500_and_its_batch_neighbours_are_answered(
        digits, monkeypatch):
    model_io = digits.handler.loaded.model_io

    def fails_on_ones(inputs):
        if bool((inputs["input"] == 1).any()):
            raise IndexError("index out of range in self")
        return model_io(inputs)

    monkeypatch.setattr(digits.handler.loaded, "model_io", fails_on_ones)
    ones = np.ones((1, 8, 8)).tolist()
    answers = digits.send([_json({"inputs": DIGIT}), _json({"inputs": ones}), _json({"inputs": DIGIT})])
    assert [status for _, status, _ in answers] == [200, 500, 200]
    assert answers[0][0] == answers[2][0]
    assert "the model failed on this request (IndexError: index out of range in self); error " \
           "id " in answers[1][0]["message"]


def test_a_failure_that_is_no_requests_own_is_a_clear_500_for_each(digits, monkeypatch):
    def broken(inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(digits.handler.loaded, "model_io", broken)
    answers = digits.send([_json({"inputs": DIGIT}), _json({"inputs": [[1]]}), _json({"inputs": DIGIT})])
    assert [status for _, status, _ in answers] == [500, 400, 500]
    for body, _, _ in (answers[0], answers[2]):
        assert "the model failed on this request (RuntimeError: CUDA error: an illegal memory " \
               "access was encountered); error id" in body["message"]


def test_token_ids_outside_the_vocabulary_are_refused_and_ids_inside_answered(sentiment):
    body, status, _ = sentiment.one({"inputs": {"input_ids": [2, 258, 5]}})
    assert status == 400
    assert "holds token id 258, outside the tokenizer's vocabulary of 32 (ids 0 to 31); send " \
           "ids from the same tokenizer, or the text" in body["message"]
    assert sentiment.one({"inputs": {"input_ids": [2, 25, 5]}})[1] == 200
    assert sentiment.one({"inputs": {"input_ids": [2, -1, 5]}})[1] == 400


def test_text_over_what_max_tokens_can_need_is_refused_and_a_shorter_one_answered(sentiment):
    limit = sentiment.handler._protocols.codec.kinds["input_ids"].char_limit
    long_text = "good " * 1_000_000
    body, status, _ = sentiment.one({"inputs": {"input_ids": long_text}})
    assert status == 400
    assert f"is 5,000,000 characters, more than its max of 64 tokens can hold with this " \
           f"tokenizer (at most {limit:,} characters); send a shorter text" in body["message"]
    shorter = "good " * 30  # the fix: within the limit, and within 64 tokens
    assert sentiment.one({"inputs": {"input_ids": shorter}})[1] == 200
    as_part = sentiment.send([{"input_ids": long_text.encode()}],
                             [{"input_ids": {"content-type": "text/plain"}}])[0]
    assert as_part[1] == 400 and "is 5,000,000 characters" in as_part[0]["message"]
    as_b64 = sentiment.one({"inputs": {"input_ids": {"b64": base64.b64encode(long_text.encode()).decode()}}})
    assert as_b64[1] == 400 and "base64 characters, more than one sample of `input_ids` can " \
                                "need" in as_b64[0]["message"]


def test_base64_longer_than_one_sample_is_refused_before_decoding_and_one_sample_answered(digits):
    one = np.zeros((1, 8, 8), dtype="<f4").tobytes()
    body, status, _ = digits.one({"inputs": {"b64": base64.b64encode(one * 50).decode()}})
    assert status == 400
    assert "is 17,068 base64 characters, more than one sample of `input` can need (348); send " \
           "one sample per value" in body["message"]
    fixed = [{"b64": base64.b64encode(one).decode()}] * 50
    body, status, _ = digits.one({"inputs": fixed})
    assert status == 200 and len(body["outputs"]) == 50


def test_a_form_with_more_parts_than_inputs_is_refused_and_one_part_per_input_answered(digits):
    part = json.dumps(DIGIT).encode()
    fields = {f"p{i}": part for i in range(50)}
    body, status, _ = digits.send([fields], [{}])[0]
    assert status == 400
    assert "the form has 50 parts; this model takes at most 1, one per input (input)" in body["message"]
    assert digits.send([{"input": part}], [{"input": {"content-type": "application/json"}}])[0][1] == 200


def test_nan_and_infinity_are_refused_and_finite_numbers_answered(digits):
    values = np.zeros((1, 1, 8, 8), dtype="<f4")
    values[0, 0, 0, :2] = [np.nan, np.inf]
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                   "parameters": {"binary_data_size": values.nbytes}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))}
    body, status, _ = digits.send([{"body": head + values.tobytes()}], [headers])[0]
    assert status == 400 and "holds NaN or infinity; send finite numbers" in body["message"]
    finite = np.nan_to_num(values, posinf=0.0)
    assert digits.send([{"body": head + finite.tobytes()}], [headers])[0][1] == 200


def test_deep_json_is_a_400(digits):
    body, status, _ = digits.send([{"body": b"[" * 5000 + b"]" * 5000}], [{}])[0]
    assert status == 400 and "request body is not valid JSON" in body["message"]
