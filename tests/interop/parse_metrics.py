#!/usr/bin/env python3
"""Parses a Prometheus exposition on stdin with the official Python client's parsers
(prometheus-client from PyPI): `openmetrics` (the argument) for OpenMetrics text, `classic` for
the text format 0.0.4. Prints one JSON object: for each sample,
`name{label="value",...}` (labels sorted, `{}` when none) -> value. A document the parser
rejects makes it exit non-zero with the parser's message."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic

text_string_to_metric_families = openmetrics if sys.argv[1:] == ["openmetrics"] else classic
text = sys.stdin.read()
samples = {}
types = {}
for family in text_string_to_metric_families(text):
    types[family.name] = family.type
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        samples[f"{sample.name}{{{labels}}}"] = sample.value
print(json.dumps({"samples": samples, "types": types}))
