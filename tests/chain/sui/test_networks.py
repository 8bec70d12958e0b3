import pytest

from atoma_ops.chain.errors import InvalidArgument
from atoma_ops.chain.sui.networks import sui_network


def test_testnet_preset_matches_the_published_ids():
    net = sui_network("testnet")
    # atoma-protocol.md §0: atoma-node's config.example.toml and Circle's testnet USDC package
    assert net.package_id == "0x8903298ba49a8e83d438e014b2cfd18404324f3a0274b9507b520d5745b85208"
    assert net.db_id == "0x02920289f426dd1f3c2572d613f7dc92be95041720864a73d44d65585530efc5"
    assert net.usdc_coin_type.endswith("7e29::usdc::USDC")


def test_overrides_and_custom():
    net = sui_network("testnet", db_id="0x2e0da18aabf472ec674ce500eace0a1e298df1ad62235318ff0d87d6a8bcd075")
    assert net.db_id.startswith("0x2e0da18a") and net.package_id.startswith("0x8903")
    custom = sui_network("custom", endpoint="http://127.0.0.1:9000", package_id="0x1", db_id="0x2",
                         usdc_coin_type="0x3::usdc::USDC")
    assert custom.package_id == "0x" + "0" * 63 + "1"
    assert custom.usdc_coin_type == "0x" + "0" * 63 + "3::usdc::USDC"


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "devnet"}, "unknown Sui network"),
    ({"preset": "custom", "endpoint": "http://127.0.0.1:1"}, "needs package_id, db_id, usdc_coin_type"),
    ({"db_id": "0xZZ"}, "db_id"),
    ({"usdc_coin_type": "0xa1::usdc"}, "usdc_coin_type"),
    ({"endpoint": "grpc://x"}, "endpoint"),
    ({"gas_budget_cap": -1}, "gas_budget_cap"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        sui_network(**kwargs)
