"""The localnet home: one folder holding the chain file, a Sui-format wallet, the ledger and the nodes' stores.

This module owns the on-disk layout of a home; every other module asks it where a file lives::

    <home>/chain.sqlite                     the localnet (chain/localnet/engine.py)
    <home>/client.yaml, sui.keystore, sui.aliases   the wallet (wallet/)
    <home>/ledger.duckdb                    the ledger and the intent journal (ledger/)
    <home>/nodes/<alias>/serving.sqlite     each node's serving store (serving/store.py)
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .chain.errors import InvalidArgument, NotFound
from .chain.localnet.adapter import LocalnetChain
from .chain.localnet.engine import CHAIN_FILE, Localnet
from .protocol.epochs import MAX_EPOCH_DURATION_MS, MAX_SEED
from .wallet import ALIASES_FILE, CLIENT_YAML, KEYSTORE_FILE, Wallet

DEFAULT_HOME = Path("data") / "localnet"
HOME_ENV = "ATOMA_OPS_HOME"
DEFAULT_ALIASES = ("admin", "user", "node-1", "node-2", "node-3")
LEDGER_FILE = "ledger.duckdb"
NODES_DIR = "nodes"
NODE_STORE_FILE = "serving.sqlite"


def node_store_path(home: str | os.PathLike, node: str) -> Path:
    """``<home>/nodes/<node>/serving.sqlite``: the serving store of node ``node`` (its wallet alias or address)."""
    return Path(home) / NODES_DIR / node / NODE_STORE_FILE


def node_store_paths(home: str | os.PathLike) -> list[Path]:
    """Every node store of the home, in name order."""
    return sorted((Path(home) / NODES_DIR).glob(f"*/{NODE_STORE_FILE}"))


def ledger_path(home: str | os.PathLike | None = None) -> Path:
    """``<home>/ledger.duckdb`` (home: ``--home``, else ``$ATOMA_OPS_HOME``, else ``data/localnet``)."""
    return resolve_home(home) / LEDGER_FILE


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

    def owned(self) -> tuple[Path, ...]:
        """What a localnet owns in its home: the chain, the wallet, and the ledger and node stores that go with the
        chain (kept, a re-run would take the old chain's finished writes for done on the new one)."""
        chain = str(self.chain_file)
        return (self.chain_file, Path(chain + "-wal"), Path(chain + "-shm"), self.client_yaml,
                self.path / KEYSTORE_FILE, self.path / ALIASES_FILE, self.path / LEDGER_FILE,
                self.path / (LEDGER_FILE + ".wal"), self.path / NODES_DIR)

    def init(
        self,
        *,
        seed: int = 0,
        epoch_duration_ms: int = 0,
        force: bool = False,
        aliases: tuple[str, ...] = DEFAULT_ALIASES,
    ) -> tuple[Localnet, Wallet]:
        """Write a wallet with ``aliases`` and publish a fresh localnet whose admin is the ``admin`` alias.

        Check, then act: the new home is built in a folder beside the old one and swapped in only once complete
        (one ``renameat2(RENAME_EXCHANGE)`` where the file system has it); a failure leaves the old home, its keys
        included, exactly as it was, and nothing behind. With ``force`` the old localnet's files are deleted only
        after the swap; files of the home that no localnet owns are carried over.
        """
        if "admin" not in aliases:
            raise InvalidArgument("the aliases must include 'admin'")
        if not 0 <= seed <= MAX_SEED:
            raise InvalidArgument(f"--seed must be between 0 and {MAX_SEED}, not {seed}")
        if not 0 <= epoch_duration_ms <= MAX_EPOCH_DURATION_MS:
            raise InvalidArgument(
                f"--epoch-duration-ms must be between 0 and {MAX_EPOCH_DURATION_MS}, not {epoch_duration_ms}"
            )
        home = self.path.absolute()
        if home.exists() and not home.is_dir():
            raise InvalidArgument(f"the home {home} exists and is not a directory")
        leftovers = [p for p in self.owned() if p.exists() or p.is_symlink()]
        if leftovers and not force:
            raise InvalidArgument(f"a localnet already exists in {self.path} (use --force to replace it)")
        home.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{home.name}.init-", dir=home.parent))
        swapped = False
        try:
            wallet = Wallet.create(build, list(aliases), env_alias="atoma-localnet")
            Localnet.publish(
                build / CHAIN_FILE, wallet.aliases()["admin"], seed=seed, epoch_duration_ms=epoch_duration_ms
            ).close()
            wallet.point_keystore_at(home)  # client.yaml names the keystore where it will be after the swap
            del wallet
            if home.exists():
                _exchange(build, home)  # build now holds the old home
                swapped = True
                fresh = LocalnetHome(build)
                old_owned = {p.name for p in fresh.owned()}
                for entry in sorted(build.iterdir()):
                    if entry.name not in old_owned:
                        os.rename(entry, home / entry.name)
                shutil.rmtree(build)
            else:
                os.rename(build, home)
                swapped = True
        except BaseException:
            if not swapped:
                shutil.rmtree(build, ignore_errors=True)
            raise
        return Localnet(self.chain_file), Wallet.load(self.client_yaml)

    def open(self, **kwargs) -> LocalnetChain:
        if not self.exists():
            raise NotFound(f"no localnet in {self.path}: run `atoma-ops localnet init` first")
        return LocalnetChain(Localnet(self.chain_file, **kwargs), Wallet.load(self.client_yaml))


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories: at once with Linux's ``renameat2(RENAME_EXCHANGE)``, else by two renames (``b`` set
    aside, ``a`` moved in, ``b`` moved back if that fails)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
            raise OSError(err, os.strerror(err), str(b))
    aside = Path(tempfile.mkdtemp(prefix=f".{b.name}.old-", dir=b.parent))
    os.rmdir(aside)
    os.rename(b, aside)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(aside, b)
        raise
    os.rename(aside, a)
