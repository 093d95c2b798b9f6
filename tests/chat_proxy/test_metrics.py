from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.samples import Sample

from sluice_services.chat_proxy.metrics import ITL_BUCKETS, KnownModels, StreamHistogram


def _samples(histogram: Histogram) -> list[Sample]:
    return [s for metric in histogram.collect() for s in metric.samples if "created" not in s.name]


def test_stream_histogram_flush_equals_observing_each_value() -> None:
    values = [0.0005, 0.001, 0.003, 0.02, 0.02, 0.7, 4.0, 9.0, 0.0499]
    direct = Histogram("d", "d", ["m"], buckets=ITL_BUCKETS, registry=CollectorRegistry())
    batched = Histogram("d", "d", ["m"], buckets=ITL_BUCKETS, registry=CollectorRegistry())
    for value in values:
        direct.labels("x").observe(value)
    stream = StreamHistogram(batched.labels("x"), ITL_BUCKETS)
    for value in values:
        stream.observe(value)
    assert all(s.value == 0 for s in _samples(batched))  # nothing shared before the end
    stream.flush()
    stream.flush()  # a second flush adds nothing
    assert _samples(batched) == _samples(direct)


def test_known_models_bound_label_values() -> None:
    models = KnownModels("a, b")
    models.add([f"m{i}" for i in range(KnownModels.LIMIT * 2)])
    assert len(models.names) == KnownModels.LIMIT
    assert models.label("a") == "a"
    assert models.label("zzz-unknown") == "other"
