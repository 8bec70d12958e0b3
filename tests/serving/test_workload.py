"""The workload reader: every file it cannot serve is one named, terminal error that says which file and line."""

from __future__ import annotations

import json
import re

import pytest

from atoma_ops.core.errors import ErrorClass, classify, is_retryable
from atoma_ops.serving.workload import SAMPLE, WorkloadError, load_workload

GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})


def test_the_sample_and_crlf_lines_load(tmp_path):
    assert len(load_workload(SAMPLE)) > 5
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(f"# two requests, Windows line ends\r\n{GOOD}\r\n\r\n{GOOD}\r\n".encode())
    assert [r["messages"][0]["content"] for r in load_workload(path)] == ["hi", "hi"]


def test_bytes_that_are_not_utf8_name_the_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    # line 3 is a request whose content was saved as Latin-1: "café" ends in the byte 0xe9, not UTF-8's c3 a9
    path.write_bytes(f"# comment\n{GOOD}\n".encode() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(WorkloadError) as raised:
        load_workload(path)
    # column of the byte: '{"messages": [{"role": "user", "content": "caf' is 46 characters, the byte is the 47th
    assert str(raised.value) == f"{path}:3: not UTF-8 (byte 0xe9 at column 47)"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no UnicodeDecodeError chained in


def test_a_line_counted_past_multibyte_characters_and_lone_cr(tmp_path):
    path = tmp_path / "mixed.jsonl"
    # line 1 holds two-byte characters, line 2 ends with a lone CR (a line end when read as text), line 3 is bad
    path.write_bytes("# héllo wörld\n".encode() + GOOD.encode() + b"\r" + b"\x80\n")
    with pytest.raises(WorkloadError, match=r":3: not UTF-8 \(byte 0x80 at column 1\)$"):
        load_workload(path)


def test_not_json_and_not_a_request_name_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(f"{GOOD}\n\n{{oops\n")
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(path))}:3: not JSON \("):
        load_workload(path)
    path.write_text(f"{GOOD}\n{json.dumps({'max_tokens': 4})}\n")
    with pytest.raises(WorkloadError, match=rf"^{re.escape(str(path))}:2: .*messages"):
        load_workload(path)
    path.write_text("# nothing but a comment\n")
    with pytest.raises(WorkloadError, match="holds no requests"):
        load_workload(path)


def test_a_bad_workload_is_terminal_in_the_retry_taxonomy(tmp_path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"\xff\xfe\n")
    with pytest.raises(WorkloadError) as raised:
        load_workload(path)
    assert classify(raised.value) is ErrorClass.TERMINAL and not is_retryable(raised.value)
    assert raised.value.kind == "InvalidWorkload"
