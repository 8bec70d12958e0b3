"""The journal on PostgreSQL (atoma_ops.journal_postgres): how it is chosen (block, CLI option, environment), what
it says when its database is away, and that it never shows the password. Its contract (the same as the DuckDB
journal's) runs in tests/test_journal.py against both stores."""

from __future__ import annotations

import pytest

from atoma_ops.core.errors import ErrorClass, classify
from atoma_ops.journal_postgres import (
    JOURNAL_URL_ENV,
    JournalConfigError,
    JournalUnavailable,
    PostgresJournal,
    open_journal,
    redact,
)
from atoma_ops.ledger import Ledger
from atoma_ops.testing.postgres import free_port


def test_without_a_url_the_ledger_is_the_journal(tmp_path, monkeypatch):
    monkeypatch.delenv(JOURNAL_URL_ENV, raising=False)
    ledger = Ledger(tmp_path / "ledger.duckdb")
    assert open_journal(None, ledger) is ledger
    assert open_journal("", ledger) is ledger


def test_a_url_or_the_environment_chooses_postgres(tmp_path, monkeypatch, pg_database):
    ledger = Ledger(tmp_path / "ledger.duckdb")
    monkeypatch.delenv(JOURNAL_URL_ENV, raising=False)
    given = open_journal(pg_database, ledger)
    assert isinstance(given, PostgresJournal) and given.url == pg_database
    assert open_journal(pg_database, ledger) is given  # one store (one connection) per URL in a process
    monkeypatch.setenv(JOURNAL_URL_ENV, pg_database)
    assert open_journal(None, ledger) is given
    # and it is a journal: a row written through it reads back
    given.record_actions([{"idempotency_key": "k", "kind": "claim_funds", "status": "success", "digest": "d"}])
    assert given.actions(["k"])["k"]["digest"] == "d"
    assert not (tmp_path / "ledger.duckdb").exists()  # nothing went to the ledger


def test_the_network_block_and_the_cli_option_name_the_journal(tmp_path, monkeypatch, pg_database):
    from typer.testing import CliRunner

    from atoma_ops.cli import app
    from atoma_ops.cli.core import State
    from atoma_ops.cli.stack import _journal
    from blocks import AtomaNetwork

    monkeypatch.delenv(JOURNAL_URL_ENV, raising=False)
    ledger = Ledger(tmp_path / "ledger.duckdb")
    block = AtomaNetwork(home=str(tmp_path), journal_url=pg_database)
    assert "pw-secret" not in repr(AtomaNetwork(journal_url="postgresql://u:pw-secret@h/d"))  # a SecretStr
    assert isinstance(block.open_journal(ledger), PostgresJournal)
    assert AtomaNetwork(home=str(tmp_path)).open_journal(ledger) is ledger
    assert AtomaNetwork.model_fields["journal_url"].description

    state = State()
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "--journal-url", pg_database, "localnet", "status"],
                                obj=state)
    assert state.journal_url == pg_database, result.output
    journal = _journal(state)
    assert isinstance(journal, PostgresJournal) and journal.url == pg_database
    assert isinstance(_journal(State(home=str(tmp_path))), Ledger)


def test_an_unreachable_database_is_a_named_retryable_error_without_the_password():
    url = f"postgresql://atoma:hunter2-secret@127.0.0.1:{free_port()}/journal"
    journal = PostgresJournal(url, connect_timeout_s=2)
    assert "hunter2" not in repr(journal) and "***" in repr(journal)
    with pytest.raises(JournalUnavailable) as info:
        journal.actions(["k"])
    assert "hunter2" not in str(info.value) and "127.0.0.1" in str(info.value)
    assert classify(info.value) is ErrorClass.RETRYABLE  # the flow's retry policy tries again

    from atoma_ops.cli.errors import classify as cli_classify

    status, doc, line = cli_classify(info.value)
    assert (status, doc["kind"]) == (1, "JournalUnavailable") and "hunter2" not in line


def test_a_url_that_is_not_postgres_is_refused_by_name():
    with pytest.raises(JournalConfigError):
        PostgresJournal("mysql://root@127.0.0.1/journal")
    assert classify(JournalConfigError("x")) is ErrorClass.TERMINAL
    journal = PostgresJournal("postgresql://u:pw-secret@127.0.0.1:notaport/db")
    with pytest.raises((JournalConfigError, JournalUnavailable)) as info:
        journal.actions()
    assert "pw-secret" not in str(info.value)


def test_redact_hides_only_the_password():
    assert redact("postgresql://a:b@h:5/d") == "postgresql://a:***@h:5/d"
    assert redact("postgresql://a@h:5/d") == "postgresql://a@h:5/d"
