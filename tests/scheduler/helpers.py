"""Hand-built scheduler states for policy and core tests."""

from __future__ import annotations

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.scheduler.request import Request

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


def make_request(
    request_id: str, num_prompt_tokens: int, max_tokens: int = 8, session: str = "s"
) -> Request:
    return Request(
        request_id=request_id,
        prompt_token_ids=list(range(10, 10 + num_prompt_tokens)),
        sampling=SamplingParams(temperature=0.0, max_tokens=max_tokens),
        session_id=session,
        arrival_time=0.0,
    )
