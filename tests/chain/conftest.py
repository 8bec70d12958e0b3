"""``net``: the synchronous test facade (tests/chain/chainkit.py) over a fresh localnet with scripted randomness,
parametrised over the two paths of the Chain port:

- ``localnet``: ``LocalnetChain``, in process;
- ``sui``: ``SuiChain`` (pysui, gRPC) → ``LoopbackSuiNode`` on 127.0.0.1 → the same localnet file.

Every scenario that takes ``net`` runs on both, with the same expected outcomes and abort names. ``localnet_net``
is the localnet path alone, for the few tests that show what only the localnet can (its own JSON transactions) or
that only need state made (test_sui_tables.py compares the node's reads of it).

``real_net`` is for tests/chain/test_real_network.py: the same two paths, plus ``sui-network`` (a real Sui network,
see docs/sui.md) when every ``ATOMA_OPS_SUI_*`` setting of :data:`REAL_NETWORK_SETTINGS` is present; without them
that parameter is simply not generated.
"""

from __future__ import annotations

import os

import pytest


from tests.chain.chainkit import Net  # noqa: E402

PATHS = ("localnet", "sui")
#: environment variable -> SuiNetwork field (the keystore is ATOMA_OPS_SUI_CLIENT_YAML)
REAL_NETWORK_SETTINGS = {
    "ATOMA_OPS_SUI_ENDPOINT": "endpoint",
    "ATOMA_OPS_SUI_PACKAGE_ID": "package_id",
    "ATOMA_OPS_SUI_DB_ID": "db_id",
    "ATOMA_OPS_SUI_USDC_TYPE": "usdc_coin_type",
    "ATOMA_OPS_SUI_CLIENT_YAML": None,
}


def real_network_configured() -> bool:
    return all(os.environ.get(name) for name in REAL_NETWORK_SETTINGS)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "real_net" in metafunc.fixturenames:
        paths = [*PATHS, "sui-network"] if real_network_configured() else list(PATHS)
        metafunc.parametrize("real_net", paths, indirect=True)


def _net(path: str, chain, draws, home) -> Net:
    if path == "localnet":
        return Net(chain, draws)
    return Net.over_loopback(chain, draws, home)


@pytest.fixture(params=PATHS)
def net(request, chain, draws, localnet_home):
    n = _net(request.param, chain, draws, localnet_home)
    yield n
    n.close()


@pytest.fixture
def localnet_net(chain, draws):
    """The localnet path only (not parametrised)."""
    n = Net(chain, draws)
    yield n
    n.close()


@pytest.fixture
def real_net(request):
    """See tests/chain/test_real_network.py: a ``RealNet`` on ``request.param``."""
    from tests.chain.chainkit import RealNet

    if request.param == "sui-network":
        settings = {field: os.environ[name] for name, field in REAL_NETWORK_SETTINGS.items() if field}
        n = RealNet.on_network(settings, os.environ["ATOMA_OPS_SUI_CLIENT_YAML"])
    else:
        # The same scenario on a fresh localnet: fund the active address (what an operator does with the faucets
        # before running it on a real network), then drive it only through the port.
        home = request.getfixturevalue("localnet_home")
        draws = request.getfixturevalue("draws")
        n = RealNet.on_localnet(_net(request.param, request.getfixturevalue("chain"), draws, home))
    yield n
    n.close()
