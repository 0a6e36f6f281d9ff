"""Micro-batches in flight through a worker group's pipeline stages (`pipeline.py`).

Rank 0 (stage 0, tensor-parallel rank 0) takes each plan from the scheduler
(`PipelineLeader.submit`): it hands the command to the other ranks of stage 0, computes
stage 0's layers, sends the command and the hidden states to stage 1 and returns, so
stage 0 starts the next micro-batch while stage 1 computes this one. Each stage
receives the command from the same tensor-parallel rank of the stage before, computes,
and passes both on; the last stage samples, and its first rank sends the output to
rank 0, whose output thread delivers the step's result. Each stage runs the
micro-batches in order, so one request's prefill chunks may be in several of them.

Stages but the last learn the sampled tokens from the commands: rank 0 attaches to
each command the tokens of the outputs it received since the previous one. The
scheduler plans a decode only P steps after the step that samples its input token (P
stages; step ids, some never sent), and rank 0 starts step k only once the outputs of
steps up to k - P are back, sent straight from the last stage to rank 0 with their
tokens: no round trip through the scheduler between two micro-batches of one request.

Commands and outputs are Python objects on gloo groups of their own (CPU, beside NCCL
on CUDA); hidden states go over the group's backend. Every stage measures, per
micro-batch, the time it computed and the time it sat idle before: the result carries
both, first stage to last (the scheduler, which knows whether any request was running
meanwhile, decides which idle time is a bubble).

A failure anywhere breaks the group: the steps in flight are delivered as errors, and
the next `submit` or `reset` raises, so the worker exits and is restarted; the
scheduler recomputes its requests.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sarathi_serve.common.errors import error_from_code
from sarathi_serve.common.step import StepPlan, StepResult, TokenLogprobs
from sarathi_serve.worker.engine import WorkerEngine
from sarathi_serve.worker.parallel import GROUP_TIMEOUT
from sarathi_serve.worker.pipeline import PipelineStage, StageForward
from sarathi_serve.worker.submit import Deliver

log = logging.getLogger(__name__)

STEP, RESET, STOP = "step", "reset", "stop"
DRAIN_S = 60.0  # a reset waits this long for the micro-batches in flight


class GroupBroken(RuntimeError):
    """A stage failed: the group cannot go on."""


@dataclass(slots=True)
class StageCommand:
    kind: str
    plan: StepPlan | None = None
    # tokens sampled since the previous command: (step id, request id, token; -1 for a
    # request the last stage failed)
    sampled: tuple[tuple[int, str, int], ...] = ()
    busy_ms: list[float] = field(default_factory=list)  # per stage so far
    idle_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class StageOutput:
    step_id: int
    sampled: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (code, message)
    busy_ms: list[float] = field(default_factory=list)
    idle_ms: list[float] = field(default_factory=list)
    stop: bool = False


class StageLinks:
    """Where one rank's commands come from and go to, and the output channel. Every
    rank must build its links at the same point: the groups are made collectively."""

    def __init__(self, stage: PipelineStage):
        self.stage = stage
        self.control = dist.new_group(backend="gloo", timeout=GROUP_TIMEOUT)
        self.outputs = dist.new_group([0, stage.output_rank], backend="gloo", timeout=GROUP_TIMEOUT)
        self.source = stage.rank_of(stage.stage - 1) if not stage.first else 0
        leader = stage.first and stage.tp_rank == 0
        self.fanout = list(range(1, stage.tp_size)) if leader else []  # stage 0's other ranks
        self.next = None if stage.last else stage.rank_of(stage.stage + 1)
        self._sending: tuple[Any, torch.Tensor] | None = None  # the hidden states on their way

    def receive(self) -> StageCommand:
        box: list[Any] = [None]
        dist.recv_object_list(box, src=self.source, group=self.control)
        return box[0]

    def send(self, command: StageCommand, dst: int) -> None:
        dist.send_object_list([command], dst=dst, group=self.control)

    def send_hidden(self, hidden: torch.Tensor) -> None:
        assert self.next is not None
        self.wait_sent()
        self._sending = (dist.isend(hidden, dst=self.next), hidden)

    def wait_sent(self) -> None:
        if self._sending is not None:
            self._sending[0].wait()
            self._sending = None

    def send_output(self, output: StageOutput) -> None:
        dist.send_object_list([output], dst=0, group=self.outputs)

    def receive_output(self) -> StageOutput:
        box: list[Any] = [None]
        dist.recv_object_list(box, src=self.stage.output_rank, group=self.outputs)
        return box[0]


class StageRank:
    """One rank's part of each command: compute its stage, pass the command on."""

    def __init__(self, engine: WorkerEngine, forward: StageForward, links: StageLinks):
        self.engine, self.forward, self.links = engine, forward, links
        self._last_end: float | None = None  # perf_counter seconds

    def run(self, command: StageCommand) -> None:
        links, stage = self.links, self.links.stage
        started = time.perf_counter()
        for dst in links.fanout:  # stage 0's ranks compute together
            links.send(command, dst)
        if command.kind != STEP:
            self._pass_on(command)
            if command.kind == RESET:
                self.engine.reset()
            return
        assert command.plan is not None
        idle_s = started - self._last_end if self._last_end else 0.0
        if not stage.last:
            self.engine.apply_tokens(command.sampled)
        result = self.engine.step(command.plan)
        command.busy_ms.append((time.perf_counter() - started) * 1e3)
        command.idle_ms.append(idle_s * 1e3)
        if links.next is not None:
            links.send(command, links.next)
            hidden = self.forward.take_outgoing()
            if hidden is not None:
                links.send_hidden(hidden)
        elif stage.tp_rank == 0:
            failures = {rid: (exc.code.name, str(exc)) for rid, exc in result.failures.items()}
            output = StageOutput(
                result.step_id,
                result.sampled,
                result.logprobs,
                failures,
                command.busy_ms,
                command.idle_ms,
            )
            links.send_output(output)
        self._last_end = time.perf_counter()

    def _pass_on(self, command: StageCommand) -> None:
        links = self.links
        links.wait_sent()
        if links.next is not None:
            links.send(command, links.next)
        elif command.kind == STOP and links.stage.tp_rank == 0:
            links.send_output(StageOutput(-1, stop=True))  # ends rank 0's output thread


def follow_stages(rank: StageRank) -> None:
    """A rank > 0: runs the commands that reach it until told to stop."""
    while True:
        command = rank.links.receive()
        rank.run(command)
        if command.kind == STOP:
            return


class PipelineLeader:
    """Rank 0's engine: submits micro-batches and delivers their results as the last
    stage sends them back."""

    def __init__(self, rank: StageRank):
        self.rank = rank
        self.depth = rank.links.stage.num_stages
        self._lock = threading.Condition()
        self._outstanding: dict[int, Deliver] = {}  # step id -> whom to deliver it to
        self._sampled: list[tuple[int, str, int]] = []  # for the next command
        self._broken = ""
        self._outputs = threading.Thread(target=self._collect, name="stage-outputs", daemon=True)
        self._outputs.start()

    def submit(self, plan: StepPlan, deliver: Deliver) -> None:
        """Runs the plan through stage 0 once the outputs of every step `depth` or more
        before it are back, with the tokens its decodes feed (the scheduler plans a
        decode `depth` steps after the step that samples its input); so at most `depth`
        micro-batches are in the stages. The next plan waits here meanwhile."""
        oldest_allowed = plan.step_id - self.depth + 1
        with self._lock:
            self._lock.wait_for(
                lambda: self._broken or all(s >= oldest_allowed for s in self._outstanding)
            )
            self._raise_if_broken()
            self._outstanding[plan.step_id] = deliver
            sampled, self._sampled = tuple(self._sampled), []
        try:
            self.rank.run(StageCommand(STEP, plan, sampled))
        except Exception as exc:  # delivered to every step in flight, this one too
            log.exception("pipeline stage 0 failed on step %d", plan.step_id)
            self._break(f"pipeline stage 0 failed: {type(exc).__name__}: {exc}")

    def reset(self) -> None:
        """Waits for the micro-batches in flight, then every rank forgets its sequences."""
        with self._lock:
            drained = self._lock.wait_for(lambda: not self._outstanding, timeout=DRAIN_S)
            self._raise_if_broken()
            if not drained:
                raise GroupBroken(f"micro-batches still in flight after {DRAIN_S:g}s")
            self._sampled.clear()
        self.rank.run(StageCommand(RESET))

    def stop(self) -> None:
        if not self._broken:
            self.rank.run(StageCommand(STOP))
            self._outputs.join(timeout=10)

    def _collect(self) -> None:
        try:
            while not (output := self.rank.links.receive_output()).stop:
                self._deliver(output)
        except Exception as exc:
            log.error("pipeline output channel failed: %s", exc)
            self._break(f"a pipeline stage failed: {type(exc).__name__}: {exc}")

    def _deliver(self, output: StageOutput) -> None:
        step_id = output.step_id
        with self._lock:
            deliver = self._outstanding.pop(step_id)
            self._sampled.extend((step_id, rid, token) for rid, token in output.sampled.items())
            self._sampled.extend((step_id, rid, -1) for rid in output.failures)
            self._lock.notify_all()
        result = StepResult(
            step_id,
            output.sampled,
            execution_ms=sum(output.busy_ms),  # the whole model's compute, stage by stage
            logprobs=output.logprobs,
            failures={rid: error_from_code(*error) for rid, error in output.failures.items()},
            stage_busy_ms=tuple(output.busy_ms),
            stage_idle_ms=tuple(output.idle_ms),
        )
        deliver(result)

    def _break(self, reason: str) -> None:
        with self._lock:
            self._broken = self._broken or reason
            orphans, self._outstanding = self._outstanding, {}
            self._lock.notify_all()
        for step_id, deliver in sorted(orphans.items()):
            deliver(StepResult(step_id, error=reason))

    def _raise_if_broken(self) -> None:
        if self._broken:
            raise GroupBroken(self._broken)
