"""The node's Prometheus metrics, named after the Atoma node's where they match (atoma-protocol.md §17;
atoma-node ``atoma-service/src/handlers/metrics.rs``).

Each :class:`NodeMetrics` has its own registry (several nodes may run in one process: tests, benchmarks), exposed
by the HTTP server at ``GET /metrics`` in Prometheus' text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: the Atoma node's ``LATENCY_HISTOGRAM_BUCKETS`` (seconds; metrics.rs @ c5e7a0a, lines 10-12), which it uses for
#: time to first token, inter-token time and whole-request latency alike: ours for TTFT and whole-request latency
LATENCY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = LATENCY_BUCKETS
#: inter-token time: our own buckets, not the node's (its 5 ms / 10 ms / 50 ms steps would put most decode steps,
#: a few ms to a few tens of ms, in three buckets)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

#: outcomes a request ends in (label ``outcome`` of ``atoma_chat_completions_num_requests``)
OUTCOMES = ("served", "aborted", "refused", "overloaded", "failed", "duplicate")
#: refusals counted by status, as the Atoma node does (chat_completions.rs: a counter per status; its 400 counter
#: really is named in capitals); ``atoma_total_failed_requests`` counts only the rest, requests that failed
REFUSAL_COUNTERS = {
    400: ("atoma_TOTAL_BAD_REQUESTS", "Requests refused as invalid (400)"),
    401: ("atoma_total_unauthorized_requests", "Requests whose signature did not verify (401)"),
    423: ("atoma_total_locked_requests", "Requests for a stack in settlement or claimed (423)"),
    425: ("atoma_total_too_early_requests", "Requests for a stack with too few units left (425)"),
    429: ("atoma_total_too_many_requests", "Requests refused because the node was overloaded (429)"),
}

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
            "atoma_total_failed_requests",
            "Requests that failed (outcome failed: the engine or the store); refusals are counted by status",
            ["model"], registry=r,
        )
        self.completed = Counter(
            "atoma_total_completed_requests", "Requests answered (outcome served)", ["model"], registry=r,
        )
        self.refusals = {status: Counter(name, help_, ["model"], registry=r)
                         for status, (name, help_) in REFUSAL_COUNTERS.items()}
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
        # the node's name for the whole-request latency (metrics.rs line 190: recorded from the handler's start to
        # its non-streamed response); we observe it for streams too, from arrival to the stream's end
        self.latency = Histogram(
            "atoma_chat_completions_token_latency", "Seconds from arrival to the end of the response", ["model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.input_tokens = Counter(
            "atoma_chat_completions_input_tokens_metrics", "Prompt tokens of served requests", ["model"], registry=r,
        )
        self.output_tokens = Counter(
            "atoma_chat_completions_output_tokens_metrics", "Completion tokens of served requests", ["model"],
            registry=r,
        )
        self.units_reserved = Counter(
            "atoma_compute_units_reserved", "Compute units reserved at admission", ["model"], registry=r,
        )
        self.units_charged = Counter(
            "atoma_compute_units_charged", "Compute units charged to stacks", ["model"], registry=r,
        )

        self._models: dict[str, ModelMetrics] = {}

    def of(self, model: str) -> "ModelMetrics":
        """The metrics of one model, its labelled children looked up once (``labels()`` takes a lock and builds a
        key each call: measured ~2% of a busy node's CPU when called per token)."""
        bound = self._models.get(model)
        if bound is None:
            bound = self._models[model] = ModelMetrics(self, model)
        return bound

    def ended(self, model: str, outcome: str, status: int | None = None) -> None:
        self.of(model).ended(outcome, status)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """:class:`NodeMetrics`' children for one ``model`` label (:meth:`NodeMetrics.of`)."""

    def __init__(self, metrics: NodeMetrics, model: str):
        self.running = metrics.running.labels(model)
        self.queued = metrics.queued.labels(model)
        self.ttft = metrics.ttft.labels(model)
        self.inter_token = metrics.inter_token.labels(model)
        self.latency = metrics.latency.labels(model)
        self.input_tokens = metrics.input_tokens.labels(model)
        self.output_tokens = metrics.output_tokens.labels(model)
        self.units_reserved = metrics.units_reserved.labels(model)
        self.units_charged = metrics.units_charged.labels(model)
        self._requests = {outcome: metrics.requests.labels(model, outcome) for outcome in OUTCOMES}
        self._failed = metrics.failed.labels(model)
        self._completed = metrics.completed.labels(model)
        self._refusals = {status: counter.labels(model) for status, counter in metrics.refusals.items()}

    def ended(self, outcome: str, status: int | None = None) -> None:
        """Count a request's end: its outcome, and for a refusal its status's counter (``status``)."""
        self._requests[outcome].inc()
        if outcome == "failed":
            self._failed.inc()
        elif outcome == "served":
            self._completed.inc()
        elif status in self._refusals:
            self._refusals[status].inc()
