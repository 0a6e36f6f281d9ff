"""The waiting queue's order (priority, fair share between tenants, arrival) and the
preemptions a priority allows."""

import pytest

from sarathi_serve.scheduler.block_manager import BlockManager
from sarathi_serve.scheduler.policies import make_policy
from sarathi_serve.scheduler.request import RequestStatus
from sarathi_serve.scheduler.state import SchedulerState
from sarathi_serve.scheduler.waiting import WaitingQueue
from tests.scheduler.helpers import make_request


def request(request_id, tenant="", priority=0, prompt=8):
    req = make_request(request_id, prompt)
    req.tenant, req.priority = tenant, priority
    return req


def order(queue):
    return [r.request_id for r in queue]


def drain(queue):
    out = []
    while queue:
        out.append(queue.popleft().request_id)
    return out


def test_one_tenant_is_first_come_first_served():
    queue = WaitingQueue()
    for i in range(5):
        queue.append(request(f"r{i}", prompt=8 * (5 - i)))
    assert drain(queue) == ["r0", "r1", "r2", "r3", "r4"]


def test_a_burst_does_not_queue_ahead_of_a_light_tenant():
    queue = WaitingQueue()
    for i in range(10):
        queue.append(request(f"heavy{i}", tenant="heavy"))
    queue.popleft()  # heavy0 admitted
    queue.append(request("light0", tenant="light"))
    # the light tenant owes nothing: it goes next, not behind the heavy backlog
    assert drain(queue)[0] == "light0"


def test_two_backlogged_tenants_alternate_by_weight():
    queue = WaitingQueue(weights={"gold": 2.0})
    for i in range(6):
        queue.append(request(f"gold{i}", tenant="gold"))
        queue.append(request(f"free{i}", tenant="free"))
    served = drain(queue)[:9]
    assert sum(name.startswith("gold") for name in served) == 6  # twice the share
    assert served.index("free0") < served.index("gold2")


def test_priority_comes_before_fair_share_and_arrival():
    queue = WaitingQueue()
    queue.append(request("late-batch", priority=5))
    queue.append(request("normal"))
    queue.append(request("urgent", priority=-1))
    assert order(queue) == ["urgent", "normal", "late-batch"]


def test_preempted_requests_go_back_first_within_their_priority_oldest_first():
    queue = WaitingQueue()
    first, second = request("first"), request("second")
    queue.append(first)
    queue.append(second)
    drain(queue)
    queue.append(request("new"))
    queue.append(request("urgent", priority=-1))
    queue.appendleft(second)  # preempted newest first, as make_room does
    queue.appendleft(first)
    assert order(queue) == ["urgent", "first", "second", "new"]


def test_remove_and_unknown_remove():
    queue = WaitingQueue()
    a, b = request("a"), request("b")
    queue.append(a)
    queue.append(b)
    queue.remove(a)
    assert order(queue) == ["b"]
    with pytest.raises(ValueError):
        queue.remove(a)


def test_idle_tenants_are_forgotten_past_the_limit(monkeypatch):
    monkeypatch.setattr("sarathi_serve.scheduler.waiting.MAX_IDLE_TENANTS", 4)
    queue = WaitingQueue()
    for i in range(10):
        queue.append(request(f"once{i}", tenant=f"t{i}"))
    drain(queue)
    for i in range(4):  # a steady tenant moves the virtual time past the others' tags
        queue.append(request(f"steady{i}", tenant="steady"))
        queue.popleft()
    assert set(queue._finish) == {"steady"}


def running(state, blocks, *reqs):
    """Requests admitted in this order, their prompts computed, one token sampled."""
    for req in reqs:
        state.waiting.append(req)
        state.admit(req)
        blocks.allocate(req, req.num_tokens)
        req.num_computed_tokens = req.num_tokens
        req.output_token_ids.append(1)


@pytest.mark.parametrize("name", ["sarathi", "vllm", "orca"])
def test_a_higher_priority_preempts_the_lowest_when_the_blocks_run_out(name):
    policy = make_policy(name, token_budget=64, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(7, 4)  # 28 tokens of KV
    low, normal = request("low", priority=3, prompt=10), request("normal", prompt=10)
    running(state, blocks, low, normal)
    urgent = request("urgent", priority=-2, prompt=10)
    state.waiting.append(urgent)
    schedule = policy.schedule(state, blocks)
    assert [r.request_id for r in schedule.preempted] == ["low"]
    assert low.status is RequestStatus.WAITING and low.num_computed_tokens == 0
    assert urgent.status is RequestStatus.RUNNING
    assert all(r is not low for r, _ in schedule.chunks)


def test_a_higher_priority_takes_the_place_of_a_lower_one_at_the_running_cap():
    policy = make_policy("sarathi", token_budget=64, max_num_seqs=2)
    state, blocks = SchedulerState(), BlockManager(100, 4)
    low, normal = request("low", priority=1), request("normal")
    running(state, blocks, low, normal)
    state.waiting.append(request("peer", priority=1))  # no higher than any running: waits
    assert not policy.schedule(state, blocks).preempted
    state.waiting.append(request("urgent", priority=-1))
    schedule = policy.schedule(state, blocks)
    assert [r.request_id for r in schedule.preempted] == ["low"]
    assert [r.request_id for r in state.running] == ["normal", "urgent"]
    assert order(state.waiting) == ["low", "peer"]  # preempted first within a priority


def test_equal_priorities_never_preempt_to_admit():
    policy = make_policy("sarathi", token_budget=64, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(6, 4)
    a, b = request("a", prompt=10), request("b", prompt=10)
    running(state, blocks, a, b)
    state.waiting.append(request("c", prompt=12))
    schedule = policy.schedule(state, blocks)
    assert not schedule.preempted and order(state.waiting) == ["c"]


def test_decode_preemption_takes_the_lowest_priority_not_the_newest():
    policy = make_policy("sarathi", token_budget=64, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(7, 4)  # 28 tokens
    low, normal = request("low", priority=1, prompt=12), request("normal", prompt=12)
    running(state, blocks, low, normal)
    running(state, blocks, request("newest", prompt=3))
    # low's and normal's next tokens need a 4th block each; the pool has none left:
    # low goes (the lowest priority), not the newest request
    schedule = policy.schedule(state, blocks)
    assert [r.request_id for r in schedule.preempted] == ["low"]


def prefilling(state, blocks, req, computed):
    """`req` admitted with `computed` of its prompt tokens done."""
    state.waiting.append(req)
    state.admit(req)
    blocks.allocate(req, computed)
    req.num_computed_tokens = computed


def chunks(schedule):
    return [(r.request_id, n) for r, n in schedule.chunks]


def test_a_light_tenants_new_prompt_is_chunked_before_a_heavy_tenants_running_one():
    policy = make_policy("sarathi", token_budget=64, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(100, 4)
    heavy = request("heavy0", tenant="heavy", prompt=100)
    prefilling(state, blocks, heavy, 20)
    for i in range(1, 4):  # the heavy tenant's backlog
        state.waiting.append(request(f"heavy{i}", tenant="heavy", prompt=100))
    state.waiting.append(request("light", tenant="light", prompt=40))
    assert chunks(policy.schedule(state, blocks)) == [("light", 40), ("heavy0", 24)]


def test_one_tenant_chunks_running_prefills_before_new_prompts_in_arrival_order():
    policy = make_policy("sarathi", token_budget=64, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(100, 4)
    first, second = request("first", prompt=30), request("second", prompt=30)
    prefilling(state, blocks, first, 10)
    prefilling(state, blocks, second, 10)
    state.waiting.append(request("new", prompt=30))
    assert chunks(policy.schedule(state, blocks)) == [("first", 20), ("second", 20), ("new", 24)]


def test_a_higher_priority_new_prompt_is_chunked_before_running_prefills():
    policy = make_policy("sarathi", token_budget=32, max_num_seqs=8)
    state, blocks = SchedulerState(), BlockManager(100, 4)
    prefilling(state, blocks, request("normal", prompt=60), 10)
    state.waiting.append(request("urgent", priority=-1, prompt=20))
    assert chunks(policy.schedule(state, blocks)) == [("urgent", 20), ("normal", 12)]
