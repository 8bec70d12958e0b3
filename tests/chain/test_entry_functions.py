"""Entry functions §4.1–§4.8 and the admin setters §4.18: happy paths with Sui-shaped events, every abort in the
spec's check order, and the owner checks on badges. Stack functions are in test_entry_stacks.py, attestation in
test_entry_attestation.py, the §14 quirks in test_entry_quirks.py."""

from __future__ import annotations

import pytest

from tests.chain.chainkit import CONFIDENTIAL, NO_SECURITY, SAMPLING, InvalidArgument, TransactionRejected, sid, transfer


# ====================================================================== §4.1 register_node_entry
def test_register_node_happy_path(net):
    before = net.cfg().next_node_small_id
    assert before == 1  # counters start at 1
    net.epoch(3)
    r = net.register_node_entry("node-1")
    assert net.names(r) == ["NodeRegisteredEvent"]
    ev = r.events[0]
    badge = net.badge("node-1", "NodeBadge")
    assert ev.parsed_json == {"badge_id": badge.object_id, "node_small_id": sid(1)}
    assert ev.type == f"{net.ln.package_id}::db::NodeRegisteredEvent"
    assert ev.sender == net.addr["node-1"]
    assert badge.small_id == 1
    node = net.get_node(1)
    assert node.was_disabled_in_epoch is None
    assert (node.collateral, node.last_fee_epoch, node.last_fee_epoch_amount, node.available_fee_amount) == (0, 3, 0, 0)
    assert node.reputation_score == 50
    assert net.cfg().next_node_small_id == 2
    # no USDC taken, and ids are sequential per registration
    assert r.balance_changes == {}
    assert net.node("node-2") == 2
    assert net.node("node-1") == 3  # a second badge for the same address


def test_register_node_aborts_when_registration_disabled(net):
    net.set("disable_registration")
    assert net.cfg().is_registration_disabled is True
    net.fails("ENodeRegDisabled", "register_node_entry", "node-1")
    net.set("enable_registration")
    assert net.node("node-1") == 1  # the failed attempt consumed no id


def test_registration_collateral_setting_is_never_enforced(net):
    r = net.set("set_required_registration_toma_collateral", 1_000_000)
    assert r.events == []
    assert net.cfg().registration_collateral_in_protocol_token == 1_000_000
    r = net.register_node_entry("node-1")  # node-1 holds no USDC at all
    assert r.balance_changes == {}
    assert net.get_node(1).collateral == 0


# ====================================================================== §4.2 create_task_entry
def test_create_task_happy_path(net):
    r = net.create_task_entry("admin", role=3, model_name="black-forest-labs/FLUX.1-schnell", security_level=2,
                              minimum_reputation_score=30, is_public=False)
    assert net.names(r) == ["TaskRegisteredEvent"]
    badge = net.badge("admin", "TaskBadge")
    task = net.get_task(1)
    assert net.events(r)[0] == {
        "task_id": badge.object_id,  # the TaskBadge's id (quirk §14.12) ...
        "task_small_id": sid(1),
        "role": {"inner": 3},
        "model_name": "black-forest-labs/FLUX.1-schnell",
        "security_level": {"inner": 2},
        "minimum_reputation_score": 30,
    }
    assert task.task_id != badge.object_id  # ... not the Task's
    assert badge.small_id == 1
    assert (task.role, task.model_name, task.security_level, task.minimum_reputation_score) == (3, "black-forest-labs/FLUX.1-schnell", 2, 30)
    assert (task.is_deprecated, task.deprecated_at_epoch, task.is_public) == (False, None, False)
    assert task.whitelisted_nodes == [] and task.subscribed_nodes_small_ids == []
    assert net.cfg().next_task_small_id == 2


def test_create_task_defaults(net):
    r = net.create_task_entry("admin", role=0)
    assert net.events(r)[0]["model_name"] is None
    assert net.events(r)[0]["security_level"] == {"inner": 0}  # None ⇒ 0
    assert net.events(r)[0]["minimum_reputation_score"] is None  # raw Option in the event
    task = net.get_task(1)
    assert (task.security_level, task.minimum_reputation_score, task.is_public) == (0, 0, True)


@pytest.mark.parametrize("role", range(8))
def test_create_task_every_valid_role(net, role):
    net.create_task_entry("admin", role=role)
    assert net.get_task(1).role == role


@pytest.mark.parametrize("level", [0, 1, 2])
def test_create_task_every_valid_security_level(net, level):
    net.create_task_entry("admin", role=0, security_level=level, minimum_reputation_score=100)
    assert net.get_task(1).security_level == level
    assert net.get_task(1).minimum_reputation_score == 100


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"role": 8}, "EInvalidTaskRole"),
        ({"role": 65535}, "EInvalidTaskRole"),
        ({"role": 0, "security_level": 3}, "EInvalidSecurityLevel"),
        ({"role": 0, "minimum_reputation_score": 101}, "EInvalidMinimumReputationScore"),
        ({"role": 0, "minimum_reputation_score": 255}, "EInvalidMinimumReputationScore"),
        # check order: role, then security level, then minimum score
        ({"role": 8, "security_level": 3, "minimum_reputation_score": 101}, "EInvalidTaskRole"),
        ({"role": 0, "security_level": 3, "minimum_reputation_score": 101}, "EInvalidSecurityLevel"),
    ],
)
def test_create_task_aborts(net, kwargs, expected):
    net.fails(expected, "create_task_entry", "admin", **kwargs)
    assert net.cfg().next_task_small_id == 1


def test_create_task_requires_the_manager_badge(net):
    net.fails(InvalidArgument, "create_task_entry", "user", role=0)  # the user owns no AtomaManagerBadge
    admin_badge = net.badge("admin", "AtomaManagerBadge").object_id
    net.fails(TransactionRejected, "create_task_entry", "user", role=0, badge=admin_badge)


# ====================================================================== §4.3 deprecate_task
def test_deprecate_task_happy_path(net):
    t = net.task()
    net.epoch(2)
    r = net.deprecate_task("admin", task_small_id=t)
    task = net.get_task(t)
    assert net.names(r) == ["TaskDeprecationEvent"]
    assert net.events(r)[0] == {"task_id": task.task_id, "task_small_id": sid(t), "epoch": "2"}  # the Task's id
    assert (task.is_deprecated, task.deprecated_at_epoch) == (True, 2)


def test_deprecate_task_aborts(net):
    t1, t2 = net.task(), net.task()
    net.deprecate_task("admin", task_small_id=t1)
    net.fails("ETaskAlreadyDeprecated", "deprecate_task", "admin", task_small_id=t1)
    # ETaskNotFound: the admin removed the task, the TaskBadge survives; this also shows it is checked
    # before "already deprecated" (the removed task had been deprecated).
    net.deprecate_task("admin", task_small_id=t2)
    net.epoch(2)
    net.remove_deprecated_task_by_admin("admin", task_small_id=t2)
    assert net.badge("admin", "TaskBadge", t2)
    net.fails("ETaskNotFound", "deprecate_task", "admin", task_small_id=t2)


def test_deprecate_task_needs_the_task_badge(net):
    t = net.task()
    badge = net.badge("admin", "TaskBadge", t).object_id
    net.fails(InvalidArgument, "deprecate_task", "user", task_small_id=t)
    net.fails(TransactionRejected, "deprecate_task", "user", task_badge=badge)


# ====================================================================== §4.4 remove_deprecated_task (+ by admin)
def test_remove_deprecated_task_happy_path(net):
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 5)
    net.epoch(4)
    net.deprecate_task("admin", task_small_id=t)
    task_id = net.get_task(t).task_id
    badge = net.badge("admin", "TaskBadge", t).object_id
    net.epoch(1)
    r = net.remove_deprecated_task("admin", task_small_id=t)
    assert net.names(r) == ["TaskRemovedEvent"]
    assert net.events(r)[0] == {"task_id": task_id, "task_small_id": sid(t), "removed_at_epoch": "5"}
    assert net.get_task(t) is None
    assert net.subscriptions(t) == []
    assert net.ln.get_object(badge) is None  # the badge was consumed
    assert any(c.object_id == badge and c.change == "deleted" for c in r.object_changes)
    assert net.cfg().next_task_small_id == 2  # ids are never reused
    assert net.task() == 2


def test_remove_deprecated_task_aborts_in_order(net):
    t1, t2 = net.task(), net.task()
    net.fails("ETaskNotDeprecated", "remove_deprecated_task", "admin", task_small_id=t1)
    net.deprecate_task("admin", task_small_id=t1)
    net.fails("ENotEnoughEpochsPassed", "remove_deprecated_task", "admin", task_small_id=t1)  # same epoch E
    # ETaskNotFound before ETaskNotDeprecated/epochs: removed by the admin, badge kept
    net.deprecate_task("admin", task_small_id=t2)
    net.epoch(2)
    net.remove_deprecated_task_by_admin("admin", task_small_id=t2)
    net.fails("ETaskNotFound", "remove_deprecated_task", "admin", task_small_id=t2)
    net.remove_deprecated_task("admin", task_small_id=t1)


def test_remove_deprecated_task_by_badge_at_exactly_E_plus_1(net):
    t = net.task()
    net.epoch(3)
    net.deprecate_task("admin", task_small_id=t)
    net.fails("ENotEnoughEpochsPassed", "remove_deprecated_task", "admin", task_small_id=t)
    net.epoch(1)
    net.remove_deprecated_task("admin", task_small_id=t)


def test_remove_deprecated_task_by_admin(net):
    t = net.task()
    net.fails("ETaskNotFound", "remove_deprecated_task_by_admin", "admin", task_small_id=99)
    net.fails("ETaskNotDeprecated", "remove_deprecated_task_by_admin", "admin", task_small_id=t)
    net.deprecate_task("admin", task_small_id=t)
    net.fails("ENotEnoughEpochsPassed", "remove_deprecated_task_by_admin", "admin", task_small_id=t)  # E
    net.epoch(1)
    net.fails("ENotEnoughEpochsPassed", "remove_deprecated_task_by_admin", "admin", task_small_id=t)  # E+1
    net.epoch(1)
    r = net.remove_deprecated_task_by_admin("admin", task_small_id=t)  # E+2
    assert r.events == []  # no event (quirk §14.12)
    assert net.get_task(t) is None
    assert net.badge("admin", "TaskBadge", t)  # the TaskBadge is left behind
    admin_badge = net.badge("admin", "AtomaManagerBadge").object_id
    net.fails(TransactionRejected, "remove_deprecated_task_by_admin", "user", task_small_id=t, badge=admin_badge)


# ====================================================================== §4.5 whitelist_nodes_for_task
def test_whitelist_happy_path(net):
    t = net.task(is_public=False)
    r = net.whitelist_nodes_for_task("admin", task_small_id=t, nodes=[2, 2, 99])
    assert r.events == []
    assert net.get_task(t).whitelisted_nodes == [2, 2, 99]  # no dedupe, no existence check
    r = net.whitelist_nodes_for_task("admin", task_small_id=t, nodes=[])
    assert r.events == [] and net.get_task(t).whitelisted_nodes == [2, 2, 99]
    net.whitelist_nodes_for_task("admin", task_small_id=t, nodes=[1])
    assert net.get_task(t).whitelisted_nodes == [2, 2, 99, 1]


def test_whitelist_aborts(net):
    public = net.task(is_public=True)
    net.fails("ETaskNotFound", "whitelist_nodes_for_task", "admin", task_small_id=42, nodes=[1])
    net.fails("ETaskIsPublic", "whitelist_nodes_for_task", "admin", task_small_id=public, nodes=[1])
    net.fails("ETaskIsPublic", "whitelist_nodes_for_task", "admin", task_small_id=public, nodes=[])
    net.fails(InvalidArgument, "whitelist_nodes_for_task", "user", task_small_id=public, nodes=[1])


# ====================================================================== §4.6 subscribe_node_to_task
def test_subscribe_happy_path(net):
    t = net.task()
    n = net.node("node-2")
    r = net.sub("node-2", t, 250)
    assert net.names(r) == ["NodeSubscribedToTaskEvent"]
    assert net.events(r)[0] == {
        "task_small_id": sid(t),
        "node_small_id": sid(n),
        "price_per_one_million_compute_units": "250",
        "max_num_compute_units": "1000000",
    }
    [s] = net.subscriptions(t)
    assert (s.node_small_id, s.price_per_one_million_compute_units, s.max_num_compute_units) == (n, 250, 1_000_000)
    assert net.get_task(t).subscribed_nodes_small_ids == [n]


def test_subscribe_private_task_when_whitelisted(net):
    t = net.task(is_public=False)
    n = net.node("node-1")
    net.whitelist_nodes_for_task("admin", task_small_id=t, nodes=[n])
    net.sub("node-1", t, 1)
    assert [s.node_small_id for s in net.subscriptions(t)] == [n]


def test_subscribe_minimum_reputation_boundary(net):
    """Reputation is always 50: minimum 50 passes, 51 never does (quirk §14.11)."""
    ok, never = net.task(min_score=50), net.task(min_score=51)
    net.node("node-1")
    net.sub("node-1", ok, 1)
    net.fails("ENodeDoesNotMeetTaskRequirements", "sub", "node-1", never, 1)


def test_subscribe_aborts_each(net):
    n = net.node("node-1")
    public = net.task()
    private = net.task(is_public=False)
    strict = net.task(min_score=100)
    deprecated = net.task()
    net.deprecate_task("admin", task_small_id=deprecated)
    net.fails("ETaskNotFound", "sub", "node-1", 77, 1)
    net.fails("ENodeDoesNotMeetTaskRequirements", "sub", "node-1", strict, 1)
    net.fails("ENodeNotWhitelistedForTask", "sub", "node-1", private, 1)
    net.fails("ETaskDeprecated", "sub", "node-1", deprecated, 1)
    net.sub("node-1", public, 1)
    net.fails("ENodeAlreadySubscribedToTask", "sub", "node-1", public, 2)
    net.fails("EInvalidPricePerComputeUnit", "sub", "node-1", net.task(), 0)
    assert [s.node_small_id for s in net.subscriptions(public)] == [n]


def test_subscribe_check_order(net):
    """Each row violates the named check and every later one; the earlier check must win."""
    net.node("node-1")
    # min 51 + private (not whitelisted) + deprecated
    strict_private = net.task(min_score=51, is_public=False)
    net.deprecate_task("admin", task_small_id=strict_private)
    # private (not whitelisted) + deprecated
    private_dep = net.task(is_public=False)
    net.deprecate_task("admin", task_small_id=private_dep)
    # subscribed + deprecated
    sub_dep = net.task()
    net.sub("node-1", sub_dep, 5)
    net.deprecate_task("admin", task_small_id=sub_dep)
    # subscribed, price 0
    subbed = net.task()
    net.sub("node-1", subbed, 5)

    net.fails("ETaskNotFound", "sub", "node-1", 999, 0)
    net.fails("ENodeDoesNotMeetTaskRequirements", "sub", "node-1", strict_private, 0)
    net.fails("ENodeNotWhitelistedForTask", "sub", "node-1", private_dep, 0)  # whitelist before deprecation
    net.fails("ETaskDeprecated", "sub", "node-1", sub_dep, 0)
    net.fails("ENodeAlreadySubscribedToTask", "sub", "node-1", subbed, 0)


# ====================================================================== §4.7 update_node_subscription
def test_update_subscription_happy_path(net):
    net.mint("user", 10 * 1_000_000)
    t = net.task()
    n = net.node("node-1")
    net.sub("node-1", t, 100)
    stack = net.buy(t, 1_000_000, 300)
    r = net.update_node_subscription("node-1", task_small_id=t, price_per_one_million_compute_units=700)
    assert net.names(r) == ["NodeSubscriptionUpdatedEvent"]
    assert net.events(r)[0] == {
        "node_small_id": sid(n),
        "task_small_id": sid(t),
        "price_per_one_million_compute_units": "700",
        "max_num_compute_units": "1000000",
    }
    [s] = net.subscriptions(t)
    assert (s.price_per_one_million_compute_units, s.max_num_compute_units) == (700, 1_000_000)
    assert net.get_stack(stack).price_per_one_million_compute_units == 300  # existing stacks keep their own price
    assert net.get_task(t).subscribed_nodes_small_ids == [n]


def test_update_subscription_aborts_each(net):
    net.node("node-1")
    t = net.task()
    net.fails("EInvalidPricePerComputeUnit", "update_node_subscription", "node-1", task_small_id=t,
              price_per_one_million_compute_units=0)
    net.fails("ETaskNotFound", "update_node_subscription", "node-1", task_small_id=5,
              price_per_one_million_compute_units=1)
    net.fails("ENodeNotSubscribedToTask", "update_node_subscription", "node-1", task_small_id=t,
              price_per_one_million_compute_units=1)
    net.sub("node-1", t, 3)
    net.deprecate_task("admin", task_small_id=t)
    net.fails("ETaskDeprecated", "update_node_subscription", "node-1", task_small_id=t,
              price_per_one_million_compute_units=1)


def test_update_subscription_check_order(net):
    net.node("node-1")
    dep = net.task()
    net.deprecate_task("admin", task_small_id=dep)
    # price 0 on a missing task: the price is checked first
    net.fails("EInvalidPricePerComputeUnit", "update_node_subscription", "node-1", task_small_id=404,
              price_per_one_million_compute_units=0)
    # price 0 on a deprecated task the node is not subscribed to
    net.fails("EInvalidPricePerComputeUnit", "update_node_subscription", "node-1", task_small_id=dep,
              price_per_one_million_compute_units=0)
    # not subscribed + deprecated: subscription first
    net.fails("ENodeNotSubscribedToTask", "update_node_subscription", "node-1", task_small_id=dep,
              price_per_one_million_compute_units=1)


# ====================================================================== §4.8 unsubscribe_node_from_task
def test_unsubscribe_happy_path(net):
    t = net.task()
    n = net.node("node-1")
    net.sub("node-1", t, 3)
    r = net.unsubscribe_node_from_task("node-1", task_small_id=t)
    assert net.names(r) == ["NodeUnsubscribedFromTaskEvent"]
    assert net.events(r)[0] == {"task_small_id": sid(t), "node_small_id": sid(n)}
    assert net.subscriptions(t) == []
    assert net.get_task(t).subscribed_nodes_small_ids == [n]  # stale id left behind (quirk §4.8)
    net.fails("ENodeNotSubscribedToTask", "unsubscribe_node_from_task", "node-1", task_small_id=t)
    net.sub("node-1", t, 4)  # can subscribe again
    assert net.get_task(t).subscribed_nodes_small_ids == [n, n]


def test_unsubscribe_aborts_each_and_order(net):
    net.node("node-1")
    t = net.task()
    net.fails("ETaskNotFound", "unsubscribe_node_from_task", "node-1", task_small_id=8)
    net.fails("ENodeNotSubscribedToTask", "unsubscribe_node_from_task", "node-1", task_small_id=t)
    net.sub("node-1", t, 3)
    other = net.task()
    net.deprecate_task("admin", task_small_id=t)
    net.deprecate_task("admin", task_small_id=other)
    # the badge field is removed before the deprecation check, but the abort reverts it
    net.fails("ETaskDeprecated", "unsubscribe_node_from_task", "node-1", task_small_id=t)
    net.fails("ETaskDeprecated", "unsubscribe_node_from_task", "node-1", task_small_id=t)
    assert [s.node_small_id for s in net.subscriptions(t)] == [1]
    # not subscribed + deprecated: subscription first
    net.fails("ENodeNotSubscribedToTask", "unsubscribe_node_from_task", "node-1", task_small_id=other)


# ====================================================================== §4.18 admin setters
SETTERS = [
    ("set_cross_validation_probability_permille", "cross_validation_probability_permille", 10, [0, 1000, 5000]),
    ("set_cross_validation_extra_nodes_count", "cross_validation_extra_nodes_count", 1, [0, 3]),
    ("set_sampling_consensus_charge_permille", "sampling_consensus_charge_permille", 1200, [0, 1000, 99999]),
    ("set_cross_validation_extra_nodes_charge_permille", "cross_validation_extra_nodes_charge_permille", 12, [0, 2000]),
    ("set_permille_to_slash_node_on_timeout", "permille_to_slash_node_on_timeout", 100, [0, 1000]),
    ("set_permille_for_oracle_on_dispute", "permille_for_oracle_on_dispute", 100, [0, 800]),
    ("set_permille_for_honest_nodes_on_dispute", "permille_for_honest_nodes_on_dispute", 200, [0, 900]),
    ("set_required_registration_toma_collateral", "registration_collateral_in_protocol_token", 0, [2**64 - 1]),
]


@pytest.mark.parametrize("setter, field, initial, values", SETTERS)
def test_admin_setter(net, setter, field, initial, values):
    assert getattr(net.cfg(), field) == initial
    for v in values:
        r = net.set(setter, v)
        assert r.events == []
        assert getattr(net.cfg(), field) == v
    admin_badge = net.badge("admin", "AtomaManagerBadge").object_id
    net.fails(InvalidArgument, "admin_set", "user", setter, 1)
    net.fails(TransactionRejected, "admin_set", "node-1", setter, 1, badge=admin_badge)


@pytest.mark.parametrize(
    "setter, value",
    [
        ("set_permille_to_slash_node_on_timeout", 1001),
        ("set_permille_to_slash_node_on_timeout", 2**64 - 1),
        ("set_permille_for_oracle_on_dispute", 801),  # 801 + 200 (honest) > 1000
        ("set_permille_for_honest_nodes_on_dispute", 901),  # 100 (oracle) + 901 > 1000
    ],
)
def test_admin_setter_permille_limits(net, setter, value):
    net.fails("ETotalPermilleMustBeLessThan1000", "set", setter, value)


def test_dispute_permilles_are_checked_against_each_other(net):
    net.set("set_permille_for_oracle_on_dispute", 800)  # 800 + 200 = 1000 is allowed
    net.fails("ETotalPermilleMustBeLessThan1000", "set", "set_permille_for_honest_nodes_on_dispute", 201)
    net.set("set_permille_for_honest_nodes_on_dispute", 0)
    net.set("set_permille_for_oracle_on_dispute", 1000)


def test_registration_toggles(net):
    r = net.set("disable_registration")
    assert r.events == [] and net.cfg().is_registration_disabled
    net.set("disable_registration")  # idempotent
    r = net.set("enable_registration")
    assert not net.cfg().is_registration_disabled
    net.fails(InvalidArgument, "admin_set", "node-1", "disable_registration")


# ====================================================================== owner checks (transfers of badges/coins)
def test_another_address_node_badge_is_refused(net):
    t = net.task()
    net.node("node-1")
    net.node("node-2")
    other = net.badge("node-2", "NodeBadge").object_id
    net.fails(TransactionRejected, "sub", "node-1", t, 5, node_badge=other)
    net.sub("node-2", t, 5)
    net.fails(TransactionRejected, "unsubscribe_node_from_task", "node-1", task_small_id=t, node_badge=other)
    net.fails(TransactionRejected, "update_node_subscription", "node-1", task_small_id=t,
              price_per_one_million_compute_units=9, node_badge=other)
    net.fails(TransactionRejected, "withdraw_fees", "node-1", node_badge=other)
    net.fails(TransactionRejected, "permanently_disable_node", "node-1", node_badge=other)
    net.fails(TransactionRejected, "destroy_disabled_node", "user", node_badge=other)
    net.fails(TransactionRejected, "claim_funds", "node-1", settled_ticket_ids=[], node_badge=other)


def test_another_address_coin_is_refused(net):
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 1)
    net.mint("node-2", 5_000_000)
    net.mint("user", 5_000_000)
    coin = net.ln.usdc_coins(net.addr["node-2"])[0].object_id
    net.fails(TransactionRejected, "acquire_new_stack_entry", "user", task_small_id=t, num_compute_units=10, price=1,
              wallet=coin)


def test_badges_of_the_wrong_kind_are_refused(net):
    t = net.task()
    net.node("node-1")
    task_badge = net.badge("admin", "TaskBadge", t).object_id
    node_badge = net.badge("node-1", "NodeBadge").object_id
    # the admin's own TaskBadge passed where a NodeBadge is expected
    net.fails(TransactionRejected, "sub", "admin", t, 5, node_badge=task_badge)
    net.fails(TransactionRejected, "deprecate_task", "node-1", task_badge=node_badge)
    net.fails(TransactionRejected, "sub", "node-1", t, 5, node_badge="0x" + "ab" * 32)  # does not exist


def test_hints_pick_among_several_badges(net):
    t = net.task()
    net.node("node-1")
    net.node("node-1")
    net.fails(InvalidArgument, "sub", "node-1", t, 5)  # two NodeBadges: ambiguous
    r = net.sub("node-1", t, 5, node_small_id=2)
    assert net.events(r)[0]["node_small_id"] == sid(2)


def test_security_level_constants_match_the_code():
    assert (NO_SECURITY, CONFIDENTIAL, SAMPLING) == (0, 1, 2)


# ====================================================================== publish (§2.3) and transfers (§2.2)
def test_publish_event_and_manager_badge(net):
    [published] = [e for e in net.ln.events(limit=10).events if e.name == "PublishedEvent"]
    badge = net.badge("admin", "AtomaManagerBadge")
    assert published.parsed_json == {"db": net.ln.db_id, "manager_badge": badge.object_id}
    cfg = net.cfg()
    assert (cfg.next_node_small_id, cfg.next_task_small_id, cfg.next_stack_small_id) == (1, 1, 1)
    assert (cfg.fee_treasury, cfg.communal_treasury, cfg.key_rotation_counter) == (0, 0, 0)
    assert (cfg.cross_validation_probability_permille, cfg.cross_validation_extra_nodes_count) == (10, 1)
    assert (cfg.sampling_consensus_charge_permille, cfg.cross_validation_extra_nodes_charge_permille) == (1200, 12)
    assert (cfg.permille_to_slash_node_on_timeout, cfg.permille_for_oracle_on_dispute,
            cfg.permille_for_honest_nodes_on_dispute) == (100, 100, 200)
    assert cfg.is_registration_disabled is False and cfg.registration_collateral_in_protocol_token == 0


def test_transferred_manager_badge_moves_admin_rights(net):
    badge = net.badge("admin", "AtomaManagerBadge").object_id
    net.fails(TransactionRejected, "admin_set", "user", "disable_registration", badge=badge)
    before = net.digest()
    with pytest.raises(TransactionRejected):
        transfer(net, "user", badge, "user")  # the user cannot take it
    assert net.digest() == before
    transfer(net, "admin", badge, "user")
    assert net.badge("user", "AtomaManagerBadge").object_id == badge
    net.create_task_entry("user", role=1)
    assert net.badge("user", "TaskBadge").small_id == 1  # the TaskBadge goes to the sender
    net.fails(InvalidArgument, "create_task_entry", "admin", role=1)
    net.fails(TransactionRejected, "create_task_entry", "admin", role=1, badge=badge)


def test_transferred_node_badge_moves_the_node(net):
    net.mint("user", 1_000_000)
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 1)
    s = net.buy(t, 1_000_000, 1_000_000)
    net.settle("node-1", s, 250_000)
    badge = net.badge("node-1", "NodeBadge").object_id
    transfer(net, "node-1", badge, "node-3")
    net.epoch()
    net.fails(InvalidArgument, "claim", "node-1", s)
    net.fails(TransactionRejected, "claim", "node-1", s, node_badge=badge)
    r = net.claim("node-3", s)  # the fee goes to the sender holding the badge
    assert r.balance_changes == {net.addr["node-3"]: 250_000, net.addr["user"]: 750_000}


def test_stack_badge_is_informational_refunds_follow_stack_owner(net):
    net.mint("user", 1_000_000)
    t = net.task()
    net.node("node-1")
    net.sub("node-1", t, 1)
    s = net.buy(t, 1_000_000, 1_000_000)
    transfer(net, "user", net.badge("user", "StackBadge").object_id, "node-2")
    net.settle("node-1", s, 0)
    net.epoch()
    r = net.claim("node-1", s)
    assert r.balance_changes == {net.addr["user"]: 1_000_000}  # Stack.owner, not the badge holder
    assert net.badge("node-2", "StackBadge").small_id == s


def test_usdc_coin_transfer_is_conserved(localnet_net):
    """The localnet's own TransferObjects transaction (its JSON format; no entry function, no port call)."""
    net = localnet_net
    net.mint("user", 700)
    coin = net.ln.usdc_coins(net.addr["user"])[0].object_id
    r = transfer(net, "user", coin, "node-3")
    assert r.balance_changes == {net.addr["user"]: -700, net.addr["node-3"]: 700}
    assert (net.usdc("user"), net.usdc("node-3")) == (0, 700)
    net.conserved()


def test_whitelisting_is_allowed_on_a_deprecated_task(net):
    t = net.task(is_public=False)
    net.deprecate_task("admin", task_small_id=t)
    net.whitelist_nodes_for_task("admin", task_small_id=t, nodes=[1])
    assert net.get_task(t).whitelisted_nodes == [1]
