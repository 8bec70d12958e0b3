"""A buyer's client for an Atoma node (atoma-protocol.md §17): sign requests with the buyer's wallet key, check the
node's signature on every answer.

- :class:`RequestSigner` signs a body (``X-Signature`` over blake2b-256 of its compact JSON);
- :class:`AtomaAuth` is an ``httpx.Auth`` that signs every request a client sends, so it plugs into any httpx
  client, the official ``openai`` SDK's included (``openai.OpenAI(http_client=httpx.Client(auth=...))``,
  :func:`openai_client`);
- :func:`verify_response` / :class:`StreamCheck` check a response body or a stream's final chunk;
- :class:`AtomaClient` is a small standalone client: ``chat`` and ``stream_chat`` with both checks done;
- :func:`send_workload` sends a workload as its buyer does (signed, request ids, ``concurrency`` at a time);
- :class:`NodeDataClient` reads a node's served usage and a stack's history over signed ``GET``s (another host's
  ledger, an attester).

Nothing here imports the node's serving code: the bytes both sides hash are in ``atoma_ops.protocol.node_http``.
"""

from .signing import AtomaAuth, RequestSigner, openai_client
from .verify import ResponseSignatureError, StreamCheck, verify_response
from .chat import AtomaClient, ChatResult, NodeRefusal
from .workload import Sent, WorkloadReport, send_workload
from .node_data import NodeDataClient, NodeDataError

__all__ = [
    "AtomaAuth",
    "AtomaClient",
    "ChatResult",
    "NodeDataClient",
    "NodeDataError",
    "NodeRefusal",
    "RequestSigner",
    "ResponseSignatureError",
    "Sent",
    "StreamCheck",
    "WorkloadReport",
    "openai_client",
    "send_workload",
    "verify_response",
]
