"""Continuous batching for the CPU engine: one thread steps every active sequence together.

Why a thread of its own: the forward passes are long, blocking torch calls, and the requests come from any number of
asyncio event loops (the HTTP server's, one ``asyncio.run`` per ``Engine.chat`` call). The scheduler thread owns the
model; each request's stream hands it a :class:`Sequence` with a ``deliver`` callback that posts deltas back to the
caller's loop (``loop.call_soon_threadsafe``).

Each turn of the loop:

1. drops the sequences that finished or whose stream was closed (their KV cache goes with them);
2. admits waiting sequences (FIFO, up to ``max_batch`` active, about ``PREFILL_TOKENS`` prompt tokens a turn so the
   running ones are not stalled for long);
3. runs one pass (``BatchedLlama.step``) over all active sequences, one token each, and the admitted prompts that
   fit beside them (``MIX_ROWS`` rows in all), whose last position yields their first token; a prompt that does
   not fit runs alone first, in a pass of its own. Every row is what it would be alone (see engines/cpu.py); the
   scheduler samples per sequence and streams the text.

Why prompts join the decode pass: on a CPU a pass costs about the weights it reads, and a short prompt alone costs
about as much as a whole decode step, during which every running sequence waits (measured: a third of a run of
8 concurrent requests went to prompts run alone).

A failure while preparing, running or detokenizing fails only the sequences involved (their streams raise
EngineError): a failed pass runs again split (the decode rows together, each prompt alone), so only the part that
fails again is failed; the thread carries on. The thread exits as soon as no sequence is active or waiting, and the next
request starts a new one: an idle engine holds no thread, so a process that loaded it may fork (reliability/crash.py
refuses to fork while a thread exists), and a forked child resets the scheduler's state (``os.register_at_fork``) to
start its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import threading
import weakref
from collections import deque
from typing import Callable

from .base import Delta, EngineError, Sampling
from .cpu import MIX_ROWS

log = logging.getLogger(__name__)

#: prompt tokens prefilled per turn before the next decode step (at least one prompt is admitted per turn)
PREFILL_TOKENS = 512
#: first KV capacity beyond the prompt (grown by doubling up to prompt + budget)
INITIAL_ROOM = 64


class TextStream:
    """A sequence's completion text, released as tokens arrive.

    Decodes incrementally (only the tokens since the last complete character are re-decoded; bytes of a character
    split across tokens wait for the rest), and holds back any tail that could still become a stop string: text is
    released only once it cannot be part of one. When a stop string appears, the text ends just before it.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...] = ()):
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stops if s)
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] decode to the last released piece (context for the next one)
        self._read = 0
        self.text = ""  # decoded so far (complete characters)
        self.sent = 0  # characters of text already released
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Add a token; the text now safe to release."""
        if self.stopped:
            return ""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self._ids)
        return self._release(final=False)

    @property
    def settled(self) -> bool:
        """Every token pushed so far has all its text released (nothing waits for the rest of a character or for a
        possible stop string): the point up to which a stream cut now is exactly what those tokens decode to."""
        return self._read == len(self._ids) and self.sent == len(self.text)

    def finish(self) -> str:
        """No more tokens: release what is left (an unfinished character decodes as U+FFFD)."""
        if self.stopped:
            return ""
        if self._read < len(self._ids):
            before = self._decode(self._ids[self._prefix:self._read])
            self.text += self._decode(self._ids[self._prefix:])[len(before):]
            self._prefix = self._read = len(self._ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text, start = self.text, self.sent
        if self._stops:
            # a stop string can only start in the unreleased part (a possible start is never released)
            found = [i for i in (text.find(s, start) for s in self._stops) if i >= 0]
            if found:
                self.stopped = True
                end = min(found)
                self.sent = len(text)
                return text[start:end]
        end = len(text)
        if self._stops and not final:
            for stop in self._stops:
                for k in range(min(len(stop) - 1, end - start), 0, -1):
                    if text.endswith(stop[:k]):
                        end = min(end, len(text) - k)
                        break
        self.sent = end
        return text[start:end]


class Sequence:
    """One request inside the scheduler: its prompt, decoding settings, KV cache, text, and the callback that
    delivers its deltas (or an EngineError) to the caller. ``cancel`` may be called from any thread."""

    def __init__(self, prompt: list[int], sampling: Sampling, budget: int, deliver: Callable[[object], None]):
        self.prompt = prompt
        self.sampling = sampling
        self.budget = budget  # completion tokens at most (max_tokens bounded by the context)
        self.deliver = deliver
        self.text: TextStream | None = None  # set by the scheduler (it owns the tokenizer)
        self.generator = None
        self.cache = None
        self.start = 0  # where the prompt's own computation starts (after a shared prefix; BatchedLlama.begin)
        self.last = -1  # the token the next decode step feeds
        self.produced = 0
        self.unreported = 0  # produced tokens whose text is still held back (reported with it)
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def active(self) -> bool:
        return not (self.cancelled or self.finished)


def sample(torch, logits, sampling: Sampling, generator) -> int:
    """One token from one row of logits: temperature, then nucleus (top_p) filtering as transformers does it, then a
    draw from the sequence's own seeded generator (so neither other requests nor call order change it)."""
    scores = logits / sampling.temperature
    if sampling.top_p < 1.0:
        ordered, order = torch.sort(scores)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1.0 - sampling.top_p
        drop[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


class Scheduler:
    """Steps every active sequence of one model together (see the module doc)."""

    def __init__(self, model, tokenizer, *, eos: int, max_batch: int):
        import torch

        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self._eos = eos
        self.max_batch = max_batch
        self._reset()
        _SCHEDULERS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._thread: threading.Thread | None = None
        self._closing = False

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel everything and join the thread (at interpreter exit: a daemon thread killed inside a torch call
        aborts the process with "terminate called without an active exception")."""
        with self._lock:
            self._closing = True
            for seq in self._waiting:
                seq.cancel()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; start the scheduler thread if none runs."""
        with self._lock:
            self._waiting.append(seq)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cpu-engine-scheduler", daemon=True)
                self._thread.start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Join the scheduler thread if one runs; True once none does."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._lock:
            return self._thread is None and (thread is None or not thread.is_alive())

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    # ------------------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        torch = self._torch
        active: list[Sequence] = []
        admitted: list[Sequence] = []
        try:
            with torch.inference_mode():
                if self._model.checked_threads != torch.get_num_threads():
                    self._recheck()
                while True:
                    if self._closing:
                        for seq in active:
                            seq.cancel()
                    active = self._prune(active)
                    admitted = self._admit(active)
                    if admitted is None:
                        return
                    joining, alone, rows = [], [], len(active)
                    for seq in admitted:
                        if not self._prepare(seq):
                            continue
                        own = len(seq.prompt) - seq.start  # the rows the prompt adds to a pass
                        if rows + own <= MIX_ROWS:
                            joining.append(seq)
                            rows += own
                        else:  # too long to join this pass: a pass of its own, then it decodes with the others
                            alone.append(seq)
                            self._pass([], [seq])
                    active = self._prune(active)
                    if active or joining:
                        self._pass(active, joining)
                    active = self._prune(active + joining + alone)
                    admitted = []
        except BaseException as exc:  # a bug: fail what is running, and let the waiting requests start afresh
            log.exception("CPU engine scheduler stopped")
            for seq in active + (admitted or []):
                if seq.active:
                    self._fail(seq, exc)
            with self._lock:
                self._thread = None
                if self._waiting and not self._closing:
                    self._thread = threading.Thread(target=self._run, name="cpu-engine-scheduler", daemon=True)
                    self._thread.start()

    def _recheck(self) -> None:
        """The thread count changed since the batching mode was checked: check it again (serial if in doubt)."""
        try:
            mode = self._model.check()
        except Exception:
            log.exception("CPU engine: re-checking the batching mode failed; decoding one sequence per call")
            self._model.mode = "serial"
            self._model.checked_threads = self._torch.get_num_threads()
            return
        log.info("CPU engine: %d threads now, batching mode %s", self._model.checked_threads, mode)

    @staticmethod
    def _prune(active: list[Sequence]) -> list[Sequence]:
        """The sequences still running; a closed stream's cache is freed here, at the step after it closed."""
        kept = []
        for seq in active:
            if seq.active:
                kept.append(seq)
            else:
                seq.cache = None
        return kept

    def _admit(self, active: list[Sequence]) -> list[Sequence] | None:
        """The waiting sequences to prefill this turn; None when nothing is left (the thread then exits)."""
        admitted: list[Sequence] = []
        tokens = 0
        with self._lock:
            while self._waiting and len(active) + len(admitted) < self.max_batch:
                seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    continue
                if admitted and tokens + len(seq.prompt) > PREFILL_TOKENS:
                    break
                admitted.append(self._waiting.popleft())
                tokens += len(seq.prompt)
            if not admitted and not active:
                self._thread = None
                return None
        return admitted

    def _prepare(self, seq: Sequence) -> bool:
        """A sequence's generator, text stream and KV cache (the shared prefix copied in); False if it failed."""
        try:
            sampling = seq.sampling
            if not sampling.greedy:
                seed = sampling.seed if sampling.seed is not None else secrets.randbits(63)
                seq.generator = self._torch.Generator().manual_seed(seed)
            seq.text = TextStream(self._tokenizer, sampling.stop)
            limit = len(seq.prompt) + seq.budget
            seq.cache = self._model.new_cache(min(len(seq.prompt) + INITIAL_ROOM, limit), limit)
            seq.start = self._model.begin(seq.prompt, seq.cache)
        except Exception as exc:
            self._fail(seq, exc)
            return False
        return True

    def _pass(self, running: list[Sequence], prompts: list[Sequence]) -> None:
        """One pass: a token for every running sequence and the first token of every prompt. If it fails, the
        running sequences run again together and each prompt alone, so only what fails again is failed (nothing a
        failed pass wrote counts: a cache's length moves only once its pass went through)."""
        rows = []
        for seq in running:
            try:
                seq.cache.reserve(1)
                rows.append(seq)
            except Exception as exc:  # out of memory growing its cache: that sequence only
                self._fail(seq, exc)
        if not rows and not prompts:
            return
        try:
            logits = self._model.step([s.last for s in rows], [s.cache for s in rows],
                                      [(s.prompt, s.cache, s.start) for s in prompts])
        except Exception as exc:
            if len(prompts) + (1 if rows else 0) > 1:
                if rows:
                    self._pass(rows, [])
                for seq in prompts:
                    self._pass([], [seq])
                return
            for seq in rows + prompts:
                self._fail(seq, exc)
            return
        torch = self._torch
        everyone = rows + prompts
        greedy = logits.argmax(-1).tolist() if any(s.sampling.greedy for s in everyone) else None
        for i, seq in enumerate(everyone):
            try:
                token = (greedy[i] if seq.sampling.greedy  # drawn on the CPU, by the sequence's own generator
                         else sample(torch, logits[i].cpu(), seq.sampling, seq.generator))
            except Exception as exc:
                self._fail(seq, exc)
                continue
            self._advance(seq, token)

    def _advance(self, seq: Sequence, token: int) -> bool:
        """Account one produced token and stream its text; True if the sequence goes on."""
        try:
            seq.produced += 1
            seq.last = token
            if token == self._eos:  # counted as a completion token, its text never shown
                text, finish = seq.text.finish(), "stop"
            else:
                text = seq.text.push(token)
                finish = "stop" if seq.text.stopped else None
                if finish is None and seq.produced >= seq.budget:
                    text += seq.text.finish()
                    finish = "stop" if seq.text.stopped else "length"
            # tokens are reported when their text is out: a stream closed while text is held back is charged (and
            # recorded) only for tokens whose text it got, so a replay bounded by that count decodes the same text
            seq.unreported += 1
            tokens = 0
            if finish is not None or seq.text.settled:
                tokens, seq.unreported = seq.unreported, 0
            delta = Delta(text, tokens, len(seq.prompt) if seq.produced == 1 else None, finish)
        except Exception as exc:
            self._fail(seq, exc)
            return False
        if finish is not None:
            seq.finished = True
            seq.cache = None
        self._send(seq, delta)
        return seq.active

    def _fail(self, seq: Sequence, exc: BaseException) -> None:
        seq.finished = True
        seq.cache = None
        error = exc if isinstance(exc, EngineError) else EngineError(f"the CPU engine failed this request: {exc!r}")
        self._send(seq, error)

    @staticmethod
    def _send(seq: Sequence, item: object) -> None:
        try:
            seq.deliver(item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            seq.cancel()
            seq.cache = None


# A forked child inherits the parent's scheduler objects but none of its threads: start afresh there.
_SCHEDULERS: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for scheduler in list(_SCHEDULERS):
        scheduler._reset()


def _at_exit() -> None:
    for scheduler in list(_SCHEDULERS):
        scheduler.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
