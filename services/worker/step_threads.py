"""Torch threads per CPU step: small steps run on the thread count measured to be faster.

A step of a few decodes is a handful of skinny, memory-bound products. Whether a second
thread speeds it up in the running system depends on the machine and on what runs beside
the worker: every one of the step's ~700 parallel regions waits for its slowest thread,
and beside the scheduler, the gateway and Redis on the same cores the slowest is the one
the kernel just preempted for them. Measured in the running system: on an AMD EPYC
(2026-12-02) a 1-thread decode step beat a 2-thread one (76 vs 99 ms p50); on an Intel
Xeon (2026-12-07) 2 threads won (TBT p50 59-62 vs 71 ms). So no count is right
everywhere, and the worker measures instead.

Steps of fewer than `small_step_tokens` tokens run on all the worker's threads or on one
fewer, whichever is faster by paired comparison: every `probe_every` small steps, two
consecutive small steps run one on each count (in alternating order); when they carry the
same number of tokens (the same running decodes, a token further on), the ratio of their
times is one sample. Once `pairs` samples are in, the median of the latest `pairs` decides:
the other count takes over when it is faster by more than `margin`. Samples keep coming,
so a change of load or neighbours is followed. Steps with prefill chunks, which scale with
threads, always run on all of them.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

PROBE_EVERY = 32  # small steps between two paired comparisons
PAIRS = 9  # the median of this many latest comparisons decides
MARGIN = 0.05  # the other thread count takes over when faster by more than this


class StepThreads:
    def __init__(
        self,
        small_step_tokens: int,
        probe_every: int = PROBE_EVERY,
        pairs: int = PAIRS,
        margin: float = MARGIN,
    ):
        self.small_step_tokens = small_step_tokens
        self.probe_every, self.margin = probe_every, margin
        self._all = 0  # the worker's threads, read at the first step (after it set them)
        self._current = 0
        self.small = 0  # the thread count small steps run on now
        self._countdown = probe_every
        self._pair: list[tuple[int, int, float]] = []  # (threads, tokens, ms) of a pair
        self._pair_order = 0  # which of the two counts runs first in the next pair
        self.ratios: deque[float] = deque(maxlen=pairs)  # other count's time / small's

    @contextlib.contextmanager
    def step(self, num_tokens: int) -> Iterator[int]:
        """Runs the body (one step of `num_tokens` tokens) on the threads `fit` chooses,
        and times it for the comparisons. A no-op with `small_step_tokens` 0."""
        if not self.small_step_tokens:
            yield torch.get_num_threads()
            return
        threads = self.fit(num_tokens)
        start = time.perf_counter()
        yield threads
        self.observe(num_tokens, (time.perf_counter() - start) * 1e3)

    def fit(self, num_tokens: int) -> int:
        """Sets torch's threads for a step of `num_tokens` tokens; returns how many."""
        if not self._all:
            self._all = self._current = self.small = torch.get_num_threads()
        threads = self._all
        if num_tokens < self.small_step_tokens and self._all > 1:
            threads = self._small_step_threads()
        if threads != self._current:
            torch.set_num_threads(threads)
            self._current = threads
        return threads

    def observe(self, num_tokens: int, elapsed_ms: float) -> None:
        """The time of the step `fit` was last called for."""
        if not self._pair:
            return
        if num_tokens >= self.small_step_tokens:  # a prefill came between: no pair
            self._pair.clear()
            return
        self._pair[-1] = (self._pair[-1][0], num_tokens, elapsed_ms)
        if len(self._pair) == 2:
            self._compare()

    def _other(self) -> int:
        return self._all - 1 if self.small == self._all else self._all

    def _small_step_threads(self) -> int:
        if len(self._pair) == 1:  # the second step of a pair
            threads = self._other() if self._pair[0][0] == self.small else self.small
        else:
            self._countdown -= 1
            if self._countdown > 0:
                return self.small
            self._countdown = self.probe_every
            self._pair_order ^= 1
            threads = self._other() if self._pair_order else self.small
        self._pair.append((threads, -1, 0.0))
        return threads

    def _compare(self) -> None:
        (t1, n1, ms1), (_, n2, ms2) = self._pair
        self._pair.clear()
        if n1 != n2 or n1 < 0 or min(ms1, ms2) <= 0:
            return
        other_ms, small_ms = (ms1, ms2) if t1 != self.small else (ms2, ms1)
        self.ratios.append(other_ms / small_ms)
        if len(self.ratios) < (self.ratios.maxlen or 1):
            return
        median = statistics.median(self.ratios)
        if median < 1 - self.margin:
            before, self.small = self.small, self._other()
            self.ratios.clear()
            log.info(
                "small steps (< %d tokens) now run on %d torch threads instead of %d: "
                "%.0f %% faster in %d paired steps",
                self.small_step_tokens,
                self.small,
                before,
                (1 - median) * 100,
                self.ratios.maxlen,
            )
