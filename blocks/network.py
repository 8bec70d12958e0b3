"""``AtomaNetwork``: which deployment of the Atoma contract to talk to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

if TYPE_CHECKING:  # pragma: no cover
    from atoma_ops.chain.port import Chain

    from .wallet import SuiWallet


class AtomaNetwork(Block):
    """An Atoma deployment: the embedded localnet (a SQLite file under ``home``) or a Sui network.

    ``home`` also holds what the node keeps locally on any network: the node stores (usage and stack histories,
    ``nodes/<alias>/serving.sqlite``) and, by default, the ledger (``ledger.duckdb``).
    """

    _block_type_name = "Atoma Network"
    _description = "The Atoma deployment to run against: the embedded localnet, or Sui (testnet, mainnet, custom)."
    _documentation_url = "https://docs.atoma.network"

    kind: Literal["localnet", "sui"] = Field(
        default="localnet", description="`localnet`: the embedded localnet under `home`; `sui`: a Sui full node."
    )
    home: str = Field(
        default="data/localnet",
        description="Folder of the localnet chain and wallet (kind localnet), the node stores and the default ledger.",
    )
    sui_preset: Literal["testnet", "custom"] = Field(
        default="testnet",
        description="kind sui: `testnet` (the published ids, each overridable below) or `custom` (all given below).",
    )
    sui_endpoint: str | None = Field(default=None, description="Sui full node gRPC URL (kind sui).")
    package_id: str | None = Field(default=None, description="The Atoma package id (kind sui).")
    db_id: str | None = Field(default=None, description="The shared AtomaDb object id (kind sui).")
    usdc_coin_type: str | None = Field(default=None, description="The USDC coin type, `0x…::usdc::USDC` (kind sui).")
    gas_budget_cap: int | None = Field(
        default=None, gt=0, description="kind sui: the most MIST one transaction may spend (dry run × 1.5 below it)."
    )
    epoch_poll_s: float = Field(
        default=1.0, gt=0, description="How often waiting stages poll the chain's epoch (seconds)."
    )
    journal_url: SecretStr | None = Field(
        default=None,
        description=(
            "The intent journal on PostgreSQL, `postgresql://user:password@host:port/dbname`, shared by every host "
            "that writes to the chain (default: `$ATOMA_OPS_JOURNAL_URL`, else the ledger's DuckDB file, one host)."
        ),
    )

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    @property
    def is_localnet(self) -> bool:
        return self.kind == "localnet"

    def sui_settings(self):
        """The Sui network settings (kind sui): the preset with this block's overrides."""
        from atoma_ops.chain.sui.networks import sui_network

        return sui_network(
            self.sui_preset, endpoint=self.sui_endpoint, package_id=self.package_id, db_id=self.db_id,
            usdc_coin_type=self.usdc_coin_type, gas_budget_cap=self.gas_budget_cap,
        )

    def open_journal(self, ledger: Any) -> Any:
        """The intent journal: PostgreSQL at ``journal_url`` (else ``$ATOMA_OPS_JOURNAL_URL``) when configured,
        else ``ledger`` (the DuckDB ledger's journal, the embedded default)."""
        from atoma_ops.journal_postgres import open_journal

        return open_journal(self.journal_url.get_secret_value() if self.journal_url else None, ledger)

    def open_chain(self, wallet: "SuiWallet | None" = None) -> "Chain":
        """The Chain port for the localnet, acting through ``wallet`` (default: the localnet home's wallet).
        For any kind, prefer :meth:`connect` (a Sui client connects asynchronously)."""
        from atoma_ops.chain.errors import InvalidArgument
        from atoma_ops.chain.localnet.adapter import LocalnetChain
        from atoma_ops.home import LocalnetHome

        if self.kind != "localnet":
            raise InvalidArgument("AtomaNetwork(kind='sui'): use `await network.connect(wallet)`")
        home = LocalnetHome(self.home_path)
        if wallet is None or wallet.is_default:
            return home.open()
        chain = home.open()
        return LocalnetChain(chain.localnet, wallet.get_wallet())

    async def connect(self, wallet: "SuiWallet | None" = None) -> "Chain":
        """The Chain port for this network: the localnet adapter, or the Sui adapter (pysui over gRPC), through
        ``atoma_ops.connect.connect_chain`` (the factory the CLI's ``--network`` uses too)."""
        from atoma_ops.chain.errors import InvalidArgument
        from atoma_ops.connect import connect_chain

        if self.kind == "localnet":
            return self.open_chain(wallet)
        if wallet is None or wallet.is_default:
            raise InvalidArgument("AtomaNetwork(kind='sui') needs a SuiWallet block (client_yaml or keystore)")
        return await connect_chain("sui", self.home_path, sui=self.sui_settings(), wallet=wallet.get_wallet(),
                                   active=wallet.address)
