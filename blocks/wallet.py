"""``SuiWallet``: the keys a flow signs with."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

if TYPE_CHECKING:  # pragma: no cover
    from atoma_ops.wallet import Wallet


class SuiWallet(Block):
    """A Sui wallet: a ``client.yaml`` (which names its keystore and aliases), or the keystore itself as a secret.

    With neither set, the localnet home's own wallet (``<home>/client.yaml``) is used.
    """

    _block_type_name = "Sui Wallet"
    _description = "Sui keys for signing Atoma transactions: a client.yaml path, or the keystore as a secret."

    client_yaml: str | None = Field(
        default=None, description="Path of a Sui `client.yaml` (its keystore and aliases files sit beside it)."
    )
    keystore: SecretStr | None = Field(
        default=None,
        description="The keystore's JSON text (a list of base64 or `suiprivkey…` keys), kept in memory only.",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Aliases for the keystore secret's keys: alias -> address."
    )
    address: str | None = Field(
        default=None, description="The acting address or alias (default: the wallet's active address)."
    )

    @property
    def is_default(self) -> bool:
        return self.client_yaml is None and self.keystore is None

    def get_wallet(self) -> "Wallet":
        """The wallet (keys stay inside it; it cannot be printed or pickled)."""
        from atoma_ops.chain.errors import InvalidArgument
        from atoma_ops.wallet import Wallet

        if self.keystore is not None:
            wallet = Wallet.from_keystore_text(
                self.keystore.get_secret_value(), aliases=self.aliases, active_address=self.address
            )
        elif self.client_yaml is not None:
            wallet = Wallet.load(self.client_yaml)
        else:
            raise InvalidArgument("SuiWallet: set client_yaml or keystore (or use the localnet home's wallet)")
        return wallet
