"""Compute units of a chat request (atoma-protocol.md §9): the estimate reserved before running and the actual cost.

The tokenizer is passed in; here it is a whitespace counter so every expected value can be done by hand.
"""

from __future__ import annotations

import pytest

from atoma_ops.protocol import compute_units as cu


def words(text: str) -> int:
    return len(text.split())


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_constants():
    assert cu.DEFAULT_MAX_TOKENS == 8192
    assert cu.TOKENS_PER_MESSAGE == 3


@pytest.mark.parametrize(
    "request_body, expected",
    [
        # string content: (2 + 3) + (3 + 3) + 100
        (
            {"messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello there world"}],
             "max_tokens": 100},
            5 + 6 + 100,
        ),
        # no output budget given: 8192
        ({"messages": [{"role": "user", "content": "one two"}]}, (2 + 3) + 8192),
        # max_completion_tokens beats max_tokens
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 7, "max_tokens": 500}, 4 + 7),
        # an explicit null max_completion_tokens falls back to max_tokens
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": None, "max_tokens": 9}, 4 + 9),
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": None, "max_tokens": None}, 4 + 8192),
        # content parts: each text part is (tokens + 3); images count 0
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "what is this"}, IMAGE,
                                                       {"type": "text", "text": "be brief"}]}],
             "max_tokens": 10},
            (3 + 3) + 0 + (2 + 3) + 10,
        ),
        # an image-only message costs nothing (no overhead either: the +3 is per text message/part)
        ({"messages": [{"role": "user", "content": [IMAGE, IMAGE]}], "max_tokens": 10}, 10),
        # mixed: string message + parts message
        (
            {"messages": [{"role": "system", "content": "a b c d"},
                          {"role": "user", "content": [IMAGE, {"type": "text", "text": "e"}]}],
             "max_completion_tokens": 1},
            (4 + 3) + (1 + 3) + 1,
        ),
        # an empty string still is a text message: 0 + 3
        ({"messages": [{"role": "user", "content": ""}], "max_tokens": 5}, 3 + 5),
        # no messages at all: just the output budget
        ({"messages": [], "max_tokens": 5}, 5),
        ({}, 8192),
    ],
    ids=["string", "default-8192", "max_completion_tokens-wins", "null-mct", "both-null", "parts-with-image",
         "image-only", "mixed", "empty-string", "no-messages", "empty-request"],
)
def test_chat_estimate_table(request_body, expected):
    assert cu.chat_estimate(request_body, words) == expected


def test_max_output_tokens():
    assert cu.max_output_tokens({}) == 8192
    assert cu.max_output_tokens({"max_tokens": 42}) == 42
    assert cu.max_output_tokens({"max_completion_tokens": 3, "max_tokens": 42}) == 3


def test_the_counter_sees_only_text():
    seen: list[str] = []

    def counter(text: str) -> int:
        seen.append(text)
        return 1

    request = {"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "hi"}]},
                            {"role": "assistant", "content": "ok"}], "max_tokens": 0}
    assert cu.chat_estimate(request, counter) == (1 + 3) * 2 + 0
    assert seen == ["hi", "ok"]


def test_message_texts():
    assert cu.message_texts({"role": "user", "content": "s"}) == ["s"]
    assert cu.message_texts({"role": "user", "content": [{"type": "text", "text": "a"}, IMAGE]}) == ["a"]
    assert cu.message_texts({"role": "assistant", "content": None}) == []


@pytest.mark.parametrize(
    "usage, expected",
    [
        ({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26}, 26),
        ({"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 999}, 26),  # total_tokens is not trusted
        ({"prompt_tokens": 7, "completion_tokens": 0}, 7),
        ({"prompt_tokens": 7}, 7),
        ({}, 0),
    ],
)
def test_actual_units(usage, expected):
    assert cu.actual_units(usage) == expected



def test_actual_units_treats_null_usage_fields_as_zero():
    from atoma_ops.protocol.compute_units import actual_units

    assert actual_units({"prompt_tokens": 12, "completion_tokens": None}) == 12
