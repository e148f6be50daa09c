"""Named and variable-length inputs, structured outputs and every request form, through the handler
in-process: a text model with an attention mask and two outputs (model_defs/specs/sentiment.yaml)
and an LSTM without a mask (speaker.yaml)."""

import base64
import json
import struct

import numpy as np
import pytest
import torch

from scripts.build import build_archive
from tests.helpers import InProcessHandler as Served, example_spec

TEXTS = ["the movie was good", "bad", "i really liked the plot and the acting but not the story",
         "fun"]


def _json(payload) -> dict:
    return {"body": json.dumps(payload).encode()}


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sentiment")
    spec, model = example_spec(folder, "sentiment")
    return Served(build_archive(spec, export_path=folder / "store", archive_format="folder").archive)


@pytest.fixture(scope="module")
def speaker(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speaker")
    spec, model = example_spec(folder, "speaker")
    served = Served(build_archive(spec, export_path=folder / "store", archive_format="folder").archive)
    served.model = model
    return served


def test_mixed_lengths_with_a_mask_answer_as_each_request_alone(sentiment):
    requests = [_json({"inputs": {"input_ids": text}}) for text in TEXTS]
    together = sentiment.send(requests)
    for (body, status, _), request in zip(together, requests):
        alone, alone_status, _ = sentiment.send([request])[0]
        assert status == alone_status == 200
        assert np.allclose(body["outputs"]["logits"], alone["outputs"]["logits"], atol=1e-5)
        states, alone_states = (np.array(b["outputs"]["token_states"][0]) for b in (body, alone))
        assert states.shape == alone_states.shape  # cut back to this request's own length
        assert np.allclose(states, alone_states, atol=1e-5)
    lengths = [len(b["outputs"]["token_states"][0]) for b, _, _ in together]
    assert lengths == [5, 2, 13, 2]  # [CLS] + the words
    assert together[0][0]["predictions"][0]["label"] in ("negative", "positive")


def test_mixed_lengths_without_a_mask_run_per_length(speaker):
    rng = np.random.default_rng(0)
    mels = [rng.random((length, 40), dtype=np.float32) for length in (7, 30, 7, 400)]
    together = speaker.send([_json({"inputs": m.tolist()}) for m in mels])
    with torch.inference_mode():
        expected = [speaker.model(torch.from_numpy(m)[None])[0] for m in mels]
    for (body, status, _), want in zip(together, expected):
        assert status == 200
        assert torch.allclose(torch.tensor(body["outputs"][0]), want, atol=1e-5)
    ragged = speaker.one({"inputs": [mels[0].tolist(), mels[1].tolist()]})[0]  # one request, two lengths
    assert torch.allclose(torch.tensor(ragged["outputs"]), torch.stack(expected[:2]), atol=1e-5)
    raw = base64.b64encode(mels[1].astype("<f4").tobytes()).decode()  # float32 values, length inferred
    as_b64 = speaker.one({"inputs": {"b64": raw}})[0]
    assert torch.allclose(torch.tensor(as_b64["outputs"][0]), expected[1], atol=1e-5)


def test_one_request_in_every_form_gets_the_same_outputs(sentiment):
    ids = [2, 3, 5, 7, 9]
    reference = sentiment.one({"inputs": {"input_ids": ids, "attention_mask": [1] * 5}})[0]
    logits = np.array(reference["outputs"]["logits"])
    as_text = sentiment.one({"inputs": {"input_ids": "the movie was good"}})[0]
    text = base64.b64encode(b"the movie was good").decode()  # for the tokenizer's input: text
    as_b64 = sentiment.one({"inputs": {"input_ids": {"b64": text}}})[0]
    multipart = sentiment.send([{"input_ids": json.dumps(ids).encode(), "attention_mask": b"[1,1,1,1,1]"}],
                               [{"input_ids": {"content-type": "application/json"},
                                 "attention_mask": {"content-type": "application/json"}}])[0][0]
    as_text_part = sentiment.send([{"input_ids": b"the movie was good"}],
                                  [{"input_ids": {"content-type": "text/plain"}}])[0][0]
    v1 = sentiment.one({"instances": [{"input_ids": ids, "attention_mask": [1] * 5}]})[0]
    for body in (as_text, as_b64, multipart, as_text_part):
        assert np.allclose(body["outputs"]["logits"], logits, atol=1e-6)
    assert np.allclose(v1["predictions"][0]["logits"], logits[0], atol=1e-6)
    assert len(v1["predictions"][0]["token_states"]) == 5


def _oip_binary(tensors: list[tuple[str, str, list, bytes]], extra: dict | None = None):
    header = {"inputs": [{"name": n, "datatype": d, "shape": s,
                          "parameters": {"binary_data_size": len(b)}} for n, d, s, b in tensors],
              **(extra or {})}
    head = json.dumps(header).encode()
    body = head + b"".join(b for *_, b in tensors)
    return {"body": body}, {"Inference-Header-Content-Length": str(len(head)),
                            "content-type": "application/octet-stream"}


def test_open_inference_protocol_json_and_binary(sentiment):
    ids = np.array([[2, 3, 5, 7, 9]], dtype=np.int64)
    reference = sentiment.one({"inputs": {"input_ids": ids[0].tolist()}})[0]["outputs"]
    json_body = sentiment.one({"id": "a", "inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 5], "data": ids.ravel().tolist()}]})[0]
    outputs = {o["name"]: o for o in json_body["outputs"]}
    assert json_body["id"] == "a" and json_body["model_name"] == "sentiment"
    assert outputs["token_states"]["shape"] == [1, 5, 32] and outputs["logits"]["datatype"] == "FP32"
    assert np.allclose(outputs["logits"]["data"], np.ravel(reference["logits"]), atol=1e-6)
    assert outputs["label"]["datatype"] == "BYTES"
    request, headers = _oip_binary([("input_ids", "INT64", [1, 5], ids.tobytes()),
                                    ("attention_mask", "INT64", [1, 5], np.ones_like(ids).tobytes())],
                                   {"outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                                                {"name": "label"}]})
    body, status, response_headers = sentiment.send([request], [headers])[0]
    assert status == 200 and isinstance(body, bytes)
    length = int(response_headers["Inference-Header-Content-Length"])
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["logits", "label"]
    size = head["outputs"][0]["parameters"]["binary_data_size"]
    logits = np.frombuffer(body[length:length + size], dtype="<f4")
    assert np.allclose(logits, np.ravel(reference["logits"]), atol=1e-6)
    texts = [b"the movie was good"]
    request, headers = _oip_binary([("input_ids", "BYTES", [1], b"".join(
        struct.pack("<I", len(t)) + t for t in texts))])
    body, status, _ = sentiment.send([request], [headers])[0]
    assert status == 200 and np.allclose(
        {o["name"]: o for o in body["outputs"]}["logits"]["data"], np.ravel(reference["logits"]),
        atol=1e-6)


BAD = {
    "sequence over max": ({"inputs": {"input_ids": list(range(2, 20)) * 4}},
                          "input `input_ids` has length 72 in dimension 0, over its max of 64"),
    "missing input": ({"inputs": {"attention_mask": [1, 1]}}, "missing input `input_ids`"),
    "extra input": ({"inputs": {"input_ids": [2, 3], "token_type_ids": [0, 0]}},
                    "unknown input `token_type_ids`"),
    "wrong dtype in a v2 header": ({"inputs": [{"name": "input_ids", "datatype": "FP32",
                                                "shape": [1, 2], "data": [2.0, 3.0]}]},
                                   "input tensor 'input_ids' is FP32 but `input_ids` takes int64"),
    "wrong shape in a v2 header": ({"inputs": [{"name": "input_ids", "datatype": "INT64",
                                                "shape": [1, 3], "data": [2, 3]}]},
                                   "has 2 values but its shape [1, 3] holds 3"),
    "base64 that does not decode": ({"inputs": {"input_ids": {"b64": "not base64!"}}},
                                    "`b64` is not valid base64"),
    "undecodable string": ({"inputs": {"input_ids": {"b64": base64.b64encode(b"\xff\xfe").decode()}}},
                           "input `input_ids` is not UTF-8 text"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_400_naming_the_input_and_the_rule(sentiment, case):
    payload, message = BAD[case]
    good = _json({"inputs": {"input_ids": "good fun"}})
    (bad_body, bad_status, _), (good_body, good_status, _) = sentiment.send([_json(payload), good])
    assert bad_status == 400 and message in bad_body["message"], bad_body["message"]
    assert good_status == 200 and "logits" in good_body["outputs"]  # its batch neighbour


def test_binary_length_not_matching_the_header_is_a_400(sentiment):
    ids = np.array([[2, 3]], dtype=np.int64).tobytes()
    request, headers = _oip_binary([("input_ids", "INT64", [1, 2], ids)])
    request["body"] += b"\x00" * 3  # three bytes no tensor claims
    body, status, _ = sentiment.send([request], [headers])[0]
    assert status == 400 and "the inputs' binary_data_size add up to 16" in body["message"]
    request, headers = _oip_binary([("input_ids", "INT64", [1, 3], ids)])  # 16 bytes for 3 values
    body, status, _ = sentiment.send([request], [headers])[0]
    assert status == 400 and "binary_data_size 16 does not match its shape [1, 3]" in body["message"]


def test_a_processor_from_model_defs_travels_and_maps_the_api(tmp_path):
    spec, _ = example_spec(tmp_path, "sentiment", processor="sentiment_api")
    archive = build_archive(spec, export_path=tmp_path / "store", archive_format="folder").archive
    assert (archive / "model_defs" / "sentiment_api.py").is_file()
    served = Served(archive)
    body = served.one({"inputs": {"text": ["good fun", "bad"]}})[0]
    assert set(body["outputs"]) == {"logits"} and len(body["outputs"]["logits"]) == 2
    assert [p["label"] for p in body["predictions"]] == [
        p["label"] for p in served.one({"inputs": {"input_ids": ["good fun", "bad"]}})[0]["predictions"]]
