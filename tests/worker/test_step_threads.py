"""Small CPU steps run on the thread count paired comparisons find faster; the rest on all
the worker has."""

import asyncio
import os
import random
import subprocess
import sys
import threading
import time

import pytest
import torch

from sarathi_serve.worker import OMP_SPINCOUNT
from sarathi_serve.worker.__main__ import ModelThread
from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.step_threads import StepThreads


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def run_steps(threads: StepThreads, steps: int, ms_on, tokens=lambda i: 4) -> list[int]:
    """Runs `steps` steps of `tokens(i)` tokens, each taking `ms_on(threads)`; returns the
    thread count of each."""
    seen = []
    for i in range(steps):
        n = tokens(i)
        count = threads.fit(n)
        assert torch.get_num_threads() == count
        threads.observe(n, ms_on(count, n))
        seen.append(count)
    return seen


def test_large_steps_take_every_thread_small_ones_start_on_all(three_threads):
    threads = StepThreads(small_step_tokens=32)
    assert threads.fit(3) == 3, "small steps start on every thread"
    assert threads.fit(32) == 3 and threads.fit(512) == 3
    torch.set_num_threads(1)
    assert StepThreads(small_step_tokens=32).fit(1) == 1, "a worker of one thread keeps it"


def test_small_steps_move_to_one_thread_fewer_when_it_is_faster(three_threads):
    threads = StepThreads(small_step_tokens=32, probe_every=4, pairs=5)
    rng = random.Random(0)

    def ms_on(count: int, n: int) -> float:  # two threads 20 % faster, +-5 % noise
        return (80.0 if count == 2 else 100.0) * rng.uniform(0.95, 1.05) + n

    seen = run_steps(threads, 200, ms_on)
    assert threads.small == 2, "paired steps showed 2 threads faster"
    tail = seen[-60:]
    assert tail.count(2) >= 0.75 * len(tail), "after the switch, small steps mostly run on 2"
    assert tail.count(3) > 0, "and the other count is still probed"
    assert threads.fit(64) == 3, "prefill steps keep every thread"


def test_no_switch_when_all_threads_are_as_fast_or_faster(three_threads):
    rng = random.Random(1)
    for fewer_ms in (100.0, 110.0):  # a tie, then fewer threads slower
        torch.set_num_threads(3)
        threads = StepThreads(small_step_tokens=32, probe_every=4, pairs=5)

        def ms_on(count: int, n: int, fewer_ms: float = fewer_ms) -> float:
            return (fewer_ms if count == 2 else 100.0) * rng.uniform(0.97, 1.03)

        run_steps(threads, 300, ms_on)
        assert threads.small == 3
        assert len(threads.ratios) == 5


def test_it_follows_a_change_back(three_threads):
    threads = StepThreads(small_step_tokens=32, probe_every=4, pairs=5)
    run_steps(threads, 150, lambda c, n: 80.0 if c == 2 else 100.0)
    assert threads.small == 2
    run_steps(threads, 150, lambda c, n: 120.0 if c == 2 else 100.0)  # the neighbours left
    assert threads.small == 3


def test_only_pairs_of_equal_steps_count(three_threads):
    """A pair broken by a prefill step, or whose two steps differ in tokens, is no sample:
    here every pair is, so fewer threads, though 'faster', never take over."""
    threads = StepThreads(small_step_tokens=32, probe_every=2, pairs=3)
    run_steps(threads, 200, lambda c, n: 50.0 if c == 2 else 100.0, tokens=lambda i: 1 + i % 7)
    assert threads.small == 3 and not threads.ratios
    run_steps(threads, 200, lambda c, n: 50.0 if c == 2 else 100.0, tokens=lambda i: (1, 64)[i % 2])
    assert threads.small == 3 and not threads.ratios


def test_the_worker_default_and_its_bounds():
    assert WorkerConfig().small_step_tokens == 32
    assert WorkerConfig.from_args(["--small-step-tokens", "0"]).small_step_tokens == 0
    try:
        WorkerConfig(small_step_tokens=-1)
    except ValueError as exc:
        assert "small_step_tokens" in str(exc)
    else:
        raise AssertionError("a negative small_step_tokens was accepted")


def test_the_worker_loads_and_steps_its_model_on_one_thread():
    """libgomp slows every parallel region when two threads of a process start them (more
    pool threads than cores: it throttles its spin-waits), so the worker's main thread
    never touches the model: loading and every step run on the one model thread."""

    async def threads_used() -> set[int]:
        model_thread = ModelThread()
        return {await model_thread.run(threading.get_ident) for _ in range(3)}

    used = asyncio.run(threads_used())
    assert len(used) == 1 and threading.get_ident() not in used


@pytest.mark.parametrize("preset", [None, "300000"])
def test_the_worker_package_sets_a_short_openmp_spin_before_torch_loads(preset):
    """Imported before torch (`python -m sarathi_serve.worker`), the package sets libgomp's
    spin-wait short unless the environment chose one (the hardening test's huge prompt
    made one spinning 2-thread step take 0.6 s)."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if preset is not None:
        env["GOMP_SPINCOUNT"] = preset
    code = (
        "import sys, sarathi_serve.worker, os; "
        "assert 'torch' not in sys.modules; print(os.environ['GOMP_SPINCOUNT'])"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (preset or OMP_SPINCOUNT)


def test_a_step_times_its_body_and_zero_tokens_turns_it_off(three_threads):
    threads = StepThreads(small_step_tokens=32, probe_every=1, pairs=1)
    for _ in range(3):
        with threads.step(4) as count:
            time.sleep(0.001 if count == 2 else 0.02)  # the body: 2 threads 20x faster
    assert threads.small == 2
    off = StepThreads(small_step_tokens=0)
    with off.step(4) as count:
        assert count == torch.get_num_threads() == 2  # left as it was
    assert off.small == 0 and not off.ratios
