"""One request's problem stays that request's problem.

Everything the worker does for one request before the batch is assembled (parsing, decoding,
tokenizing, preprocessing, validating) and after it (encoding the answer) runs under `guarded`:

    RequestError   the request broke a rule of the model's contract: its own 400, naming the rule
    anything else  unforeseen (a library raised what its caller did not expect): its own 500 with
                   a short message and an error id; the worker log has the traceback under that id

Only the shared forward pass can fail a whole batch (`batch_failure`), and then every request in
it gets the same clear 500 instead of TorchServe's bare 503 "Prediction failed".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from handlers.errors import RequestError

__all__ = ["Refusal", "guarded", "batch_failure"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Refusal:
    """A request answered without the model's output: 400 for a broken rule, 500 for a failure
    logged under `error_id`."""
    status: int
    message: str
    error_id: str | None = None


def guarded(work: Callable[[], T], what: str) -> T | Refusal:
    """`work()`'s result, or the Refusal its exception earns. `what` names the step in the log."""
    try:
        return work()
    except RequestError as err:
        return Refusal(400, str(err))
    except Exception as err:  # noqa: BLE001 - the point: nothing one request does escapes
        error_id = _logged(err, what)
        return Refusal(500, f"the worker failed while {what} this request ({type(err).__name__}); "
                            f"error id {error_id} is in the model log. Its other requests were "
                            "answered. Report it with the request if it repeats.", error_id)


def batch_failure(err: Exception) -> Refusal:
    """The one answer every request of a batch gets when the shared forward pass fails."""
    error_id = _logged(err, "running the model on the batch")
    return Refusal(500, f"the model failed on the batch this request was part of "
                        f"({type(err).__name__}: {_first_line(err)}); error id {error_id} is in "
                        "the model log. Retry the request.", error_id)


def _logged(err: Exception, what: str) -> str:
    error_id = uuid.uuid4().hex[:12]
    logger.error("error id %s while %s", error_id, what, exc_info=err)
    return error_id


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"
