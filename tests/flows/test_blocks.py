"""The Prefect Blocks: registration with a real API, round trips of saved documents, secrets kept secret, and the
factories building the core's clients."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL
from pydantic import SecretStr, ValidationError

from atoma_ops.chain.errors import InvalidArgument
from atoma_ops.chain.localnet.adapter import LocalnetChain
from atoma_ops.wallet import KeystoreError
from blocks import AtomaNetwork, InferenceEngine, Ledger, SuiWallet

ROOT = Path(__file__).resolve().parents[2]


def test_prefect_block_register_finds_all_four():
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "block", "register", "-m", "blocks"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Successfully registered 4 blocks" in proc.stdout


def test_saved_blocks_load_back_and_keep_the_keystore_secret(network):
    keystore_text = (network.home_path / "sui.keystore").read_text()
    aliases = {a["alias"]: None for a in json.loads((network.home_path / "sui.aliases").read_text())}
    chain = network.open_chain()
    aliases = {alias: chain.wallet.resolve(alias) for alias in aliases}
    asyncio.run(chain.close())

    network.save("test-network", overwrite=True)
    SuiWallet(keystore=SecretStr(keystore_text), aliases=aliases, address="user").save("test-wallet", overwrite=True)
    loaded_net = AtomaNetwork.load("test-network")
    loaded_wallet = SuiWallet.load("test-wallet")

    assert loaded_net.home == network.home and loaded_net.kind == "localnet"
    assert keystore_text not in repr(loaded_wallet) and keystore_text not in str(loaded_wallet.model_dump())
    wallet = loaded_wallet.get_wallet()
    assert wallet.active_address == aliases["user"]
    assert wallet.resolve("node-2") == aliases["node-2"]
    assert not any(p.name.endswith(".keystore") for p in Path.cwd().iterdir() if p.is_file())  # nothing written

    chain = loaded_net.open_chain(loaded_wallet)
    try:
        assert isinstance(chain, LocalnetChain)
        assert asyncio.run(chain.usdc_balance(aliases["user"])) == 0
    finally:
        asyncio.run(chain.close())


def test_wallet_block_refuses_bad_secrets_without_echoing_them():
    with pytest.raises(KeystoreError, match="not valid JSON") as info:
        SuiWallet(keystore=SecretStr("AGVsbG8=not-json")).get_wallet()
    assert "AGVsbG8" not in str(info.value)
    with pytest.raises(KeystoreError, match="entry 0"):
        SuiWallet(keystore=SecretStr('["not base64!"]')).get_wallet()
    with pytest.raises(InvalidArgument, match="client_yaml or keystore"):
        SuiWallet().get_wallet()


def test_network_and_engine_blocks_validate_their_fields(tmp_path):
    with pytest.raises(ValidationError):
        AtomaNetwork(kind="mainnet-please")
    with pytest.raises(ValidationError):
        InferenceEngine(kind="gpu")
    with pytest.raises(ValidationError):
        InferenceEngine(batch_size=0)
    with pytest.raises(InvalidArgument, match="connect"):
        AtomaNetwork(kind="sui", home=str(tmp_path)).open_chain()
    with pytest.raises(InvalidArgument, match="needs a SuiWallet"):
        asyncio.run(AtomaNetwork(kind="sui", home=str(tmp_path)).connect())
    with pytest.raises(InvalidArgument, match="needs package_id"):
        AtomaNetwork(kind="sui", sui_preset="custom", sui_endpoint="http://127.0.0.1:1").sui_settings()
    testnet = AtomaNetwork(kind="sui", db_id="0x2e0da18aabf472ec674ce500eace0a1e298df1ad62235318ff0d87d6a8bcd075").sui_settings()
    assert testnet.db_id.startswith("0x2e0da18a") and testnet.package_id.startswith("0x8903298b")
    assert Ledger().open(str(tmp_path)).path == tmp_path / "ledger.duckdb"
    assert Ledger(path=str(tmp_path / "x.duckdb")).open().path == tmp_path / "x.duckdb"
