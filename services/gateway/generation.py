"""The gateway's core, shared by its gRPC and HTTP edges: admit, route, stream.

A request is admitted (a bounded number in flight), routed to a variant
(scheduler backend), submitted, and read back as text deltas: detokenized
incrementally, cut at stop strings, timed for the metrics. Protobuf stays in
the scheduler client and the edges; this module speaks dataclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sarathi_serve.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from sarathi_serve.common.limits import MAX_USER_CHARS
from sarathi_serve.common.step import TokenLogprobs
from sarathi_serve.gateway.auth import Caller
from sarathi_serve.gateway.detokenizer import IncrementalDetokenizer
from sarathi_serve.gateway.metrics import GatewayMetrics, RequestTracker
from sarathi_serve.gateway.quotas import Quotas, Release
from sarathi_serve.gateway.router import Router
from sarathi_serve.gateway.scheduler_client import SchedulerClient, TokenEvent
from sarathi_serve.gateway.shards import ShardSet
from sarathi_serve.gateway.stop_strings import StopStringMatcher
from sarathi_serve.gateway.validation import PreparedRequest

log = logging.getLogger(__name__)

_ANSWER_FLUSH_S = 5.0  # after a drain, for the answers of the requests it ended


@dataclass(frozen=True, slots=True)
class Logprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(slots=True)
class Delta:
    """New output of one request; the last one has a finish_reason."""

    text: str
    token_ids: list[int]
    logprobs: list[Logprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length" or "abort"
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # so far


class Generation:
    """One admitted request: iterate its deltas; closing it early aborts it."""

    def __init__(
        self,
        request_id: str,
        variant: str,
        prepared: PreparedRequest,
        events: asyncio.Queue[TokenEvent],
        client: SchedulerClient,
        tokenizer: Any,
        tracker: RequestTracker,
        on_close: Callable[[int], None],  # with the max_tokens it did not use
    ):
        self.request_id = request_id
        self.variant = variant
        self.prepared = prepared
        self._events = events
        self._client = client
        self._tokenizer = tokenizer
        self._tracker = tracker
        self._detokenizer = IncrementalDetokenizer(tokenizer, prepared.prompt_token_ids)
        self._stops = StopStringMatcher(prepared.stop)
        self._num_output = 0
        self._finish_reason: str | None = None
        self._scheduler_done = False
        self._on_close: Callable[[int], None] | None = on_close

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prepared.prompt_token_ids)

    async def deltas(self) -> AsyncIterator[Delta]:
        try:
            while self._finish_reason is None:
                yield await self._next()
        finally:
            self.close()

    async def _next(self) -> Delta:
        event: TokenEvent = await self._events.get()
        if event.error is not None:
            self._scheduler_done = True
            self._finish("error")
            raise event.error
        token_ids = event.token_ids
        self._num_output += len(token_ids)
        self._tracker.tokens(len(token_ids))
        text = self._detokenizer.add(token_ids)
        finish_reason = None if event.stop is None else event.stop.finish_reason
        self._scheduler_done = finish_reason is not None
        if finish_reason is not None:
            text += self._detokenizer.flush()
        text, stopped = self._stops.feed(text)
        if stopped:
            finish_reason = "stop"
        elif finish_reason is not None:
            text += self._stops.flush()
        if finish_reason is not None:
            self._finish(finish_reason)
        return Delta(
            text=text,
            token_ids=token_ids,
            logprobs=self._logprobs(token_ids, event.logprobs),
            finish_reason=finish_reason,
            num_prompt_tokens=self.num_prompt_tokens,
            num_output_tokens=self._num_output,
        )

    def close(self) -> None:
        """Ends the request: releases it, or aborts it (freeing its KV blocks) if it runs."""
        if self._on_close is None:
            return
        self._on_close(self.prepared.sampling.max_tokens - self._num_output)
        self._on_close = None
        if self._scheduler_done:
            self._client.release(self.request_id)
        else:
            self._scheduler_done = True
            self._client.abort(self.request_id)
        if self._finish_reason is None:
            self._finish("cancelled")

    def _finish(self, reason: str) -> None:
        self._finish_reason = reason
        self._tracker.finish(reason, self._num_output)
        log.info(
            "request %s ended (%s): %d output tokens",
            self.request_id,
            reason,
            self._num_output,
            extra={"request_id": self.request_id, "variant": self.variant},
        )

    def _logprobs(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> list[Logprob]:
        decode = self._tokenizer.decode
        return [
            Logprob(
                token_id=token,
                token=decode([token]),
                logprob=lp.logprob,
                top=tuple((t, decode([t]), v) for t, v in lp.top),
            )
            for token, lp in zip(token_ids, logprobs, strict=False)
        ]


class Generator:
    """Admission, routing and submission of requests (both edges call `start`)."""

    def __init__(
        self,
        tokenizer: Any,
        router: Router[ShardSet],
        metrics: GatewayMetrics,
        max_pending_requests: int,
        salt_cache_per_api_key: bool = False,
    ):
        self.tokenizer = tokenizer
        self.router = router
        self.metrics = metrics
        self.max_pending_requests = max_pending_requests
        self.salt_cache_per_api_key = salt_cache_per_api_key
        self.quotas = Quotas()
        self._num_pending = 0
        self.draining = False  # shutting down: nothing new is admitted
        self._none_pending = asyncio.Event()
        self._none_pending.set()

    async def start(
        self,
        request_id: str,
        prepared: PreparedRequest,
        user: str = "",
        pinned: str = "",
        caller: Caller | None = None,
    ) -> Generation:
        """Submits the request; raises ServiceError if it cannot be admitted. `caller`
        is the API key's tenant and policy (`auth.py`): its limits apply (`quotas.py`),
        and with salting per key requests of two keys never share cached prefixes."""
        caller = caller or Caller()
        tenant = caller.tenant
        if len(user) > MAX_USER_CHARS:
            raise InvalidArgument(f"user: at most {MAX_USER_CHARS} characters, got {len(user)}")
        variant = self.router.pick(user, pinned)
        release = self._admit(variant.name, prepared, caller)
        salt = prepared.cache_salt
        if self.salt_cache_per_api_key and tenant:
            salt = f"{tenant}:{salt}"
        shard = variant.client.pick(prepared.prompt_token_ids, salt)
        client = variant.client.clients[shard]
        try:
            events = await client.submit(
                request_id,
                prepared.prompt_token_ids,
                prepared.sampling,
                cache_salt=salt,
                priority=prepared.priority or 0,
                tenant=tenant or user,  # the fair share: the API key's tenant, else the user
            )
        except BaseException:
            release(prepared.sampling.max_tokens)
            raise
        log.info(
            "request %s: %d prompt tokens, variant %s, shard %d",
            request_id,
            len(prepared.prompt_token_ids),
            variant.name,
            shard,
            extra={"request_id": request_id, "variant": variant.name},
        )
        self.metrics.routed(variant.name, shard)
        self._num_pending += 1
        self._none_pending.clear()
        tracker = self.metrics.tracker(
            variant.name, len(prepared.prompt_token_ids), prepared.priority or 0, tenant
        )
        return Generation(
            request_id,
            variant.name,
            prepared,
            events,
            client,
            self.tokenizer,
            tracker,
            on_close=lambda unused: self._release(release, unused),
        )

    def _admit(self, variant: str, prepared: PreparedRequest, caller: Caller) -> Release:
        """Room for one more request on this gateway and in the caller's limits (a
        release to call when it ends), or ServiceError."""
        if self.draining:
            self.metrics.reject(variant, "UNAVAILABLE")
            raise Unavailable("this gateway is shutting down: retry (another replica serves)")
        if self._num_pending >= self.max_pending_requests:
            self.metrics.reject(variant, "RESOURCE_EXHAUSTED")
            raise ResourceExhausted(
                f"{self._num_pending} requests are in flight on this gateway (the limit): "
                "retry later"
            )
        num_tokens = len(prepared.prompt_token_ids) + prepared.sampling.max_tokens
        try:
            return self.quotas.acquire(caller.tenant, caller.policy, num_tokens)
        except ResourceExhausted:
            self.metrics.reject(variant, "RATE_LIMITED")
            raise

    def _release(self, quota: Release, unused_tokens: int) -> None:
        quota(unused_tokens)
        self._num_pending -= 1
        if not self._num_pending:
            self._none_pending.set()

    async def drain(self, timeout_s: float) -> None:
        """Admits nothing more; gives the requests in flight `timeout_s` to finish, then
        ends those left with UNAVAILABLE (each client gets it as its stream's last event)
        and waits (briefly) for their answers to be written."""
        self.draining = True
        if self._num_pending:
            log.info("draining: %d requests in flight, %gs to finish", self._num_pending, timeout_s)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._none_pending.wait(), timeout_s)
        if not self._num_pending:
            return
        log.warning("%d requests did not finish within the drain: ending them", self._num_pending)
        error = Unavailable("the gateway shut down before this request finished: retry it")
        for variant in self.router.variants:
            variant.client.fail_all(error)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._none_pending.wait(), _ANSWER_FLUSH_S)

    @property
    def num_pending(self) -> int:
        return self._num_pending

    @property
    def ready(self) -> bool:
        """Whether some variant's scheduler leads, with workers, on an open session."""
        return any(v.client.ready for v in self.router.variants)
