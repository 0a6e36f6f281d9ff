"""Durable request state in Redis: one pipelined round trip per iteration.

Schema (all keys under `prefix`, default `sarathi`):

    {p}:req:{id}   HASH   prompt (packed uint32 LE), sampling (JSON), session,
                          arrival (unix s), status (running|finished), stop_reason
    {p}:out:{id}   STRING generated token ids, packed uint32 LE, APPENDed per iteration
    {p}:inflight   SET    ids of accepted, unfinished requests

Finished requests keep their keys for `finished_ttl_s` so that a client can
still read them, then Redis expires them.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict

import redis.asyncio as aioredis

from sarathi_serve.scheduler.core import RequestUpdate
from sarathi_serve.scheduler.request import Request


def pack_tokens(token_ids: Iterable[int]) -> bytes:
    return array("I", token_ids).tobytes()


def unpack_tokens(data: bytes) -> list[int]:
    tokens = array("I")
    tokens.frombytes(data)
    return tokens.tolist()


class RedisStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "sarathi", finished_ttl_s: int = 3600):
        self.client = client
        self.prefix = prefix
        self.finished_ttl_s = finished_ttl_s

    def request_key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    def output_key(self, request_id: str) -> str:
        return f"{self.prefix}:out:{request_id}"

    @property
    def inflight_key(self) -> str:
        return f"{self.prefix}:inflight"

    async def persist_iteration(
        self,
        accepted: Sequence[Request],
        updates: Sequence[RequestUpdate],
        ended: Sequence[Request] = (),
    ) -> None:
        """Writes new requests, this iteration's tokens and the requests that
        ended without a token (aborts) in one round trip."""
        if not accepted and not updates and not ended:
            return
        pipe = self.client.pipeline(transaction=False)
        for request in accepted:
            pipe.hset(
                self.request_key(request.request_id),
                mapping={
                    "prompt": pack_tokens(request.prompt_token_ids),
                    "sampling": json.dumps(asdict(request.sampling)),
                    "session": request.session_id,
                    "arrival": repr(request.arrival_time),
                    "status": "running",
                },
            )
            pipe.sadd(self.inflight_key, request.request_id)
        for update in updates:
            rid = update.request.request_id
            pipe.append(self.output_key(rid), pack_tokens(update.token_ids))
            if update.stop_reason is not None:
                self._finish(pipe, rid, update.stop_reason.value)
        for request in ended:
            reason = request.stop_reason.value if request.stop_reason else "aborted"
            self._finish(pipe, request.request_id, reason)
        await pipe.execute()

    def _finish(self, pipe: aioredis.client.Pipeline, request_id: str, reason: str) -> None:
        key = self.request_key(request_id)
        pipe.hset(key, mapping={"status": "finished", "stop_reason": reason})
        pipe.srem(self.inflight_key, request_id)
        pipe.expire(key, self.finished_ttl_s)
        pipe.expire(self.output_key(request_id), self.finished_ttl_s)

    async def load_output(self, request_id: str) -> list[int]:
        data = await self.client.get(self.output_key(request_id))
        return unpack_tokens(data.encode() if isinstance(data, str) else data or b"")
