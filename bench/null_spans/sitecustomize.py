"""Tracing on, exporting nowhere: with this directory and the repository on ``PYTHONPATH``
(bench/http_api.py --tracing does it), every process of a `todo serve`, uvicorn's workers
included, starts with the OpenTelemetry SDK recording every span and a batch processor
handing them to an exporter that drops them. Issue #13 measures tracing's cost this way:
the SDK's own work, without an OTLP encoder and a collector sharing the two cores."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import BatchSpanProcessor

from bench.common import NullExporter
from tododb.infra import tracing

tracing.add_processor(BatchSpanProcessor(NullExporter()))
