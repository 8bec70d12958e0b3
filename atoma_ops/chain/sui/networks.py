"""Sui network presets for the Atoma contract: where it is published and which USDC it takes.

The testnet ids are point-in-time (atoma-protocol.md §0: the package and AtomaDb were republished several times);
every field can be overridden, and ``custom`` takes them all explicitly. Test USDC on testnet is Circle's
(``https://faucet.circle.com``, network Sui): it cannot be minted by a script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidArgument
from ...wallet import normalize_address

USDC_FAUCET_URL = "https://faucet.circle.com"


@dataclass(frozen=True)
class SuiNetwork:
    name: str
    endpoint: str  # gRPC full node URL
    package_id: str
    db_id: str
    usdc_coin_type: str
    gas_budget_cap: int = 50_000_000  # MIST (0.05 SUI); a dry run's estimate × 1.5 is used below this

    def checked(self) -> "SuiNetwork":
        """Normalised ids; InvalidArgument naming the field that is wrong."""
        fields = {}
        for name in ("package_id", "db_id"):
            value = getattr(self, name)
            try:
                fields[name] = normalize_address(value or "")
            except ValueError:
                raise InvalidArgument(f"Sui network {self.name!r}: {name} {value!r} is not an object id") from None
        parts = (self.usdc_coin_type or "").split("::")
        if len(parts) != 3 or not all(parts):
            raise InvalidArgument(
                f"Sui network {self.name!r}: usdc_coin_type {self.usdc_coin_type!r} is not `0x…::module::Name`"
            )
        try:
            usdc = "::".join([normalize_address(parts[0]), parts[1], parts[2]])
        except ValueError:
            raise InvalidArgument(f"Sui network {self.name!r}: usdc_coin_type has a bad package address") from None
        if not self.endpoint.startswith(("https://", "http://")):
            raise InvalidArgument(f"Sui network {self.name!r}: endpoint {self.endpoint!r} is not an http(s) URL")
        if self.gas_budget_cap <= 0:
            raise InvalidArgument(f"Sui network {self.name!r}: gas_budget_cap must be positive")
        return replace(self, usdc_coin_type=usdc, **fields)


PRESETS = {
    # atoma-node's config.example.toml (testnet); Circle's testnet USDC
    "testnet": SuiNetwork(
        name="testnet",
        endpoint="https://fullnode.testnet.sui.io:443",
        package_id="0x8903298ba49a8e83d438e014b2cfd18404324f3a0274b9507b520d5745b85208",
        db_id="0x02920289f426dd1f3c2572d613f7dc92be95041720864a73d44d65585530efc5",
        usdc_coin_type="0xa1ec7fc00a6f40db9693ad1415d0c193ad3906494428cf252621037bd7117e29::usdc::USDC",
    ),
}


def sui_network(
    preset: str = "testnet",
    *,
    endpoint: str | None = None,
    package_id: str | None = None,
    db_id: str | None = None,
    usdc_coin_type: str | None = None,
    gas_budget_cap: int | None = None,
) -> SuiNetwork:
    """A preset with overrides, or ``custom`` with every id given."""
    overrides = {
        k: v
        for k, v in dict(endpoint=endpoint, package_id=package_id, db_id=db_id, usdc_coin_type=usdc_coin_type,
                         gas_budget_cap=gas_budget_cap).items()
        if v is not None
    }
    if preset == "custom":
        missing = [k for k in ("endpoint", "package_id", "db_id", "usdc_coin_type") if k not in overrides]
        if missing:
            raise InvalidArgument(f"a custom Sui network needs {', '.join(missing)}")
        return SuiNetwork(name="custom", **overrides).checked()
    if preset not in PRESETS:
        raise InvalidArgument(f"unknown Sui network {preset!r} (one of {', '.join([*PRESETS, 'custom'])})")
    return replace(PRESETS[preset], **overrides).checked()
