"""Opening the Chain port for a network: the one factory behind the CLI (``--network``) and the Prefect
``AtomaNetwork`` block, so every command and every flow reaches the embedded localnet and Sui the same way."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .chain.errors import InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    from .chain.port import Chain
    from .chain.sui.networks import SuiNetwork
    from .wallet import Wallet

NETWORK_KINDS = ("localnet", "sui")


async def connect_chain(
    kind: str,
    home: str | Path,
    *,
    sui: "SuiNetwork | None" = None,
    wallet: "Wallet | None" = None,
    active: str | None = None,
) -> "Chain":
    """The Chain port for ``kind``:

    - ``localnet``: the embedded localnet under ``home``, acting through ``wallet`` (default: the home's own);
    - ``sui``: pysui over gRPC to the network ``sui`` (endpoint, package, AtomaDb, USDC type), acting through
      ``wallet`` (required), ``active`` the default sender (an alias or address).

    Nothing is sent yet: a Sui client connects on its first read, which checks the ids.
    """
    if kind == "localnet":
        from .home import LocalnetHome

        chain = LocalnetHome(Path(home)).open()
        if wallet is None:
            return chain
        from .chain.localnet.adapter import LocalnetChain

        return LocalnetChain(chain.localnet, wallet)
    if kind == "sui":
        if sui is None:
            raise InvalidArgument("a Sui network needs its settings: endpoint, package id, AtomaDb id, USDC type")
        if wallet is None:
            raise InvalidArgument("a Sui network needs a wallet (a client.yaml or a keystore)")
        from .chain.sui.adapter import SuiChain

        return await SuiChain.connect(sui, wallet, active=active)
    raise InvalidArgument(f"unknown network kind {kind!r}: one of {', '.join(NETWORK_KINDS)}")
