"""Applies step plans to the worker's sequences and runs them through the model.

One request never fails a step for the others: a request whose input is out of
range (a token outside the vocabulary, a chunk past its tokens or its KV blocks)
fails alone before anything runs, and when the batch raises, the step is retried
one request at a time so that only the requests that fail alone fail. A step
whose every request fails alone is a worker fault: it fails as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from sarathi_serve.common.errors import InvalidArgument, ServiceError
from sarathi_serve.common.grammar import GrammarCompiler
from sarathi_serve.common.step import NewRequest, StepPlan, StepResult, WorkerGeometry
from sarathi_serve.worker.model_runner import BatchEntry, Sequence, StepOutput
from sarathi_serve.worker.submit import StepByStep

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What runs a batch: the model (ModelRunner) or nothing at all (NullRunner)."""

    @property
    def geometry(self) -> WorkerGeometry:
        """What the scheduler is told when this worker attaches."""
        ...

    @property
    def grammars(self) -> GrammarCompiler | None:
        """Compiles constrained requests' grammars (None: they are refused)."""
        ...

    def execute(self, batch: list[BatchEntry]) -> StepOutput: ...


class WorkerEngine(StepByStep):
    """`retry_alone`: a failed batch is retried one request at a time (not on a pipeline
    stage, whose peers would wait for the batch's hidden states)."""

    def __init__(self, runner: Runner, retry_alone: bool = True):
        self.runner = runner
        self.geometry = runner.geometry
        self.retry_alone = retry_alone
        self.sequences: dict[str, Sequence] = {}
        self._created_at: dict[str, int] = {}  # request id -> the step that sent it

    def reset(self) -> None:
        """Forgets every sequence (the scheduler recomputes them after a reconnect)."""
        self.sequences.clear()
        self._created_at.clear()

    def apply_tokens(self, sampled: Iterable[tuple[int, str, int]]) -> None:
        """A pipeline stage but the last: tokens the last stage sampled in earlier
        micro-batches, as (step id, request id, token), token -1 for a request it failed.
        A request sent again since that step (recomputed) is not the one that sampled."""
        for step_id, request_id, token in sampled:
            seq = self.sequences.get(request_id)
            if seq is None or self._created_at.get(request_id, step_id + 1) > step_id:
                continue
            if token < 0:
                del self.sequences[request_id], self._created_at[request_id]
                continue
            seq.token_ids.append(token)
            if seq.matcher is not None:
                seq.matcher.accept_token(token)

    def step(self, plan: StepPlan) -> StepResult:
        start = time.perf_counter()
        failures: dict[str, ServiceError] = {}
        for request_id in plan.freed_request_ids:
            self.sequences.pop(request_id, None)
            self._created_at.pop(request_id, None)
        for new in plan.new_requests:
            log.debug(
                "request %s: %d tokens to compute",
                new.request_id,
                len(new.token_ids),
                extra={"request_id": new.request_id},
            )
            problem = self._check_new(new)
            matcher = None
            if not problem and new.sampling.grammar is not None:
                matcher, problem = self._matcher(new)
            if problem:
                self._fail(new.request_id, InvalidArgument(problem), failures)
                continue
            self.sequences[new.request_id] = Sequence(
                request_id=new.request_id,
                token_ids=list(new.token_ids),
                num_prompt_tokens=len(new.token_ids) - new.num_output_tokens,
                sampling=new.sampling,
                num_computed_tokens=new.num_computed_tokens,  # a cached prefix
                matcher=matcher,
            )
            self._created_at[new.request_id] = plan.step_id
        batch = []
        for chunk in plan.chunks:
            seq = self.sequences.get(chunk.request_id)
            if seq is None:
                if chunk.request_id not in failures:
                    message = f"plan {plan.step_id} names unknown request {chunk.request_id}"
                    self._fail(chunk.request_id, ServiceError(message), failures)
                continue
            seq.block_ids.extend(chunk.new_block_ids)
            problem = self._check_chunk(seq, chunk.num_tokens, chunk.new_block_ids)
            if problem:
                self._fail(seq.request_id, ServiceError(problem), failures)
                continue
            batch.append(BatchEntry(seq, chunk.num_tokens))
        output = self._execute(batch, failures) if batch else StepOutput({}, {})
        for entry in batch:
            entry.sequence.num_computed_tokens += entry.num_tokens
        sampled = dict(output.sampled)
        for request_id, token in output.sampled.items():
            seq = self.sequences[request_id]
            seq.token_ids.append(token)
            if seq.matcher is not None and not seq.matcher.accept_token(token):
                error = ServiceError(f"sampled token {token} does not match the request's grammar")
                self._fail(request_id, error, failures)
                del sampled[request_id]
        elapsed_ms = (time.perf_counter() - start) * 1e3
        return StepResult(
            plan.step_id, sampled, elapsed_ms, logprobs=output.logprobs, failures=failures
        )

    # ---- one request's failure ------------------------------------------------

    def _check_new(self, new: NewRequest) -> str:
        """Why a new request cannot be computed here ("" when it can)."""
        tokens, geometry = new.token_ids, self.geometry
        if not tokens:
            return "the request has no tokens"
        if len(tokens) > geometry.max_model_len:
            return f"{len(tokens)} tokens; the model's context is {geometry.max_model_len}"
        vocab = geometry.vocab_size
        if vocab and (max(tokens) >= vocab or min(tokens) < 0):
            bad = next(t for t in tokens if not 0 <= t < vocab)
            return f"token id {bad} is outside the vocabulary (size {vocab})"
        if not 0 <= new.num_computed_tokens < len(tokens):
            return f"{new.num_computed_tokens} cached tokens of {len(tokens)}"
        return ""

    def _matcher(self, new: NewRequest) -> tuple[Any, str]:
        """The grammar's matcher after the request's output so far, or why there is none."""
        grammars, grammar = self.runner.grammars, new.sampling.grammar
        if grammars is None or grammar is None:
            return None, "structured output needs the model's tokenizer on the worker"
        output = new.token_ids[len(new.token_ids) - new.num_output_tokens :]
        try:
            return grammars.matcher(grammar, output), ""
        except ValueError as exc:
            return None, f"grammar: {exc}"

    def _check_chunk(self, seq: Sequence, num_tokens: int, new_block_ids: tuple[int, ...]) -> str:
        end = seq.num_computed_tokens + num_tokens
        if num_tokens < 1 or end > len(seq.token_ids):
            start, total = seq.num_computed_tokens, len(seq.token_ids)
            return f"a chunk of {num_tokens} tokens from {start} of {total}"
        if new_block_ids and max(new_block_ids) >= self.geometry.num_kv_blocks:
            return f"KV block {max(new_block_ids)} of {self.geometry.num_kv_blocks}"
        if len(seq.block_ids) * self.geometry.block_size < end:
            return f"{len(seq.block_ids)} KV blocks for {end} tokens"
        return ""

    def _fail(
        self, request_id: str, error: ServiceError, failures: dict[str, ServiceError]
    ) -> None:
        log.warning(
            "request %s failed on this worker: %s",
            request_id,
            error,
            extra={"request_id": request_id},
        )
        failures[request_id] = error
        self.sequences.pop(request_id, None)
        self._created_at.pop(request_id, None)

    def _execute(self, batch: list[BatchEntry], failures: dict[str, ServiceError]) -> StepOutput:
        try:
            return self.runner.execute(batch)
        except Exception as exc:
            if len(batch) == 1 or not self.retry_alone:
                raise
            log.error(
                "a step of %d requests failed (%r): retrying them one at a time", len(batch), exc
            )
        sampled, logprobs = {}, {}
        survivors = []
        for entry in batch:
            try:
                output = self.runner.execute([entry])
            except Exception as exc:
                error = ServiceError(
                    f"the worker failed on this request: {type(exc).__name__}: {exc}"
                )
                self._fail(entry.sequence.request_id, error, failures)
                continue
            survivors.append(entry)
            sampled.update(output.sampled)
            logprobs.update(output.logprobs)
        if not survivors:
            raise RuntimeError(f"every request of the step failed alone too ({len(batch)})")
        batch[:] = survivors  # the failed ones computed nothing
        return StepOutput(sampled, logprobs)
