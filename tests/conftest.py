"""Fixtures every test may use. Tests under tests/integration are marked `integration` (they start
TorchServe or other processes); `make test-fast` runs the rest, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_defs import create_model
from tests.helpers import digits_spec_data, save_weights, write_spec

_INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(_INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def digits_model() -> torch.nn.Module:
    """A digits CNN with the bundled spec's params and seeded random weights."""
    torch.manual_seed(0)
    return create_model("digits_cnn", **digits_spec_data()["params"]).eval()


@pytest.fixture
def digits_spec(tmp_path, digits_model) -> Path:
    """A spec file for `digits_model`, its weights beside it."""
    save_weights(digits_model, tmp_path / "digits.pt")
    return write_spec(tmp_path, digits_spec_data(weights="digits.pt"))
