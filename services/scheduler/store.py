"""Durable request state in Redis: one pipelined round trip per iteration.

Schema (all keys under `prefix`, default `sarathi`):

    {p}:req:{id}   HASH   prompt (packed uint32 LE), sampling (JSON), session,
                          arrival (unix s), cache_salt, priority, tenant,
                          status (running|finished), stop_reason,
                          error_code and error_message (with stop_reason error)
    {p}:out:{id}   STRING generated token ids, packed uint32 LE, APPENDed per iteration
    {p}:inflight   SET    ids of accepted, unfinished requests

Finished requests keep their keys for `finished_ttl_s` so that a client can
still read them, then Redis expires them.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sarathi_serve.common.errors import ServiceError, error_from_code
from sarathi_serve.common.sampling import Grammar, SamplingParams
from sarathi_serve.scheduler.iteration import RequestUpdate
from sarathi_serve.scheduler.request import Request, StopReason


def pack_tokens(token_ids: Iterable[int]) -> bytes:
    return _little_endian(array("I", token_ids))


def unpack_tokens(data: bytes) -> list[int]:
    tokens = array("I")
    tokens.frombytes(data)
    if sys.byteorder == "big":
        tokens.byteswap()
    return tokens.tolist()


def _little_endian(values: array) -> bytes:  # type: ignore[type-arg]
    if sys.byteorder == "big":
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


class Fenced(Exception):
    """A newer leader holds the lease: this scheduler must not write again."""


# One round trip, atomic, fenced: the writes apply only while the epoch key still
# holds this leader's epoch. ARGV: epoch ('' = unfenced); the iteration's token appends,
# packed so that a 256-request iteration is 4 arguments rather than 512 (the client-side
# encoding of one argument per request was most of the persist time): the output key
# prefix, the request ids concatenated, their byte lengths and token counts (uint32 LE
# pairs), and the tokens (uint32 LE); then per other command its argument count
# followed by the command and its arguments.
_FENCED_BATCH = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED')
end
local prefix, ids, sizes, tokens = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local id_at, token_at = 1, 1
for k = 1, #sizes, 8 do
  local id_len, n = struct.unpack('<I4<I4', sizes, k)
  local token_end = token_at + 4 * n
  redis.call('APPEND', prefix .. string.sub(ids, id_at, id_at + id_len - 1),
             string.sub(tokens, token_at, token_end - 1))
  id_at = id_at + id_len
  token_at = token_end
end
local i = 6
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A request that ended, as Redis holds it until it expires."""

    output_token_ids: list[int]
    stop_reason: StopReason
    error: ServiceError | None = None  # with stop_reason ERROR


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """An in-flight request as Redis holds it (what a new leader resumes from)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    session_id: str
    arrival_time: float
    output_token_ids: list[int]
    cache_salt: str = ""
    priority: int = 0
    tenant: str = ""

    def to_request(self, awaiting_resume: bool) -> Request:
        """The request, to recompute (prompt + tokens so far); all of them released."""
        return Request(
            request_id=self.request_id,
            prompt_token_ids=self.prompt_token_ids,
            sampling=self.sampling,
            session_id=self.session_id,
            arrival_time=self.arrival_time,
            output_token_ids=list(self.output_token_ids),
            awaiting_resume=awaiting_resume,
            num_released=len(self.output_token_ids),
            cache_salt=self.cache_salt,
            priority=self.priority,
            tenant=self.tenant,
        )


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "sarathi",
        finished_ttl_s: int = 3600,
        epoch: int | None = None,
    ):
        self.client = client
        self.prefix = prefix
        self.finished_ttl_s = finished_ttl_s
        self.epoch = epoch  # this leader's fencing token; None: unfenced
        self._batch = client.register_script(_FENCED_BATCH)

    def request_key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    def output_key(self, request_id: str) -> str:
        return f"{self.prefix}:out:{request_id}"

    @property
    def inflight_key(self) -> str:
        return f"{self.prefix}:inflight"

    @property
    def epoch_key(self) -> str:
        return f"{self.prefix}:epoch"

    async def persist_iteration(
        self,
        accepted: Sequence[Request],
        updates: Sequence[RequestUpdate],
        ended: Sequence[Request] = (),
    ) -> None:
        """Writes new requests, this iteration's tokens and the requests that
        ended without a token (aborts) in one fenced round trip."""
        if not accepted and not updates and not ended:
            return
        ops: list[tuple[str | bytes | int, ...]] = []
        for request in accepted:
            ops += self._accept(request)
        ids = []
        sizes = array("I")
        tokens = array("I")
        for update in updates:
            rid = update.request.request_id.encode()
            ids.append(rid)
            sizes.append(len(rid))
            sizes.append(len(update.token_ids))
            tokens.extend(update.token_ids)
            if update.stop_reason is not None:
                ops += self._finish(update.request, update.stop_reason)
        for request in ended:
            ops += self._finish(request, request.stop_reason or StopReason.ABORTED)
        args: list[str | bytes | int] = [
            "" if self.epoch is None else str(self.epoch),
            self.output_key(""),
            b"".join(ids),
            _little_endian(sizes),
            _little_endian(tokens),
        ]
        for op in ops:
            args.append(len(op))
            args.extend(op)
        try:
            await self._batch(keys=[self.epoch_key], args=args)
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced(f"epoch {self.epoch} is no longer the leader's") from exc
            raise

    def _accept(self, request: Request) -> list[tuple[str | bytes | int, ...]]:
        fields = {
            "prompt": pack_tokens(request.prompt_token_ids),
            "sampling": json.dumps(asdict(request.sampling)),
            "session": request.session_id,
            "arrival": repr(request.arrival_time),
            "cache_salt": request.cache_salt,
            "priority": str(request.priority),
            "tenant": request.tenant,
            "status": "running",
        }
        hset = ("HSET", self.request_key(request.request_id), *_flat(fields))
        return [hset, ("SADD", self.inflight_key, request.request_id)]

    def _finish(self, request: Request, reason: StopReason) -> list[tuple[str | bytes | int, ...]]:
        request_id = request.request_id
        key = self.request_key(request_id)
        error = request.error
        fields = ("error_code", error.code.name, "error_message", str(error)) if error else ()
        return [
            ("HSET", key, "status", "finished", "stop_reason", reason.value, *fields),
            ("SREM", self.inflight_key, request_id),
            ("EXPIRE", key, self.finished_ttl_s),
            ("EXPIRE", self.output_key(request_id), self.finished_ttl_s),
        ]

    async def load_output(self, request_id: str) -> list[int]:
        data = await self.client.get(self.output_key(request_id))
        return unpack_tokens(data.encode() if isinstance(data, str) else data or b"")

    async def load_finished(self, request_id: str) -> FinishedRequest | None:
        """A request that finished in Redis (its tokens, how it ended), else None."""
        pipe = self.client.pipeline(transaction=False)
        fields = ("status", "stop_reason", "error_code", "error_message")
        pipe.hmget(self.request_key(request_id), *fields)
        pipe.get(self.output_key(request_id))
        (status, reason, code, message), output = await pipe.execute()
        if status != b"finished":
            return None
        stop = StopReason(reason.decode()) if reason else StopReason.ABORTED
        error = error_from_code(code.decode(), message.decode()) if code else None
        return FinishedRequest(unpack_tokens(output or b""), stop, error)

    async def load_inflight(self) -> list[StoredRequest]:
        """Every accepted, unfinished request with its tokens so far (two round trips)."""
        ids = sorted(
            m.decode() if isinstance(m, bytes) else m
            for m in await self.client.smembers(self.inflight_key)
        )
        if not ids:
            return []
        pipe = self.client.pipeline(transaction=False)
        for rid in ids:
            pipe.hgetall(self.request_key(rid))
            pipe.get(self.output_key(rid))
        replies = await pipe.execute()
        stored = []
        for rid, fields, output in zip(ids, replies[::2], replies[1::2], strict=True):
            if not fields:
                continue  # expired or half-written: nothing to resume
            stored.append(
                StoredRequest(
                    request_id=rid,
                    prompt_token_ids=unpack_tokens(fields[b"prompt"]),
                    sampling=_sampling_from_json(fields[b"sampling"]),
                    session_id=fields[b"session"].decode(),
                    arrival_time=float(fields[b"arrival"]),
                    cache_salt=fields.get(b"cache_salt", b"").decode(),
                    priority=int(fields.get(b"priority", b"0")),
                    tenant=fields.get(b"tenant", b"").decode(),
                    output_token_ids=unpack_tokens(output or b""),
                )
            )
        return sorted(stored, key=lambda r: r.arrival_time)


def _sampling_from_json(data: bytes) -> SamplingParams:
    fields = json.loads(data)
    fields["stop_token_ids"] = tuple(fields.get("stop_token_ids", ()))
    fields["logit_bias"] = tuple((int(t), float(b)) for t, b in fields.get("logit_bias", ()))
    grammar = fields.get("grammar")
    fields["grammar"] = Grammar(**grammar) if grammar else None
    return SamplingParams(**fields)


def _flat(fields: dict[str, str | bytes]) -> list[str | bytes]:
    return [item for pair in fields.items() for item in pair]
