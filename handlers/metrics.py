"""The handler's own figures, per batch, through TorchServe's metrics API.

With `metrics_mode=prometheus` and `model_metrics_auto_detect=true` (config.properties) they appear
on the metrics port beside TorchServe's, labelled with the model name:

    MarBatches, MarRequests, MarRequestErrors, MarSamples   counters
    MarDecodeMs, MarPredictMs, MarEncodeMs                  counters of milliseconds: divide by
                                                            MarBatches for the mean per batch
    MarBatchSize                                            gauge: samples in the last batch
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["BatchClock"]


@dataclass
class BatchClock:
    """Times the stages of one batch and reports them with its counts."""
    laps: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = (now - self._last) * 1000
        self._last = now

    def report(self, context, *, requests: int, errors: int, samples: int) -> None:
        metrics = getattr(context, "metrics", None)
        if metrics is None:  # a handler driven in-process without TorchServe's metrics cache
            return
        from ts.metrics.metric_type_enum import MetricTypes

        metrics.add_counter("MarBatches", 1)
        metrics.add_counter("MarRequests", requests)
        metrics.add_counter("MarRequestErrors", errors)
        metrics.add_counter("MarSamples", samples)
        metrics.add_metric("MarBatchSize", samples, "count", metric_type=MetricTypes.GAUGE)
        for stage, milliseconds in self.laps.items():
            metrics.add_counter(f"Mar{stage.capitalize()}Ms", round(milliseconds, 3))
