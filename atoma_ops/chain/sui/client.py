"""pysui's gRPC client for a :class:`~atoma_ops.wallet.Wallet`'s keys and a Sui full node URL.

The pysui configuration is built in memory: the wallet's keys go into a ``ProfileGroup`` object and are never
written to a file (pysui's own ``PysuiConfiguration`` only loads from ``PysuiConfig.json``; the subclass here
takes a ready model and ignores every request to persist it).

pysui opens its gRPC channel with TLS unconditionally. For an ``http://`` URL on a loopback address (the loopback
node of :mod:`atoma_ops.testing.sui`) the channel is replaced by a plaintext one; ``http://`` to any other host is refused, and
``https://`` URLs keep pysui's TLS channel.

This module imports pysui (about half a second); the CLI must import it lazily.
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from typing import TYPE_CHECKING

from grpclib.client import Channel
from pysui import PysuiConfiguration
from pysui.sui.sui_common.config.confgroup import GroupProtocol, Profile, ProfileGroup
from pysui.sui.sui_common.config.confmodel import _CURRENT_CONFIG_VERSION, PysuiConfigModel
from pysui.sui.sui_grpc.pgrpc_clients import GrpcProtocolClient

if TYPE_CHECKING:
    from ...wallet import Wallet

__all__ = ["InMemoryPysuiConfiguration", "PlaintextLoopbackGrpcClient", "pysui_client_for", "pysui_config_for"]

GROUP_NAME = "atoma"
PROFILE_NAME = "node"


class InMemoryPysuiConfiguration(PysuiConfiguration):
    """A ``PysuiConfiguration`` over a model built in memory; never read from or written to disk."""

    def __init__(self, model: PysuiConfigModel):  # noqa: D107 - replaces the file-loading constructor
        self._model = model
        self._config_root = None
        self._config_file = None

    def _write_model(self) -> None:
        """Never persisted: the model holds private keys."""

    def save_to(self, new_folder) -> None:  # type: ignore[override]
        raise RuntimeError("this pysui configuration holds private keys and is never written to disk")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_url(url: str) -> tuple[str, str, int | None]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"expected an http:// or https:// node URL, got {url!r}")
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise ValueError(f"plaintext gRPC is for loopback addresses only; use https:// for {parsed.hostname}")
    return parsed.scheme, parsed.hostname, parsed.port


def pysui_config_for(url: str, wallet: "Wallet", *, active: str | None = None) -> InMemoryPysuiConfiguration:
    """An in-memory pysui configuration: one gRPC group with every key of ``wallet`` and one profile at ``url``.

    Args:
        url: the full node's gRPC URL.
        wallet: the keys (aliases are kept; a key without one gets ``key-<n>``).
        active: alias or address of the active (default sender) address; the wallet's active address otherwise.
    """
    _split_url(url)
    group = ProfileGroup(GROUP_NAME, PROFILE_NAME, "", [], [], [], [Profile(PROFILE_NAME, url)], GroupProtocol.GRPC)
    accounts = wallet.accounts()
    keys = [
        # Wallet keeps keypairs private; _keypair is its one accessor. The key strings stay in this process.
        {"key_string": wallet._keypair(a.address).serialize(), "alias": a.alias or f"key-{i}"}
        for i, a in enumerate(accounts)
    ]
    try:
        addresses = group.add_keys(keys=keys)
    finally:
        keys.clear()
    expected = [a.address for a in accounts]
    if addresses != expected:
        raise ValueError("pysui derives different addresses from this wallet's keys")
    group.using_address = wallet.resolve(active) if active is not None else wallet.active_address
    model = PysuiConfigModel(version=_CURRENT_CONFIG_VERSION, group_active=GROUP_NAME, groups=[group])
    return InMemoryPysuiConfiguration(model)


class PlaintextLoopbackGrpcClient(GrpcProtocolClient):
    """``GrpcProtocolClient`` whose channel is plaintext HTTP/2 for an ``http://`` loopback profile URL."""

    def __init__(self, *, pysui_config: PysuiConfiguration, default_header: dict | None = None):
        super().__init__(pysui_config=pysui_config, default_header=default_header)
        scheme, host, port = _split_url(pysui_config.url)
        if scheme == "http":
            self._channel.close()  # pysui's TLS channel; not connected yet
            self._channel = Channel(host=host, port=port or 80, ssl=False)


def pysui_client_for(url: str, wallet: "Wallet", *, active: str | None = None) -> GrpcProtocolClient:
    """pysui's gRPC client for ``wallet``'s keys at ``url`` (see :func:`pysui_config_for`).

    Call it inside the event loop that will use the client: grpclib binds a channel to the loop it is made in.
    Nothing is fetched until first use; ``async with client`` fetches the epoch (gas price, protocol limits)
    and closes the channel at the end.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("pysui_client_for must be called inside the event loop that will use the client") from None
    config = pysui_config_for(url, wallet, active=active)
    if _split_url(url)[0] == "http":
        return PlaintextLoopbackGrpcClient(pysui_config=config)
    return GrpcProtocolClient(pysui_config=config)
