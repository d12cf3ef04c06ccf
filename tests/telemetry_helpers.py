"""Helpers for tests that read a running receiver's self-telemetry.

``scrape`` returns every sample of ``/metrics`` keyed the way PromQL prints it
(``name{label="value",...}``, labels sorted), so a test can compare two scrapes and see figures move.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample_key(name: str, labels: dict[str, str]) -> str:
    """``name`` alone, or ``name{a="1",b="2"}`` with labels sorted."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text exposition into ``{sample_key: value}``."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample_key(sample.name, dict(sample.labels))] = float(sample.value)
    return out


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_metrics(response.read().decode("utf-8"))


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of every sample named ``name`` whose labels include ``labels`` (0 when none)."""
    result = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        found = dict(_LABEL.findall(rest))
        if base == name and all(found.get(k) == v for k, v in labels.items()):
            result += value
    return result


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` and return (status, body), without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8")
