"""The node's Prometheus metrics, named after the Atoma node's where they match (atoma-protocol.md §17;
atoma-node ``atoma-service/src/handlers/metrics.rs``).

Each :class:`NodeMetrics` has its own registry (several nodes may run in one process: tests, benchmarks), exposed
by the HTTP server at ``GET /metrics`` in Prometheus' text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: the Atoma node's latency buckets for time to first token (seconds)
TTFT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: inter-token and whole-request latency buckets (seconds)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: outcomes a request ends in (label ``outcome`` of ``atoma_chat_completions_num_requests``)
OUTCOMES = ("served", "aborted", "refused", "overloaded", "failed", "duplicate")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeMetrics:
    """Counters, gauges and histograms of one serving node."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "atoma_chat_completions_num_requests", "Chat completion requests by how they ended", ["model", "outcome"],
            registry=r,
        )
        self.failed = Counter(
            "atoma_total_failed_requests", "Requests that failed or were refused (every outcome but served)", ["model"],
            registry=r,
        )
        self.running = Gauge(
            "atoma_num_running_requests", "Admitted requests the engine has started (first token produced)", ["model"],
            registry=r,
        )
        self.queued = Gauge(
            "atoma_num_queued_requests", "Admitted requests waiting for their first token", ["model"], registry=r,
        )
        self.ttft = Histogram(
            "atoma_chat_completions_time_to_first_token", "Seconds from arrival to the first token", ["model"],
            buckets=TTFT_BUCKETS, registry=r,
        )
        self.inter_token = Histogram(
            "atoma_chat_completions_intra_token_generation_time", "Seconds between consecutive tokens", ["model"],
            buckets=TOKEN_BUCKETS, registry=r,
        )
        self.latency = Histogram(
            "atoma_chat_completions_latency", "Seconds from arrival to the end of the response", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.input_tokens = Counter(
            "atoma_chat_completions_input_tokens_metrics", "Prompt tokens of served requests", ["model"], registry=r,
        )
        self.output_tokens = Counter(
            "atoma_chat_completions_completions_tokens", "Completion tokens of served requests", ["model"], registry=r,
        )
        self.units_reserved = Counter(
            "atoma_compute_units_reserved", "Compute units reserved at admission", ["model"], registry=r,
        )
        self.units_charged = Counter(
            "atoma_compute_units_charged", "Compute units charged to stacks", ["model"], registry=r,
        )

    def ended(self, model: str, outcome: str) -> None:
        self.requests.labels(model, outcome).inc()
        if outcome != "served":
            self.failed.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
