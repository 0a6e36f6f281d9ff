"""Torch threads per step on CPU: small steps leave a core to the processes beside the worker.

A step of a few decodes is a handful of skinny, memory-bound products: a second thread
buys it little (1.2x alone on the development machine's 2 cores), and every one of its
~700 parallel regions waits for the slowest thread. Beside the scheduler, the gateway
and Redis on the same cores, the slowest thread is the one the kernel just preempted
for them: in the running system a 2-thread decode step took twice its time alone
(99 vs 50 ms p50), a 1-thread one barely more (79 vs 62-70 ms). So steps of fewer than
`small_step_tokens` tokens run on one thread fewer than the worker has, and the
processes beside it run on the core left free; steps with prefill chunks, which scale
with threads, run on all of them.
"""

from __future__ import annotations

import torch


class StepThreads:
    def __init__(self, small_step_tokens: int):
        self.small_step_tokens = small_step_tokens
        self._all = 0  # the worker's threads, read at the first step (after it set them)
        self._current = 0

    def fit(self, num_tokens: int) -> int:
        """Sets torch's threads for a step of `num_tokens` tokens; returns how many."""
        if not self._all:
            self._all = self._current = torch.get_num_threads()
        small = num_tokens < self.small_step_tokens
        threads = max(self._all - 1, 1) if small else self._all
        if threads != self._current:
            torch.set_num_threads(threads)
            self._current = threads
        return threads
