"""The step-credit histogram kept natively, exported as a prometheus_client histogram.

:func:`rewardloop_outer_native.session_record` observes every step credit of a record into a
:class:`rewardloop_outer_native.CreditHistogram` (no Python call per step); :class:`NativeHistogram`
registers it in a prometheus registry under a histogram's name and documentation, and its exposition is
the one a ``prometheus_client.Histogram`` with the same buckets, fed the same values, would give
(``_bucket`` per bound and ``+Inf``, ``_count``, ``_sum`` only when no bound is negative, ``_created``
unless the created series are disabled). Not for the multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``):
the counts live in this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import prometheus_client.metrics as _pm
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from rewardloop_outer_native import CreditHistogram


class NativeHistogram(Collector):
    """An unlabelled histogram whose observations live in :attr:`native` (a ``CreditHistogram``).

    ``observe`` is there for callers that observe one value at a time; the hot path hands
    :attr:`native` to ``session_record`` instead."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.native = CreditHistogram([float(b) for b in buckets])
        self.name = name
        self.documentation = documentation
        self._les = [floatToGoString(b) for b in self.native.buckets]
        self._with_sum = self.native.buckets[0] >= 0  # as Histogram: no _sum with a negative bound
        self.created = time.time()
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        self.native.observe(amount)

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        counts, total, count = self.native.snapshot()
        fam = HistogramMetricFamily(self.name, self.documentation)
        # sum_value None: add_metric then adds the buckets only; _count/_sum/_created as Histogram has them
        fam.add_metric([], [(le, float(c)) for le, c in zip(self._les, counts, strict=True)], None)
        fam.add_sample(self.name + "_count", {}, float(count))
        if self._with_sum:
            fam.add_sample(self.name + "_sum", {}, total)
        if _pm._use_created:  # disable_created_metrics() / PROMETHEUS_DISABLE_CREATED_SERIES
            fam.add_sample(self.name + "_created", {}, self.created)
        return [fam]
