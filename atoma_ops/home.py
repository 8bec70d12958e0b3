"""The localnet home: one folder holding the chain file and a Sui-format wallet."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .chain.errors import InvalidArgument, NotFound
from .chain.localnet.adapter import LocalnetChain
from .chain.localnet.engine import CHAIN_FILE, Localnet
from .wallet import ALIASES_FILE, CLIENT_YAML, KEYSTORE_FILE, Wallet

DEFAULT_HOME = Path("data") / "localnet"
HOME_ENV = "ATOMA_OPS_HOME"
DEFAULT_ALIASES = ("admin", "user", "node-1", "node-2", "node-3")


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home``, else ``$ATOMA_OPS_HOME``, else ``data/localnet`` under the working directory."""
    if home is not None:
        return Path(home)
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else DEFAULT_HOME


@dataclass
class LocalnetHome:
    path: Path

    @property
    def chain_file(self) -> Path:
        return self.path / CHAIN_FILE

    @property
    def client_yaml(self) -> Path:
        return self.path / CLIENT_YAML

    def exists(self) -> bool:
        return self.chain_file.exists() and self.client_yaml.exists()

    def init(
        self,
        *,
        seed: int = 0,
        epoch_duration_ms: int = 0,
        force: bool = False,
        aliases: tuple[str, ...] = DEFAULT_ALIASES,
    ) -> tuple[Localnet, Wallet]:
        """Write a wallet with ``aliases`` and publish a fresh localnet whose admin is the ``admin`` alias."""
        if "admin" not in aliases:
            raise InvalidArgument("the aliases must include 'admin'")
        if seed < 0 or epoch_duration_ms < 0:
            raise InvalidArgument("--seed and --epoch-duration-ms must be >= 0")
        from .ledger.store import LEDGER_FILE
        from .serving.store import NODES_DIR

        # the ledger (its journal names the old chain's transactions) and the node stores go with the old chain:
        # kept, a re-run would take the old chain's finished writes for done on the new one
        owned = (self.chain_file, self.client_yaml, self.path / KEYSTORE_FILE, self.path / ALIASES_FILE,
                 self.path / LEDGER_FILE, self.path / (LEDGER_FILE + ".wal"), self.path / NODES_DIR)
        leftovers = [p for p in owned if p.exists()]
        if leftovers and not force:
            raise InvalidArgument(f"a localnet already exists in {self.path} (use --force to replace it)")
        for p in leftovers:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(self.chain_file) + suffix).unlink(missing_ok=True)
        wallet = Wallet.create(self.path, list(aliases), env_alias="atoma-localnet")
        localnet = Localnet.publish(
            self.chain_file, wallet.aliases()["admin"], seed=seed, epoch_duration_ms=epoch_duration_ms
        )
        return localnet, wallet

    def open(self, **kwargs) -> LocalnetChain:
        if not self.exists():
            raise NotFound(f"no localnet in {self.path}: run `atoma-ops localnet init` first")
        return LocalnetChain(Localnet(self.chain_file, **kwargs), Wallet.load(self.client_yaml))
