"""KServe v1 (`POST /v1/models/<name>:predict`):

    {"instances": [<sample, or {"<name>": <value>}>, ...]}  ->  {"predictions": [<per instance>]}

With labels each prediction carries label, probability and probabilities beside the outputs.
"""

from __future__ import annotations

from typing import Any

from handlers.errors import RequestError
from handlers.protocols.base import Answer, Decoded, Protocol, Reply, Request, json_reply

__all__ = ["KServeV1"]


class KServeV1(Protocol):
    def matches(self, request: Request) -> bool:
        return request.object_with("instances")

    def decode(self, request: Request) -> Decoded:
        instances = request.payload["instances"]
        if not (isinstance(instances, list) and instances):
            raise RequestError(f"`instances` must be a non-empty list of samples; "
                               f"{self.codec.describe()}")
        if self.processor is not None:
            instances = [self.processor.decode(i) for i in instances]
        return Decoded(self.codec.parts(self._values(instances), label="`instances`", batched=True),
                       self.reply)

    def _values(self, instances: list) -> dict[str, list]:
        """Each input's values over the instances: bare samples for a one-input model, else
        {name: value} per instance."""
        if len(self.input_names) == 1 and not all(
                isinstance(i, dict) and set(i) == {self.input_names[0]} for i in instances):
            return {self.input_names[0]: instances}
        if all(isinstance(i, dict) for i in instances):
            return {n: [i.get(n) for i in instances] for n in instances[0]}
        raise RequestError(f"each instance must name this model's inputs: "
                           f'{{"instances": [{{{", ".join(repr(n) + ": ..." for n in self.input_names)}}}]}}')

    def reply(self, answer: Answer) -> Reply:
        outputs = self.encoded_outputs(answer)
        count = len(next(iter(outputs.values())))
        rows: list[Any] = [{name: values[i] for name, values in outputs.items()}
                           for i in range(count)]
        if len(self.output_names) == 1 and not self.processor:
            rows = [row[self.output_names[0]] for row in rows]
        if answer.predictions is None:
            return json_reply({"predictions": rows})
        if not isinstance(rows[0], dict):
            rows = [{"outputs": row} for row in rows]
        return json_reply({"predictions": [{**p, **row} for p, row in zip(answer.predictions.per_sample(), rows)]})
