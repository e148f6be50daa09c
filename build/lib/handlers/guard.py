"""One request's problem stays that request's problem.

Everything the worker does for one request before the batch is assembled (parsing, decoding,
tokenizing, preprocessing, validating) and after it (encoding the answer) runs under `guarded`:

    RequestError   the request broke a rule of the model's contract: its own 400, naming the rule
    anything else  unforeseen (a library raised what its caller did not expect): its own 500 with
                   a short message and an error id; the worker log has the traceback under that id

When the shared forward pass fails, the handler runs each request of the batch alone: a request
that fails by itself gets `forward_failure`'s 500, the others their answers. Only a failure that is
no request's own (a broken device) reaches them all, and then as that clear 500 each, instead of
TorchServe's bare 503 "Prediction failed".
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from handlers.errors import RequestError

__all__ = ["Refusal", "guarded", "forward_failure"]

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


def forward_failure(err: Exception) -> Refusal:
    """The answer to a request the model's forward pass failed on, run alone."""
    error_id = _logged(err, "running the model on one request alone")
    return Refusal(500, f"the model failed on this request ({type(err).__name__}: "
                        f"{_first_line(err)}); error id {error_id} is in the model log. Its batch "
                        "neighbours were answered unless the model failed on them too.", error_id)


def _logged(err: Exception, what: str) -> str:
    error_id = uuid.uuid4().hex[:12]
    logger.error("error id %s while %s", error_id, what, exc_info=err)
    return error_id


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no message"
