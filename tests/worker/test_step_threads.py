"""Small CPU steps run on one torch thread fewer; the rest on all the worker has."""

import torch

from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.step_threads import StepThreads


def test_small_steps_leave_one_thread_and_large_steps_take_them_all():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        threads = StepThreads(small_step_tokens=32)
        assert threads.fit(3) == 2 and torch.get_num_threads() == 2  # 3 decodes
        assert threads.fit(32) == 3 and torch.get_num_threads() == 3  # a prefill chunk
        assert threads.fit(31) == 2
        torch.set_num_threads(1)
        single = StepThreads(small_step_tokens=32)
        assert single.fit(1) == 1, "a worker of one thread keeps it"
    finally:
        torch.set_num_threads(before)


def test_the_worker_default_and_its_bounds():
    assert WorkerConfig().small_step_tokens == 32
    assert WorkerConfig.from_args(["--small-step-tokens", "0"]).small_step_tokens == 0
    try:
        WorkerConfig(small_step_tokens=-1)
    except ValueError as exc:
        assert "small_step_tokens" in str(exc)
    else:
        raise AssertionError("a negative small_step_tokens was accepted")
