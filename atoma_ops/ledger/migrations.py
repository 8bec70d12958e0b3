"""Numbered schema migrations of the ledger, applied in order when a ledger is opened (never by hand).

Each migration is ``(version, name, sql)``; ``schema_migrations`` records the versions applied, in the same DuckDB
transaction as the migration itself, so a crash leaves either the old or the new schema. Never edit a migration that
has shipped: add the next number. Views are (re)defined with ``CREATE OR REPLACE VIEW`` in the migration that
introduces or changes them.

Types: ids, units, epochs and USDC amounts are BIGINT (USDC base units; the whole USDC supply is < 2^63 base units);
a stack's price is UBIGINT (a bid may be any u64); byte columns are BLOB; node lists are BIGINT[].
Sums are cast back to BIGINT in every view (DuckDB widens SUM(BIGINT) to HUGEINT, which pandas turns into floats).
"""

from __future__ import annotations

import duckdb

M0001_CORE = """
-- raw events, in chain order; seq is the ledger's position of the event (chain order, gap-free from 1)
CREATE TABLE events (
    seq             BIGINT  PRIMARY KEY,
    tx_digest       VARCHAR NOT NULL,
    event_seq       BIGINT  NOT NULL,
    type            VARCHAR NOT NULL,          -- full Move type, <package>::db::<Name>
    name            VARCHAR NOT NULL,          -- <Name>
    sender          VARCHAR,
    package_id      VARCHAR,
    parsed_json     JSON    NOT NULL,          -- Sui's parsedJson (u64 as strings, small ids as {"inner": ...})
    epoch           BIGINT,
    timestamp_ms    BIGINT,
    -- keys extracted once at ingest, for the mirror and for analysts
    stack_small_id  BIGINT,
    task_small_id   BIGINT,
    node_small_id   BIGINT,
    UNIQUE (tx_digest, event_seq)
);

-- where the indexer stands: the last event applied (NULL = before the first event); one row
CREATE TABLE indexer_cursor (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    tx_digest       VARCHAR,
    event_seq       BIGINT,
    events_indexed  BIGINT  NOT NULL,
    updated_at      TIMESTAMP NOT NULL
);

-- the chain this ledger mirrors, and what the chain said at the last sync (AtomaDb scalars, epoch); one row
CREATE TABLE chain_snapshot (
    id                                              INTEGER PRIMARY KEY CHECK (id = 1),
    db_id                                           VARCHAR NOT NULL,
    package_id                                      VARCHAR NOT NULL,
    epoch                                           BIGINT  NOT NULL,
    synced_at                                       TIMESTAMP NOT NULL,
    fee_treasury                                    BIGINT,
    communal_treasury                               BIGINT,
    next_node_small_id                              BIGINT,
    next_task_small_id                              BIGINT,
    next_stack_small_id                             BIGINT,
    cross_validation_probability_permille           UBIGINT,
    cross_validation_extra_nodes_count              UBIGINT,
    sampling_consensus_charge_permille              UBIGINT,
    cross_validation_extra_nodes_charge_permille    UBIGINT
);

-- every transaction that emitted an indexed event, with its USDC balance changes (the payouts actually made)
CREATE TABLE transactions (
    tx_digest       VARCHAR PRIMARY KEY,
    sender          VARCHAR,
    status          VARCHAR NOT NULL,          -- success | failure | unknown (the chain no longer knows it)
    epoch           BIGINT,
    timestamp_ms    BIGINT,
    first_seq       BIGINT  NOT NULL,
    last_seq        BIGINT  NOT NULL
);
CREATE TABLE balance_changes (
    tx_digest       VARCHAR NOT NULL,
    address         VARCHAR NOT NULL,
    amount          BIGINT  NOT NULL,          -- USDC base units received (+) or paid (-)
    PRIMARY KEY (tx_digest, address)
);

-- ------------------------------------------------------------------------------------------ chain-state mirror
CREATE TABLE tasks (
    task_small_id               BIGINT PRIMARY KEY,
    task_id                     VARCHAR,       -- TaskRegisteredEvent.task_id: the TaskBadge's id (quirk 12)
    task_object_id              VARCHAR,       -- TaskDeprecationEvent/TaskRemovedEvent.task_id: the Task's id
    role                        BIGINT,
    model_name                  VARCHAR,
    security_level              BIGINT,
    minimum_reputation_score    BIGINT,        -- as passed (NULL = none)
    is_deprecated               BOOLEAN NOT NULL,
    deprecated_at_epoch         BIGINT,
    is_removed                  BOOLEAN NOT NULL,  -- kept for history; the chain deleted it
    removed_at_epoch            BIGINT,
    registered_epoch            BIGINT,
    registered_tx_digest        VARCHAR
);

CREATE TABLE nodes (
    node_small_id       BIGINT PRIMARY KEY,
    badge_id            VARCHAR,
    node_sui_address    VARCHAR,               -- sender of the registration
    registered_epoch    BIGINT,
    registered_tx_digest VARCHAR
);

CREATE TABLE node_public_key_rotations (
    node_small_id           BIGINT NOT NULL,
    device_type             BIGINT NOT NULL,
    epoch                   BIGINT,
    key_rotation_counter    BIGINT,
    public_key_bytes        BLOB,
    evidence_data_bytes     BLOB,
    PRIMARY KEY (node_small_id, device_type)
);

CREATE TABLE node_subscriptions (
    task_small_id                       BIGINT NOT NULL,
    node_small_id                       BIGINT NOT NULL,
    price_per_one_million_compute_units UBIGINT,
    max_num_compute_units               BIGINT,
    valid                               BOOLEAN NOT NULL,   -- false once unsubscribed (the row is kept)
    subscribed_epoch                    BIGINT,
    updated_epoch                       BIGINT,
    PRIMARY KEY (task_small_id, node_small_id)
);

CREATE TABLE stacks (
    stack_small_id                      BIGINT PRIMARY KEY,
    stack_id                            VARCHAR,           -- the StackBadge's id
    owner_address                       VARCHAR NOT NULL,
    task_small_id                       BIGINT  NOT NULL,
    selected_node_id                    BIGINT  NOT NULL,
    num_compute_units                   BIGINT  NOT NULL,
    price_per_one_million_compute_units UBIGINT NOT NULL,
    security_level                      BIGINT,            -- of the task (NULL when the task is unknown)
    created_epoch                       BIGINT,
    created_tx_digest                   VARCHAR,
    expected_payment                    BIGINT,            -- §4.9 fee_amount, from the protocol math
    in_settle_period                    BOOLEAN NOT NULL,  -- a ticket exists (or existed)
    is_in_dispute                       BOOLEAN NOT NULL,
    is_claimed                          BOOLEAN NOT NULL,
    claim_path                          VARCHAR,           -- ticket (claim_funds) | confidential (claim_funds_for_stacks)
    claimed_epoch                       BIGINT,
    num_claimed_compute_units           BIGINT,
    user_refund_amount                  BIGINT,
    deleted_on_chain                    BOOLEAN NOT NULL   -- claim_funds deletes stack and ticket (quirk 13)
);

CREATE TABLE stack_settlement_tickets (
    stack_small_id                  BIGINT PRIMARY KEY,
    selected_node_id                BIGINT NOT NULL,
    num_claimed_compute_units       BIGINT NOT NULL,
    requested_attestation_nodes     BIGINT[] NOT NULL,
    committed_stack_proof           BLOB,
    stack_merkle_leaves             BLOB,      -- as the contract sizes it: 32 x (1 + extra_nodes_count)
    leaves_complete                 BOOLEAN NOT NULL,  -- false when a leaf written on chain is in no event
    settled_epoch                   BIGINT,    -- try_settle epoch E
    dispute_settled_at_epoch        BIGINT,    -- E + 1: claimable from it; attestations accepted up to it
    settled_tx_digest               VARCHAR,
    already_attested_nodes          BIGINT[] NOT NULL,
    attestations_completed_epoch    BIGINT,    -- StackSettlementTicketEvent (the stored ticket keeps E + 1)
    is_in_dispute                   BOOLEAN NOT NULL,
    is_claimed                      BOOLEAN NOT NULL,
    claimed_epoch                   BIGINT,
    user_refund_amount              BIGINT,
    -- what claiming it will pay (protocol math at the charge permilles of the last sync)
    node_fee_expected               BIGINT,
    refund_expected                 BIGINT,
    attester_credits_expected       BIGINT     -- for the nodes attested so far
);

CREATE TABLE attestations (
    stack_small_id          BIGINT NOT NULL,
    seq                     BIGINT NOT NULL,   -- the event's ledger seq
    attestation_node_id     BIGINT NOT NULL,
    slot                    BIGINT,            -- leaves slot written (first position of the node in the request + 1)
    committed_stack_proof   BLOB,
    stack_merkle_leaf       BLOB,
    epoch                   BIGINT,
    tx_digest               VARCHAR,
    completes_ticket        BOOLEAN NOT NULL,  -- followed by StackSettlementTicketEvent
    PRIMARY KEY (stack_small_id, seq)
);

CREATE TABLE disputes (
    stack_small_id          BIGINT NOT NULL,
    seq                     BIGINT NOT NULL,
    attestation_node_id     BIGINT NOT NULL,
    attestation_commitment  BLOB,
    original_node_id        BIGINT,
    original_commitment     BLOB,
    epoch                   BIGINT,
    tx_digest               VARCHAR,
    cause                   VARCHAR,           -- proof_mismatch | final_check_failed | started_directly
    PRIMARY KEY (stack_small_id, seq)
);

-- one row per claimed stack: what the protocol math says was paid, and what the events say
CREATE TABLE claims (
    stack_small_id                      BIGINT PRIMARY KEY,
    claim_path                          VARCHAR NOT NULL,  -- ticket | confidential
    seq                                 BIGINT  NOT NULL,
    claim_tx_digest                     VARCHAR NOT NULL,
    claimed_epoch                       BIGINT,
    claimer_address                     VARCHAR,           -- the transaction's sender: receives the node fee
    selected_node_id                    BIGINT  NOT NULL,
    task_small_id                       BIGINT,
    security_level                      BIGINT,
    owner_address                       VARCHAR,           -- receives the refund
    num_compute_units                   BIGINT,
    num_claimed_compute_units           BIGINT  NOT NULL,
    price_per_one_million_compute_units UBIGINT,
    paid_amount                         BIGINT,            -- expected_payment of the stack
    node_fee                            BIGINT,            -- §4.13 / §4.14 protocol math
    refund_expected                     BIGINT,            -- protocol math
    user_refund_amount                  BIGINT  NOT NULL,  -- as the event reports it
    attestation_nodes                   BIGINT[] NOT NULL, -- requested (ticket path)
    attested_nodes                      BIGINT[] NOT NULL, -- already attested when claimed
    attester_credit_each                BIGINT,            -- node_fee / extra_nodes_count
    attester_credits_total              BIGINT  NOT NULL
);

-- attester credits (quirk 10): bookkeeping on the attester's NodeEntry.available_fee_amount, no funds reserved
CREATE TABLE attester_credits (
    stack_small_id      BIGINT NOT NULL,
    position            BIGINT NOT NULL,   -- index in requested_attestation_nodes (duplicates are credited twice)
    node_small_id       BIGINT NOT NULL,
    amount              BIGINT NOT NULL,
    claim_tx_digest     VARCHAR NOT NULL,
    claim_seq           BIGINT NOT NULL,
    claimed_epoch       BIGINT,
    PRIMARY KEY (stack_small_id, position)
);

-- --------------------------------------------------------------------------------------- per-request usage
CREATE TABLE usage (
    stack_small_id      BIGINT NOT NULL,
    request_index       BIGINT NOT NULL,   -- position in the stack's history (serving order)
    prompt_tokens       BIGINT,
    completion_tokens   BIGINT,
    estimated_units     BIGINT,            -- reserved before running (§9)
    actual_units        BIGINT,            -- settled after
    latency_ms          DOUBLE,
    payload_hash        BLOB,              -- blake2b-256 of the canonical request
    response_hash       BLOB,              -- blake2b-256 of the canonical response
    served_at_ms        BIGINT,
    PRIMARY KEY (stack_small_id, request_index),
    CHECK (request_index >= 0),
    CHECK (payload_hash IS NULL OR octet_length(payload_hash) = 32),
    CHECK (response_hash IS NULL OR octet_length(response_hash) = 32)
);

-- ------------------------------------------------------------------------- intent journal (orchestration)
-- Every chain write is persisted here (signed bytes + digest) before it is submitted.
-- Suggested statuses: planned, signed, submitted, succeeded, failed, in_doubt.
CREATE TABLE chain_actions (
    idempotency_key     VARCHAR PRIMARY KEY,
    kind                VARCHAR NOT NULL,  -- the entry function, e.g. try_settle_stack, claim_funds
    stack_small_id      BIGINT,
    status              VARCHAR NOT NULL,
    sender              VARCHAR,
    args                JSON,
    signed_tx_bytes     BLOB,
    signature           VARCHAR,
    digest              VARCHAR,
    attempts            BIGINT NOT NULL DEFAULT 0,
    last_error_code     VARCHAR,           -- e.g. db:312012014, balance:2, ArithmeticError
    last_error          VARCHAR,
    created_at          TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at          TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

M0002_VIEWS = """
-- the epoch the chain was at when the ledger last synced ("now" for the views below)
CREATE OR REPLACE VIEW ledger_epoch AS
SELECT COALESCE((SELECT epoch FROM chain_snapshot WHERE id = 1), 0) AS epoch;

-- what each stack's purchase transaction actually took from the buyer (per owner and transaction)
CREATE OR REPLACE VIEW stack_payments AS
SELECT s.stack_small_id, s.owner_address, s.task_small_id, s.selected_node_id, s.security_level,
       s.created_epoch, s.created_tx_digest, s.expected_payment,
       (-b.amount)::BIGINT AS paid_in_tx,   -- all the owner paid in that transaction (several stacks may share it)
       (SELECT count(*) FROM stacks s2 WHERE s2.created_tx_digest = s.created_tx_digest
                                        AND s2.owner_address = s.owner_address)::BIGINT AS stacks_in_tx
FROM stacks s
LEFT JOIN balance_changes b ON b.tx_digest = s.created_tx_digest AND b.address = s.owner_address;

-- attester credits withdrawn: every claim_funds / claim_funds_for_stacks ends with withdraw_fees for the claiming
-- node, which pays out all its available_fee_amount (= its attester credits since its previous claim, including
-- those credited in the same transaction). withdraw_fees alone emits no event: such withdrawals are invisible here
-- and show up as a usdc_checks mismatch at the node's next claim and as drift in reconcile.
CREATE OR REPLACE VIEW credit_withdrawals AS
WITH claim_txs AS (
    SELECT claim_tx_digest AS tx_digest, selected_node_id AS node_small_id,
           any_value(claimer_address) AS address, max(seq) AS tx_last_seq, any_value(claimed_epoch) AS epoch
    FROM claims GROUP BY claim_tx_digest, selected_node_id
), credit_points AS (       -- running total of each node's credits, in log order
    SELECT node_small_id, claim_seq,
           sum(sum(amount)) OVER (PARTITION BY node_small_id ORDER BY claim_seq) AS cum
    FROM attester_credits GROUP BY node_small_id, claim_seq
), at_claim AS (            -- the running total as of each of the node's claim transactions
    SELECT t.*, COALESCE(p.cum, 0) AS cum
    FROM claim_txs t ASOF LEFT JOIN credit_points p
      ON t.node_small_id = p.node_small_id AND t.tx_last_seq >= p.claim_seq
)
SELECT tx_digest, node_small_id, address, epoch,
       (cum - COALESCE(lag(cum) OVER (PARTITION BY node_small_id ORDER BY tx_last_seq), 0))::BIGINT AS amount
FROM at_claim;

-- credits per node: credited at claims, withdrawn at the node's own claims, outstanding (owed by the treasury)
CREATE OR REPLACE VIEW node_credit_balances AS
WITH credited AS (SELECT node_small_id, sum(amount)::BIGINT AS credited, count(*)::BIGINT AS credits
                  FROM attester_credits GROUP BY node_small_id),
     withdrawn AS (SELECT node_small_id, sum(amount)::BIGINT AS withdrawn FROM credit_withdrawals GROUP BY node_small_id)
SELECT n.node_small_id, COALESCE(c.credits, 0)::BIGINT AS credits,
       COALESCE(c.credited, 0)::BIGINT AS credited,
       COALESCE(w.withdrawn, 0)::BIGINT AS withdrawn,
       (COALESCE(c.credited, 0) - COALESCE(w.withdrawn, 0))::BIGINT AS outstanding
FROM (SELECT node_small_id FROM nodes UNION SELECT node_small_id FROM credited) n
LEFT JOIN credited c USING (node_small_id)
LEFT JOIN withdrawn w USING (node_small_id);

-- USDC each (transaction, address) should have moved by the protocol rules, line by line
CREATE OR REPLACE VIEW usdc_expected AS
SELECT created_tx_digest AS tx_digest, owner_address AS address, 'stack_payment' AS kind,
       stack_small_id, (-expected_payment)::BIGINT AS amount
FROM stacks WHERE created_tx_digest IS NOT NULL
UNION ALL
SELECT claim_tx_digest, owner_address, 'refund', stack_small_id, user_refund_amount FROM claims
UNION ALL
SELECT claim_tx_digest, claimer_address, 'node_fee', stack_small_id, node_fee FROM claims
UNION ALL
SELECT tx_digest, address, 'attester_credit_withdrawal', NULL, amount FROM credit_withdrawals WHERE amount <> 0;

-- expected vs actual USDC per (transaction, address): a mismatch is flagged here, never netted away
CREATE OR REPLACE VIEW usdc_checks AS
WITH e AS (SELECT tx_digest, address, sum(amount)::BIGINT AS expected, list(DISTINCT kind ORDER BY kind) AS kinds,
                  list(DISTINCT stack_small_id ORDER BY stack_small_id) FILTER (WHERE stack_small_id IS NOT NULL) AS stacks
           FROM usdc_expected GROUP BY tx_digest, address),
     a AS (SELECT b.tx_digest, b.address, b.amount AS actual FROM balance_changes b
           WHERE b.tx_digest IN (SELECT tx_digest FROM usdc_expected))
SELECT COALESCE(e.tx_digest, a.tx_digest) AS tx_digest, COALESCE(e.address, a.address) AS address,
       t.epoch, e.kinds, e.stacks,
       COALESCE(e.expected, 0)::BIGINT AS expected, COALESCE(a.actual, 0)::BIGINT AS actual,
       (COALESCE(a.actual, 0) - COALESCE(e.expected, 0))::BIGINT AS difference,
       CASE WHEN t.status IS DISTINCT FROM 'success' THEN 'unknown_transaction'
            WHEN COALESCE(a.actual, 0) = COALESCE(e.expected, 0) THEN 'ok'
            ELSE 'mismatch' END AS status
FROM e FULL OUTER JOIN a ON e.tx_digest = a.tx_digest AND e.address = a.address
LEFT JOIN transactions t ON t.tx_digest = COALESCE(e.tx_digest, a.tx_digest)
WHERE COALESCE(e.expected, 0) <> 0 OR COALESCE(a.actual, 0) <> 0;

CREATE OR REPLACE VIEW usdc_mismatches AS SELECT * FROM usdc_checks WHERE status <> 'ok';

-- per claimed stack: node fee and refund from the protocol math, checked against the event and the USDC received
CREATE OR REPLACE VIEW claim_accounting AS
SELECT c.stack_small_id, c.claim_path, c.claimed_epoch, c.selected_node_id, c.task_small_id, c.security_level,
       c.owner_address, c.claimer_address, c.num_compute_units, c.num_claimed_compute_units,
       c.price_per_one_million_compute_units, c.paid_amount, c.node_fee, c.refund_expected, c.user_refund_amount,
       c.attester_credits_total,
       (c.node_fee + c.user_refund_amount + c.attester_credits_total)::BIGINT AS payouts,
       (c.node_fee + c.user_refund_amount + c.attester_credits_total - c.paid_amount)::BIGINT AS payouts_over_paid,
       (c.refund_expected = c.user_refund_amount) AS refund_matches_math,
       NOT EXISTS (SELECT 1 FROM usdc_checks k WHERE k.tx_digest = c.claim_tx_digest AND k.status <> 'ok')
           AS usdc_received_matches,
       c.claim_tx_digest
FROM claims c;

-- earnings: node fees paid at claims plus attester credits (credited, withdrawable only while the treasury has them)
CREATE OR REPLACE VIEW earnings_lines AS
SELECT selected_node_id AS node_small_id, task_small_id, claimed_epoch AS epoch, stack_small_id,
       num_claimed_compute_units AS units_claimed, node_fee, 0::BIGINT AS attester_credits, 1 AS stacks_claimed
FROM claims
UNION ALL
SELECT a.node_small_id, c.task_small_id, a.claimed_epoch, a.stack_small_id, 0, 0, a.amount, 0
FROM attester_credits a JOIN claims c USING (stack_small_id);

CREATE OR REPLACE VIEW earnings_by_node AS
SELECT node_small_id, sum(stacks_claimed)::BIGINT AS stacks_claimed, sum(units_claimed)::BIGINT AS units_claimed,
       sum(node_fee)::BIGINT AS node_fees, sum(attester_credits)::BIGINT AS attester_credits,
       sum(node_fee + attester_credits)::BIGINT AS total
FROM earnings_lines GROUP BY node_small_id ORDER BY node_small_id;

CREATE OR REPLACE VIEW earnings_by_task AS
SELECT task_small_id, sum(stacks_claimed)::BIGINT AS stacks_claimed, sum(units_claimed)::BIGINT AS units_claimed,
       sum(node_fee)::BIGINT AS node_fees, sum(attester_credits)::BIGINT AS attester_credits,
       sum(node_fee + attester_credits)::BIGINT AS total
FROM earnings_lines GROUP BY task_small_id ORDER BY task_small_id;

CREATE OR REPLACE VIEW earnings_by_epoch AS
SELECT epoch, sum(stacks_claimed)::BIGINT AS stacks_claimed, sum(units_claimed)::BIGINT AS units_claimed,
       sum(node_fee)::BIGINT AS node_fees, sum(attester_credits)::BIGINT AS attester_credits,
       sum(node_fee + attester_credits)::BIGINT AS total
FROM earnings_lines GROUP BY epoch ORDER BY epoch;

CREATE OR REPLACE VIEW earnings_by_epoch_node AS
SELECT epoch, node_small_id, sum(stacks_claimed)::BIGINT AS stacks_claimed,
       sum(units_claimed)::BIGINT AS units_claimed, sum(node_fee)::BIGINT AS node_fees,
       sum(attester_credits)::BIGINT AS attester_credits, sum(node_fee + attester_credits)::BIGINT AS total
FROM earnings_lines GROUP BY epoch, node_small_id ORDER BY epoch, node_small_id;

-- refunds per buyer
CREATE OR REPLACE VIEW refunds_by_buyer AS
SELECT s.owner_address, count(*)::BIGINT AS stacks_bought, sum(s.expected_payment)::BIGINT AS paid,
       count(c.stack_small_id)::BIGINT AS stacks_claimed,
       COALESCE(sum(c.user_refund_amount), 0)::BIGINT AS refunded,
       (sum(s.expected_payment) - COALESCE(sum(c.user_refund_amount), 0))::BIGINT AS net_spent,
       count(*) FILTER (WHERE s.is_in_dispute)::BIGINT AS stacks_in_dispute,
       COALESCE(sum(s.expected_payment) FILTER (WHERE s.is_in_dispute), 0)::BIGINT AS paid_for_disputed
FROM stacks s LEFT JOIN claims c USING (stack_small_id)
GROUP BY s.owner_address ORDER BY s.owner_address;

-- stack utilisation: units bought, served (usage rows), claimed
CREATE OR REPLACE VIEW stack_utilisation AS
WITH u AS (SELECT stack_small_id, count(*)::BIGINT AS requests, sum(estimated_units)::BIGINT AS units_estimated,
                  sum(actual_units)::BIGINT AS units_served, sum(prompt_tokens)::BIGINT AS prompt_tokens,
                  sum(completion_tokens)::BIGINT AS completion_tokens, avg(latency_ms) AS avg_latency_ms
           FROM usage GROUP BY stack_small_id)
SELECT s.stack_small_id, s.task_small_id, s.selected_node_id, s.owner_address, s.security_level,
       s.num_compute_units AS units_bought,
       COALESCE(u.requests, 0)::BIGINT AS requests,
       COALESCE(u.units_estimated, 0)::BIGINT AS units_estimated,
       COALESCE(u.units_served, 0)::BIGINT AS units_served,
       COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units) AS units_claimed,
       COALESCE(u.units_served, 0)::DOUBLE / s.num_compute_units AS served_ratio,
       COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units)::DOUBLE / s.num_compute_units AS claimed_ratio,
       (COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units) - COALESCE(u.units_served, 0))::BIGINT
           AS claimed_minus_served,
       u.prompt_tokens, u.completion_tokens, u.avg_latency_ms,
       CASE WHEN s.is_claimed THEN 'claimed' WHEN s.is_in_dispute THEN 'in_dispute'
            WHEN s.in_settle_period THEN 'settling' ELSE 'open' END AS status
FROM stacks s LEFT JOIN u USING (stack_small_id)
LEFT JOIN stack_settlement_tickets t USING (stack_small_id)
ORDER BY s.stack_small_id;

-- open tickets: claimable from dispute_settled_at_epoch; attestations accepted up to that epoch included
CREATE OR REPLACE VIEW open_tickets AS
SELECT t.stack_small_id, t.selected_node_id, s.task_small_id, s.security_level, s.owner_address,
       t.num_claimed_compute_units, s.num_compute_units, t.settled_epoch,
       t.dispute_settled_at_epoch AS claimable_from_epoch,
       t.dispute_settled_at_epoch AS attestation_window_last_epoch,
       t.requested_attestation_nodes, t.already_attested_nodes,
       len(t.requested_attestation_nodes) - len(t.already_attested_nodes) AS attestations_missing,
       t.is_in_dispute, e.epoch AS ledger_epoch,
       CASE WHEN t.is_in_dispute THEN 'in_dispute (terminal: never claimable)'
            WHEN s.is_claimed THEN 'stack already claimed (confidential path): claim_funds will abort'
            WHEN e.epoch >= t.dispute_settled_at_epoch THEN 'claimable'
            ELSE 'waiting for epoch ' || t.dispute_settled_at_epoch END AS status
FROM stack_settlement_tickets t JOIN stacks s USING (stack_small_id), ledger_epoch e
WHERE NOT t.is_claimed
ORDER BY t.dispute_settled_at_epoch, t.stack_small_id;

-- attestations per ticket, and the disputes
CREATE OR REPLACE VIEW attestation_status AS
SELECT t.stack_small_id, t.selected_node_id, t.settled_epoch, t.dispute_settled_at_epoch,
       t.requested_attestation_nodes, t.already_attested_nodes,
       (SELECT count(*) FROM attestations a WHERE a.stack_small_id = t.stack_small_id)::BIGINT AS attestation_events,
       t.attestations_completed_epoch, t.is_in_dispute, t.is_claimed,
       CASE WHEN t.is_in_dispute THEN 'disputed'
            WHEN len(t.requested_attestation_nodes) = 0 THEN 'no attestation requested'
            WHEN t.attestations_completed_epoch IS NOT NULL THEN 'attested'
            ELSE 'awaiting ' || (len(t.requested_attestation_nodes) - len(t.already_attested_nodes)) || ' attestation(s)'
       END AS status
FROM stack_settlement_tickets t
WHERE len(t.requested_attestation_nodes) > 0 OR t.is_in_dispute
ORDER BY t.stack_small_id;

-- Sampling Consensus payout quirk (§14.10): what each claimed SC stack paid in vs what claiming it pays out and
-- credits, all from the shared fee treasury
CREATE OR REPLACE VIEW sampling_consensus_payouts AS
SELECT stack_small_id, claimed_epoch, selected_node_id, paid_amount, node_fee, user_refund_amount,
       attester_credits_total, payouts, payouts_over_paid
FROM claim_accounting WHERE security_level = 2
ORDER BY stack_small_id;

-- USDC flow: paid in, paid out, left in the fee treasury; reconciles with the chain's fee_treasury
CREATE OR REPLACE VIEW usdc_flow AS
WITH
  paid AS (SELECT COALESCE(sum(expected_payment), 0)::BIGINT AS v FROM stacks),
  fees AS (SELECT COALESCE(sum(node_fee), 0)::BIGINT AS v FROM claims),
  refunds AS (SELECT COALESCE(sum(user_refund_amount), 0)::BIGINT AS v FROM claims),
  credited AS (SELECT COALESCE(sum(amount), 0)::BIGINT AS v FROM attester_credits),
  withdrawn AS (SELECT COALESCE(sum(amount), 0)::BIGINT AS v FROM credit_withdrawals),
  observed AS (SELECT COALESCE(-sum(amount), 0)::BIGINT AS v FROM balance_changes),
  open_liab AS (SELECT COALESCE(sum(t.node_fee_expected + t.refund_expected + t.attester_credits_expected), 0)::BIGINT AS v
      FROM stack_settlement_tickets t JOIN stacks s USING (stack_small_id)
      WHERE NOT t.is_claimed AND NOT t.is_in_dispute AND NOT s.is_claimed),
  disputed AS (SELECT COALESCE(sum(expected_payment), 0)::BIGINT AS v FROM stacks WHERE is_in_dispute AND NOT is_claimed),
  chain AS (SELECT fee_treasury, communal_treasury, epoch FROM chain_snapshot WHERE id = 1)
SELECT paid.v AS paid_in,
       fees.v AS paid_out_node_fees,
       refunds.v AS paid_out_refunds,
       withdrawn.v AS paid_out_attester_credits,
       (fees.v + refunds.v + withdrawn.v)::BIGINT AS paid_out,
       (paid.v - fees.v - refunds.v - withdrawn.v)::BIGINT AS fee_treasury_expected,
       observed.v AS fee_treasury_observed,        -- minus the sum of every recorded balance change
       chain.fee_treasury AS fee_treasury_chain,    -- at the last sync
       (chain.fee_treasury - (paid.v - fees.v - refunds.v - withdrawn.v))::BIGINT AS fee_treasury_drift,
       credited.v AS attester_credits_credited,
       (credited.v - withdrawn.v)::BIGINT AS attester_credits_outstanding,
       open_liab.v AS open_ticket_liabilities,      -- node fee + refund + credits of tickets not yet claimed nor disputed
       disputed.v AS paid_for_disputed_stacks,      -- stuck in the treasury forever (disputes are terminal)
       (chain.fee_treasury - (credited.v - withdrawn.v) - open_liab.v)::BIGINT AS treasury_headroom,
       chain.communal_treasury AS communal_treasury_chain,
       chain.epoch AS chain_epoch
FROM paid, fees, refunds, credited, withdrawn, observed, open_liab, disputed
LEFT JOIN chain ON true;
"""


M0003_USAGE_TIMES = """
-- per-request times from the node store (history.arrived_ms / first_token_ms / served_at_ms, epoch ms):
-- latency_ms = served_at_ms - arrived_ms (already a column, NULL until node stores recorded arrivals),
-- ttft_ms = first_token_ms - arrived_ms (time to first token). NULL for requests served before they were recorded.
ALTER TABLE usage ADD COLUMN ttft_ms DOUBLE;

-- stack utilisation: units bought, served (usage rows), claimed; mean latency and time to first token
CREATE OR REPLACE VIEW stack_utilisation AS
WITH u AS (SELECT stack_small_id, count(*)::BIGINT AS requests, sum(estimated_units)::BIGINT AS units_estimated,
                  sum(actual_units)::BIGINT AS units_served, sum(prompt_tokens)::BIGINT AS prompt_tokens,
                  sum(completion_tokens)::BIGINT AS completion_tokens, avg(latency_ms) AS avg_latency_ms,
                  avg(ttft_ms) AS avg_ttft_ms
           FROM usage GROUP BY stack_small_id)
SELECT s.stack_small_id, s.task_small_id, s.selected_node_id, s.owner_address, s.security_level,
       s.num_compute_units AS units_bought,
       COALESCE(u.requests, 0)::BIGINT AS requests,
       COALESCE(u.units_estimated, 0)::BIGINT AS units_estimated,
       COALESCE(u.units_served, 0)::BIGINT AS units_served,
       COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units) AS units_claimed,
       COALESCE(u.units_served, 0)::DOUBLE / s.num_compute_units AS served_ratio,
       COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units)::DOUBLE / s.num_compute_units AS claimed_ratio,
       (COALESCE(t.num_claimed_compute_units, s.num_claimed_compute_units) - COALESCE(u.units_served, 0))::BIGINT
           AS claimed_minus_served,
       u.prompt_tokens, u.completion_tokens, u.avg_latency_ms, u.avg_ttft_ms,
       CASE WHEN s.is_claimed THEN 'claimed' WHEN s.is_in_dispute THEN 'in_dispute'
            WHEN s.in_settle_period THEN 'settling' ELSE 'open' END AS status
FROM stacks s LEFT JOIN u USING (stack_small_id)
LEFT JOIN stack_settlement_tickets t USING (stack_small_id)
ORDER BY s.stack_small_id;

-- request latency per node and task: percentiles over the usage rows that carry times (requests_timed)
CREATE OR REPLACE VIEW request_latency AS
SELECT s.selected_node_id AS node_small_id, s.task_small_id,
       count(*)::BIGINT AS requests,
       count(u.latency_ms)::BIGINT AS requests_timed,
       quantile_cont(u.latency_ms, 0.5) AS latency_p50_ms,
       quantile_cont(u.latency_ms, 0.99) AS latency_p99_ms,
       avg(u.latency_ms) AS latency_avg_ms,
       quantile_cont(u.ttft_ms, 0.5) AS ttft_p50_ms,
       quantile_cont(u.ttft_ms, 0.99) AS ttft_p99_ms,
       avg(u.ttft_ms) AS ttft_avg_ms,
       sum(u.completion_tokens)::BIGINT AS completion_tokens
FROM usage u LEFT JOIN stacks s USING (stack_small_id)
GROUP BY s.selected_node_id, s.task_small_id
ORDER BY s.selected_node_id, s.task_small_id;
"""

M0004_ACTION_STACKS = """
-- the stacks each journaled chain write covers (a claim batch covers many): recovery reads them from here instead
-- of parsing them out of the idempotency key. Rows from before: their stack_small_id, where they had one.
ALTER TABLE chain_actions ADD COLUMN stack_small_ids BIGINT[];
UPDATE chain_actions SET stack_small_ids = [stack_small_id] WHERE stack_small_id IS NOT NULL;
"""

M0005_USAGE_FEEDS = """
-- where the usage import stands with each node read over HTTP (GET /v1/node/usage): the node's feed (its store's
-- id: another id is another store, read from the start) and the last sequence number imported. Written in the same
-- transaction as the usage rows of the page it ends, so a crash never skips a page nor loses one.
CREATE TABLE usage_feeds (
    node_small_id   BIGINT  PRIMARY KEY,
    node_address    VARCHAR NOT NULL,
    url             VARCHAR NOT NULL,          -- where it was read last
    feed            VARCHAR NOT NULL,
    cursor          BIGINT  NOT NULL CHECK (cursor >= 0),
    updated_at      TIMESTAMP NOT NULL
);
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "core tables: events, cursor, chain mirror, usage, chain_actions", M0001_CORE),
    (2, "analyst views", M0002_VIEWS),
    (3, "usage.ttft_ms; latency and time to first token in stack_utilisation and request_latency", M0003_USAGE_TIMES),
    (4, "chain_actions.stack_small_ids: the stacks a journaled write covers", M0004_ACTION_STACKS),
    (5, "usage_feeds: the usage import's cursor per node read over HTTP", M0005_USAGE_FEEDS),
]

LATEST_VERSION = MIGRATIONS[-1][0]

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
)
"""


def first(rows: list):
    """The first row, or None (DuckDB leaves a result unfinished until it is fetched to the end)."""
    return rows[0] if rows else None


def current_version(con) -> int:
    exists = first(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    ).fetchall())[0]
    if not exists:
        return 0
    return first(con.execute("SELECT COALESCE(max(version), 0) FROM schema_migrations").fetchall())[0]


def apply_migrations(con) -> list[int]:
    """Apply every migration newer than the file's version, each in its own transaction; returns those applied."""
    con.execute(MIGRATIONS_TABLE)
    have = current_version(con)
    if have > LATEST_VERSION:
        raise RuntimeError(
            f"this ledger has schema version {have}, newer than this atoma-ops knows ({LATEST_VERSION}): upgrade"
        )
    applied = []
    for version, name, sql in MIGRATIONS:
        if version <= have:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        applied.append(version)
    return applied


def _rollback(con) -> None:
    """Roll back, keeping the error that got us here: when a write failed (a full disk, say) DuckDB may have ended
    the transaction already, and its "no transaction is active" would hide the real cause."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass
