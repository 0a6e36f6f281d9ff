"""The prefix cache, driven through SchedulerCore with a fake worker that keeps real
"KV": each cache slot holds the token whose KV it would hold. Every chunk checks that
its context (the positions before it, in its block table) holds exactly its own
tokens, so a block reused wrongly, overwritten while shared or freed too early
fails the test at once; outputs must equal the no-cache run's."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import StepPlan, StepResult, WorkerGeometry
from sarathi_serve.scheduler.core import SchedulerCore
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import Request

EOS = 2
BLOCK_SIZE = 4


def next_token(tokens: list[int]) -> int:
    """The fake model: a function of the whole sequence, never EOS."""
    return (sum(tokens[-5:]) * 31 + len(tokens) * 7) % 200 + 10


def expected_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


class KVWorker:
    """Runs plans as the real engine does, on a KV cache of token ids."""

    def __init__(self) -> None:
        self.kv: dict[tuple[int, int], int] = {}
        self.seqs: dict[str, dict] = {}

    def step(self, plan: StepPlan) -> StepResult:
        for request_id in plan.freed_request_ids:
            self.seqs.pop(request_id, None)
        for new in plan.new_requests:
            self.seqs[new.request_id] = {
                "tokens": list(new.token_ids),
                "computed": new.num_computed_tokens,
                "blocks": [],
            }
        sampled = {}
        for chunk in plan.chunks:
            seq = self.seqs[chunk.request_id]
            seq["blocks"].extend(chunk.new_block_ids)
            tokens, start = seq["tokens"], seq["computed"]
            context = [self.kv.get(self._slot(seq, p)) for p in range(start)]
            assert context == tokens[:start], f"{chunk.request_id}: wrong KV in its context"
            for pos in range(start, start + chunk.num_tokens):
                self.kv[self._slot(seq, pos)] = tokens[pos]
            seq["computed"] = start + chunk.num_tokens
            if seq["computed"] == len(tokens):
                tokens.append(next_token(tokens))
                sampled[chunk.request_id] = tokens[-1]
        return StepResult(plan.step_id, sampled)

    @staticmethod
    def _slot(seq: dict, pos: int) -> tuple[int, int]:
        return seq["blocks"][pos // BLOCK_SIZE], pos % BLOCK_SIZE


def make_core(caching: bool, num_blocks: int, token_budget: int = 16, policy="sarathi"):
    core = SchedulerCore(
        make_policy(policy, token_budget=token_budget, max_num_seqs=8), prefix_caching=caching
    )
    core.attach_worker(WorkerGeometry(num_blocks, BLOCK_SIZE, 4096, EOS))
    return core


def request(request_id: str, prompt: list[int], max_tokens: int, salt: str = "") -> Request:
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    return Request(request_id, list(prompt), sampling, "s", 0.0, cache_salt=salt)


def check_references(core: SchedulerCore) -> None:
    """Every block is referenced once per request holding it; the rest are free."""
    blocks = core.blocks
    held = Counter(b for r in core.requests.values() for b in r.block_ids)
    assert all(blocks._refs[b] == held[b] for b in range(blocks.num_blocks))
    assert set(blocks._free) == {b for b in range(blocks.num_blocks) if not held[b]}


def run(core: SchedulerCore, arrivals: list[tuple[int, Request]], aborts=(), worker=None) -> dict:
    """Pipelined like a replica: plan n+1 goes to the worker before n is applied."""
    worker, seen = worker or KVWorker(), {}
    pending = sorted(arrivals, key=lambda a: a[0])
    abort_at = dict(aborts)
    in_flight, step = None, 0
    while pending or core.has_work:
        assert step < 5000, "the workload never ended"
        while pending and pending[0][0] <= step:
            added = pending.pop(0)[1]
            core.add(added)
            seen[added.request_id] = added
        for request_id, at in abort_at.items():
            if at == step:
                core.abort(request_id, float(step))
        planned = core.plan(step, float(step))
        check_references(core)
        result = worker.step(planned.plan)
        if in_flight is not None:
            core.apply(in_flight, float(step))
        in_flight, step = result, step + 1
    if in_flight is not None:
        core.apply(in_flight, float(step))
    return {rid: r.output_token_ids for rid, r in seen.items()}


SYSTEM = list(range(100, 137))  # 37 tokens: 9 whole blocks and one token


def test_a_shared_prefix_is_computed_once_and_read_by_the_next_request():
    core = make_core(True, num_blocks=64)
    outputs = run(
        core, [(0, request("a", [*SYSTEM, 1, 2, 3], 4)), (20, request("b", [*SYSTEM, 4], 4))]
    )
    assert outputs["a"] == expected_output([*SYSTEM, 1, 2, 3], 4)
    assert outputs["b"] == expected_output([*SYSTEM, 4], 4)
    stats = core.prefix_stats
    assert stats.hits == 36 and stats.queries == 40 + 38  # b reused 9 blocks of a's


def test_an_exact_repeat_recomputes_only_its_last_block():
    core = make_core(True, num_blocks=64)
    prompt = list(range(40, 72))  # 32 tokens: 8 whole blocks
    outputs = run(core, [(0, request("a", prompt, 3)), (20, request("b", prompt, 3))])
    assert outputs["a"] == outputs["b"] == expected_output(prompt, 3)
    assert core.prefix_stats.hits == 28  # 7 blocks: the last token is always computed


def test_generated_tokens_are_cached_for_the_next_turn():
    core = make_core(True, num_blocks=64)
    first = [*SYSTEM, 5]
    answer = expected_output(first, 12)
    second = first + answer + [6, 7]  # the next turn resends the conversation
    run(core, [(0, request("a", first, 12)), (40, request("b", second, 2))])
    # a computed its prompt and all but its last token: (38 + 11) // 4 = 12 blocks
    assert core.prefix_stats.hits == 12 * BLOCK_SIZE


def test_different_salts_share_nothing_and_caching_can_be_off():
    for caching, salts, hits in (
        (True, ("x", "y"), 0),
        (True, ("x", "x"), 36),
        (False, ("", ""), 0),
    ):
        core = make_core(caching, num_blocks=64)
        run(
            core,
            [
                (0, request("a", [*SYSTEM, 1], 2, salts[0])),
                (20, request("b", [*SYSTEM, 2], 2, salts[1])),
            ],
        )
        assert core.prefix_stats.hits == hits, (caching, salts)


def test_eviction_takes_a_cached_prefix_from_its_end():
    core, worker = make_core(True, num_blocks=16), KVWorker()
    prompt_a = list(range(300, 340))  # 10 blocks, freed when a finishes
    run(core, [(0, request("a", prompt_a, 1))], worker=worker)
    # c needs 8 blocks: the 6 never used go first, then a's last 2 (its last freed first)
    run(core, [(0, request("c", list(range(500, 532)), 1))], worker=worker)
    core.prefix_stats.hits = 0
    run(core, [(0, request("d", prompt_a, 1))], worker=worker)
    assert core.prefix_stats.hits == 8 * BLOCK_SIZE  # a's first 8 blocks were kept


prefixes = st.lists(st.integers(10, 60), min_size=1, max_size=50)


@settings(max_examples=60, deadline=None)
@given(
    shared=st.lists(prefixes, min_size=1, max_size=3),
    requests=st.lists(
        st.tuples(
            st.integers(0, 2),  # which shared prefix
            st.lists(st.integers(10, 60), max_size=12),  # its own suffix
            st.integers(1, 10),  # max_tokens
            st.integers(0, 30),  # arrival step
            st.one_of(st.none(), st.integers(0, 40)),  # abort step
            st.sampled_from(["", "t1"]),  # cache salt
        ),
        min_size=1,
        max_size=10,
    ),
    num_blocks=st.integers(12, 40),
    policy=st.sampled_from(["sarathi", "vllm", "orca"]),
)
def test_any_workload_gives_the_tokens_it_gives_without_the_cache(
    shared, requests, num_blocks, policy
):
    arrivals, aborts, expected = {True: [], False: []}, [], {}
    for i, (which, suffix, max_tokens, at, abort, salt) in enumerate(requests):
        prompt = shared[which % len(shared)] + suffix
        if len(prompt) + max_tokens > num_blocks * BLOCK_SIZE // 2:
            continue  # could never fit: not what this test is about
        for caching in (True, False):
            arrivals[caching].append((at, request(f"r{i}", prompt, max_tokens, salt)))
        expected[f"r{i}"] = expected_output(prompt, max_tokens)
        if abort is not None:
            aborts.append((f"r{i}", abort))
    outputs = {
        caching: run(make_core(caching, num_blocks, policy=policy), arrivals[caching], aborts)
        for caching in (True, False)
    }
    aborted = {rid for rid, _ in aborts}
    for rid, tokens in expected.items():
        for caching in (True, False):
            got = outputs[caching].get(rid, [])
            if rid in aborted:
                assert got == tokens[: len(got)], (rid, caching)
            else:
                assert got == tokens, (rid, caching)
