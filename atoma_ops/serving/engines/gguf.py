"""GGUF files loaded through transformers, converted once and kept beside the user's other caches.

transformers reads a GGUF file by walking every metadata field in Python (SmolLM2's 49,152-entry vocabulary is
~440,000 small reads) and does it once for the config, once for the tokenizer and once for the weights: about a
minute on a 2-core machine, for a 98 MB file, every time a process starts an engine. The same tokenizer and the
de-quantized float32 weights saved with ``save_pretrained`` load in a few seconds, so the first load converts and
later loads read the conversion.

The conversion is exact: the weights are the float32 tensors transformers de-quantized (safetensors stores them bit
for bit) and the tokenizer is saved whole (``tokenizer.json``, the chat template, the special tokens). It is keyed by
the GGUF file's SHA-256 and the transformers version that converted it, so a changed file or library converts again.

Where: ``$ATOMA_OPS_MODEL_CACHE``, else ``$XDG_CACHE_HOME/atoma-ops/models``, else ``~/.cache/atoma-ops/models``.
A folder is published by one rename after it is complete, so concurrent first loads (two test workers, two node
processes) never see half a conversion; the loser's copy is discarded. A cache that cannot be written (read-only
home, full disk) only costs the slow load; it never fails the engine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: written last into a conversion folder; a folder without it is not used
COMPLETE = "CONVERTED"


def cache_root() -> Path:
    explicit = os.environ.get("ATOMA_OPS_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "atoma-ops" / "models"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def converted_dir(gguf: Path) -> Path:
    """The cache folder for ``gguf`` converted by this transformers version (it may not exist yet)."""
    import transformers

    key = f"{_file_sha256(gguf)[:24]}-transformers-{transformers.__version__}"
    return cache_root() / f"{gguf.stem}-{key}"


def _ready(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


def load_tokenizer(gguf: Path):
    """The GGUF file's tokenizer (and chat template), from its conversion when there is one; a transformers folder
    (``tokenizer.json`` and its config) is read as it is."""
    from transformers import AutoTokenizer

    if Path(gguf).is_dir():
        return AutoTokenizer.from_pretrained(gguf)
    folder = converted_dir(gguf)
    if _ready(folder):
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def load_model(gguf: Path):
    """``(tokenizer, float32 model)`` from the GGUF file, converting it into the cache on first use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = converted_dir(gguf)
    if _ready(folder):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            return tokenizer, model
        except (OSError, ValueError) as exc:  # damaged by hand or by a full disk: convert again below
            log.warning("model cache %s is unreadable (%s); converting %s again", folder, exc, gguf.name)
            shutil.rmtree(folder, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    _publish(folder, tokenizer, model)
    return tokenizer, model


def save_converted(tokenizer, model, folder: Path) -> None:
    """Save a model transformers de-quantized from GGUF as a plain float32 transformers folder (what
    ``vllm serve`` and ``from_pretrained`` read). transformers refuses to save a model still marked as GGUF-quantized,
    though its weights are already plain tensors: the marks are dropped, the weights saved as they are."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    finally:
        model.hf_quantizer = None  # the model in memory is used on as it is


def _publish(folder: Path, tokenizer, model) -> None:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        log.warning("model cache %s cannot be written (%s); the next load converts again", folder.parent, exc)
        return
    try:
        save_converted(tokenizer, model, staging)
        (staging / COMPLETE).write_text("converted from GGUF by atoma-ops\n")
        os.rename(staging, folder)  # atomic; fails if another process published first, and then theirs is used
    except OSError as exc:
        if not _ready(folder):
            log.warning("model cache %s could not be written (%s); the next load converts again", folder, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
