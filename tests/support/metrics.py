"""Read a service's /metrics for real, or a counter in this process, and wait for a value."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(base_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scrape(base_url).items() if n == name and wanted <= ls)


def counted(child: Counter) -> float:
    """The value in this process of one labelled counter (``METRIC.labels(...)``), read
    through its public ``collect()``: its ``_total`` sample."""
    (family,) = child.collect()
    return next(s.value for s in family.samples if s.name.endswith("_total"))


def wait_for(
    check: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition"
) -> float:
    """Poll until ``check()``; return the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started
