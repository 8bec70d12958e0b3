"""engines/gguf.py: the converted-model cache, on a tiny random Llama (no download, no GGUF parse).

The conversion's exactness on SmolLM2 itself (equal state dicts, equal token ids and chat template) was checked when
the cache was written; here: the folder is used only when complete, published by one rename, survives a lost race,
and a cache that cannot be written or read never fails a load.
"""

from __future__ import annotations

import logging

import pytest
import torch

from atoma_ops.serving.engines import gguf


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ATOMA_OPS_MODEL_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tiny():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "</s>": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="</s>")
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return tokenizer, LlamaForCausalLM(config)


@pytest.fixture()
def fake_gguf(tmp_path):
    """Not a GGUF file: any attempt to parse it fails, so a load that succeeds came from the cache."""
    path = tmp_path / "model.Q4_1.gguf"
    path.write_bytes(b"not a gguf file")
    return path


def test_published_folder_is_used_without_parsing_the_gguf(cache, tiny, fake_gguf):
    tokenizer, model = tiny
    folder = gguf.converted_dir(fake_gguf)
    gguf._publish(folder, tokenizer, model)
    assert (folder / gguf.COMPLETE).is_file()
    assert [p.name for p in cache.iterdir()] == [folder.name]  # no staging folder left beside it

    loaded_tokenizer, loaded = gguf.load_model(fake_gguf)
    assert loaded_tokenizer.encode("hello world") == [1, 2]
    expected = model.state_dict()
    assert all(torch.equal(expected[k], v) for k, v in loaded.state_dict().items())
    assert gguf.load_tokenizer(fake_gguf).encode("world hello") == [2, 1]


def test_key_follows_the_file_contents(cache, fake_gguf):
    before = gguf.converted_dir(fake_gguf)
    fake_gguf.write_bytes(b"another file")
    assert gguf.converted_dir(fake_gguf) != before
    assert before.parent == cache


def test_losing_a_publish_race_keeps_the_winners_folder(cache, tiny, fake_gguf):
    tokenizer, model = tiny
    folder = gguf.converted_dir(fake_gguf)
    gguf._publish(folder, tokenizer, model)
    marker = (folder / gguf.COMPLETE).stat().st_mtime_ns
    gguf._publish(folder, tokenizer, model)  # a second process finishing later
    assert (folder / gguf.COMPLETE).stat().st_mtime_ns == marker
    assert [p.name for p in cache.iterdir()] == [folder.name]


def test_an_incomplete_folder_is_not_used(cache, tiny, fake_gguf):
    tokenizer, model = tiny
    folder = gguf.converted_dir(fake_gguf)
    gguf._publish(folder, tokenizer, model)
    (folder / gguf.COMPLETE).unlink()  # as if the process died before the marker (cannot happen after the rename)
    with pytest.raises(Exception):  # so it parses the file, which is not GGUF
        gguf.load_model(fake_gguf)


def test_a_damaged_cache_is_dropped_and_converted_again(cache, tiny, fake_gguf, caplog):
    tokenizer, model = tiny
    folder = gguf.converted_dir(fake_gguf)
    gguf._publish(folder, tokenizer, model)
    (folder / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger=gguf.__name__), pytest.raises(Exception):
        gguf.load_model(fake_gguf)  # the conversion itself fails here: the file is not GGUF
    assert "unreadable" in caplog.text
    assert not folder.exists()


def test_an_unwritable_cache_only_warns(tmp_path, monkeypatch, tiny, fake_gguf, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATOMA_OPS_MODEL_CACHE", str(blocker / "models"))  # a folder under a regular file
    tokenizer, model = tiny
    with caplog.at_level(logging.WARNING, logger=gguf.__name__):
        gguf._publish(gguf.converted_dir(fake_gguf), tokenizer, model)
    assert "cannot be written" in caplog.text
    assert blocker.read_text() == ""
