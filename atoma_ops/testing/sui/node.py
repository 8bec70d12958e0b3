"""A loopback Sui full node: Sui's gRPC API (``sui.rpc.v2``) served from a localnet file.

This is a TEST DOUBLE. No real Sui node (validator or full node) can run where this project is built and tested,
so the Sui adapter is exercised against this server instead: pysui's own gRPC client talks to it exactly as it
talks to a real full node, over HTTP/2 on 127.0.0.1 without TLS. The state behind it is a :class:`Localnet` chain
file (``<home>/chain.sqlite``), read live on every request, so writes made by other processes show up at once.

The reads (:mod:`.reads`; the write side, ExecuteTransaction, SimulateTransaction, GetTransaction and ListEvents,
is :mod:`.execute`), both served by this module's node:

- ``LedgerService``: ``GetServiceInfo``, ``GetEpoch``, ``GetObject``, ``BatchGetObjects``
- ``StateService``: ``ListOwnedObjects`` (object-type filter, paging), ``GetBalance``, ``ListBalances``,
  ``ListDynamicFields`` (AtomaDb's tables, a task's tables, a NodeBadge's subscriptions; paged)
- ``MovePackageService``: ``GetFunction`` for every ``atoma::db`` entry function (from ``atoma_ops.protocol.abi``)

How localnet objects become Sui ``Object`` messages:

- ``digest``: base58 of blake2b-256 over ``"ObjectDigest::" ‖ id ‖ u64-LE version``; stable per (id, version),
  so it changes exactly when the version does (a real digest hashes the contents, which a version bump also
  changes).
- ``owner``: an address owner is ``ADDRESS``; the localnet's ``shared`` owner is ``SHARED`` with the
  ``initial_shared_version`` in ``Owner.version``; the two packages are ``IMMUTABLE`` objects of type ``package``.
- ``object_type``: the localnet's type string (``<package>::db::NodeBadge``,
  ``0x2::coin::Coin<<usdc package>::usdc::USDC>``); type filters compare with every address padded to 32 bytes,
  so ``0x2`` and ``0x000…002`` both match.
- Coins carry ``balance``; coins and badges carry ``contents`` (BCS of the Move struct: ``id`` then the ``u64``
  balance or small id); every object but the packages carries ``json`` (``{"id": …}`` plus the localnet's
  fields, as the localnet stores them). ``previous_transaction`` and ``storage_rebate`` are not served.
- AtomaDb's ``json`` and ``contents`` are Sui's rendering of the Move struct, each table as ``{"id", "size"}``;
  every table entry is a ``0x2::dynamic_field::Field<K, V>`` object at its derived id, owned (``OBJECT``) by the
  table's UID, and Tasks and tickets are objects owned by their ObjectTable fields (:mod:`.tables`).
- Read masks are honoured on top-level fields (``*`` for all), with Sui's documented defaults when absent.
- The Random object ``0x8`` exists as a shared object, as on every Sui network, so pysui can resolve it.
- Every address holds one virtual SUI gas coin (the localnet has no SUI and charges no gas): id
  :func:`gas_coin_id` (blake2b-256 of ``"loopback-gas" ‖ address``), type ``0x2::coin::Coin<0x2::sui::SUI>``,
  balance 10**12, version 1 + the transactions the address has sent (:func:`gas_coin_ref`). It is listed by
  ListOwnedObjects, counted by GetBalance/ListBalances for ``0x2::sui::SUI`` and found by GetObject once the node
  knows the address (a sender or object owner of the localnet, or an address asked about).

Usage::

    async with LoopbackSuiNode(home.chain_file) as node:
        client = pysui_client_for(node.url, wallet)   # atoma_ops.chain.sui.client

    with BackgroundLoopbackNode(home.chain_file) as node:   # from synchronous code
        ...
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
from typing import Any, Awaitable, Callable

import grpclib.const
import grpclib.server
import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui
from grpclib.exceptions import GRPCError

from atoma_ops.chain.errors import ChainError, NotFound
from atoma_ops.chain.localnet.engine import Localnet
from atoma_ops.chain.sui.client import is_loopback

from .execute import ReplayedDraws, TransactionService
from .objects import OBJECT_FIELDS_DEFAULT, mask_fields
from .reads import Reads

log = logging.getLogger("atoma_ops.testing.sui")


# --------------------------------------------------------------------------------------------------- gRPC
_LEDGER = "/sui.rpc.v2.LedgerService/"
_STATE = "/sui.rpc.v2.StateService/"
_PACKAGES = "/sui.rpc.v2.MovePackageService/"


class _Services:
    """The RPC table grpclib serves (``__mapping__`` is grpclib's IServable protocol)."""

    def __init__(self, node: "LoopbackSuiNode"):
        self.node = node

    def _routes(self) -> dict[str, tuple[Callable[[Any], Any], type, type]]:
        reads = self.node._reads
        assert reads is not None
        return {
            _LEDGER + "GetServiceInfo": (lambda m: reads.service_info(), sui.GetServiceInfoRequest, sui.GetServiceInfoResponse),
            _LEDGER + "GetEpoch": (reads.epoch, sui.GetEpochRequest, sui.GetEpochResponse),
            _LEDGER + "GetObject": (
                lambda m: sui.GetObjectResponse(object=reads.get_object(m, mask_fields(m.read_mask, OBJECT_FIELDS_DEFAULT))),
                sui.GetObjectRequest,
                sui.GetObjectResponse,
            ),
            _LEDGER + "BatchGetObjects": (reads.batch_get, sui.BatchGetObjectsRequest, sui.BatchGetObjectsResponse),
            _STATE + "ListOwnedObjects": (reads.list_owned, sui.ListOwnedObjectsRequest, sui.ListOwnedObjectsResponse),
            _STATE + "GetBalance": (reads.get_balance, sui.GetBalanceRequest, sui.GetBalanceResponse),
            _STATE + "ListBalances": (reads.list_balances, sui.ListBalancesRequest, sui.ListBalancesResponse),
            _STATE + "ListDynamicFields": (
                reads.list_dynamic_fields, sui.ListDynamicFieldsRequest, sui.ListDynamicFieldsResponse
            ),
            _PACKAGES + "GetFunction": (reads.get_function, sui.GetFunctionRequest, sui.GetFunctionResponse),
        }

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            path: grpclib.const.Handler(self._unary(path, fn), grpclib.const.Cardinality.UNARY_UNARY, req, resp)
            for path, (fn, req, resp) in self._routes().items()
        }

    def _unary(self, path: str, fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[None]]:
        name = path.rsplit("/", 1)[-1]

        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            self.node.calls.append(name)
            try:
                reply = fn(request)
            except GRPCError:
                raise
            except NotFound as exc:
                raise GRPCError(grpclib.const.Status.NOT_FOUND, str(exc)) from None
            except ChainError as exc:
                raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, str(exc)) from None
            except Exception as exc:  # a bug in the double: say so to the client, keep serving
                log.exception("%s failed", name)
                raise GRPCError(grpclib.const.Status.INTERNAL, f"{type(exc).__name__}: {exc}") from None
            await stream.send_message(reply)

        return handle


class LoopbackSuiNode:
    """The loopback full node on ``host:port`` (loopback only; port 0 picks a free one), backed by a localnet.

    Args:
        localnet_path: the localnet chain file (``LocalnetHome.chain_file``).
        host: a loopback address; anything else is refused.
        port: the TCP port, 0 for any free one (see :attr:`url` after :meth:`start`).
        chain_name: ``GetServiceInfo.chain``.
        rng: optional scripted randomness (tests), a callable returning u64 draws: the connection that executes
            and simulates transactions is opened with it (``Localnet(path, rng=...)``), through
            :class:`~.execute.ReplayedDraws` so that a simulation and the execution that follows it see the
            same draws.
    """

    def __init__(self, localnet_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, *,
                 chain_name: str = "localnet", rng: Callable[[], int] | None = None):
        if not is_loopback(host):
            raise ValueError(f"the loopback Sui node serves on a loopback address only, not {host!r}")
        self.localnet_path = localnet_path
        self.host = host
        self.port = int(port)
        self.chain_name = chain_name
        self.rng = rng
        #: names of the latest RPCs served, oldest first (tests read this to see what a client asked for)
        self.calls: collections.deque[str] = collections.deque(maxlen=10_000)
        self._localnet: Localnet | None = None
        self._reads: Reads | None = None
        self._server: grpclib.server.Server | None = None
        self._sock: socket.socket | None = None
        self._transactions: Any = None  # execute.TransactionService: the write side

    @property
    def url(self) -> str:
        if self._sock is None and self.port == 0:
            raise RuntimeError("the node has no port until start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> "LoopbackSuiNode":
        if self._server is not None:
            raise RuntimeError("the node is already running")
        localnet = Localnet(self.localnet_path)
        writer: Localnet | None = None
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            # IPPROTO_TCP explicitly: asyncio and grpclib turn Nagle off (TCP_NODELAY) only on sockets whose proto
            # says TCP, and accepted connections inherit it; with proto 0 every answer waited ~40 ms for an ACK.
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
                self._localnet, self._reads = localnet, Reads(localnet, self.chain_name)
                # writes get a connection of their own
                writer = Localnet(self.localnet_path, rng=None if self.rng is None else ReplayedDraws(self.rng))
                self._transactions = TransactionService(self, localnet, writer)
                server = grpclib.server.Server([_Services(self), self._transactions])
                await server.start(sock=sock)
            except BaseException:
                sock.close()
                raise
        except BaseException:
            self._localnet = self._reads = self._transactions = None
            localnet.close()
            if writer is not None:
                writer.close()
            raise
        self._sock, self._server = sock, server
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._transactions is not None:
            self._transactions.close()
            self._transactions = None
        if self._localnet is not None:
            self._localnet.close()
            self._localnet = self._reads = None

    async def __aenter__(self) -> "LoopbackSuiNode":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class BackgroundLoopbackNode:
    """:class:`LoopbackSuiNode` on its own event loop in a daemon thread, for synchronous code::

        with BackgroundLoopbackNode(home.chain_file) as node:
            url = node.url
    """

    def __init__(self, localnet_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        self.node = LoopbackSuiNode(localnet_path, host, port, **kwargs)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="loopback-sui-node", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def calls(self) -> collections.deque[str]:
        return self.node.calls

    def start(self, timeout: float = 20.0) -> "BackgroundLoopbackNode":
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.node.start(), self.loop).result(timeout)
        except BaseException:
            self._halt(timeout)
            raise
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if not self.thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop).result(timeout)
        finally:
            self._halt(timeout)

    def _halt(self, timeout: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> "BackgroundLoopbackNode":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
