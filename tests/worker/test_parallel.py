"""Worker groups on CPU (gloo) generate what one process does: 2 tensor-parallel ranks,
2 pipeline stages, and 2 stages of 2 tensor-parallel ranks each."""

import queue
import subprocess
import sys

import pytest

from sarathi_serve.common.net import free_port
from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import NewRequest, ScheduledChunk, StepPlan
from sarathi_serve.worker.config import WorkerConfig
from sarathi_serve.worker.group import start_engine

PROMPTS = [list(range(5, 29)), list(range(40, 47))]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=64),
    SamplingParams(temperature=0.8, seed=7, max_tokens=64),
]
BLOCK = 4


def run(engine, *plans):
    """Submits the plans at once (a pipelined group has them in flight together), then
    returns their results, which come in order."""
    results = queue.Queue()
    for plan in plans:
        engine.submit(plan, results.put)
    got = [results.get(timeout=60) for _ in plans]
    assert [r.step_id for r in got] == [p.step_id for p in plans]
    assert not any(r.error for r in got), [r.error for r in got]
    stages = getattr(engine, "depth", 0)  # a pipelined group: each stage's times
    assert all(len(r.stage_busy_ms) == len(r.stage_idle_ms) == stages for r in got)
    return got


def generate(engine, num_steps=12, in_flight=False):
    """Drives the engine as the scheduler would: prompts (the first in 2 chunks), then
    decodes: every request in every step, or (`in_flight`) one request a micro-batch with
    two micro-batches in flight, as the scheduler plans for two pipeline stages."""
    blocks = iter(range(1000))
    tables = {f"r{i}": [] for i in range(len(PROMPTS))}
    lengths = {f"r{i}": 0 for i in range(len(PROMPTS))}
    outputs = {rid: [] for rid in tables}

    def chunk(rid, n):
        lengths[rid] += n
        need = -(-lengths[rid] // BLOCK) - len(tables[rid])
        new = [next(blocks) for _ in range(need)]
        tables[rid] += new
        return ScheduledChunk(rid, n, tuple(new))

    def collect(results):
        for result in results:
            for rid, token in result.sampled.items():
                outputs[rid].append(token)

    new = tuple(NewRequest(f"r{i}", tuple(p), 0, PARAMS[i]) for i, p in enumerate(PROMPTS))
    collect(run(engine, StepPlan(0, new, (chunk("r0", 16), chunk("r1", 7)))))
    collect(run(engine, StepPlan(1, (), (chunk("r1", 1), chunk("r0", 8)))))
    for step in range(2, num_steps):
        if not in_flight:
            collect(run(engine, StepPlan(step, (), tuple(chunk(rid, 1) for rid in tables))))
            continue
        plans = [StepPlan(2 * step + i, (), (chunk(rid, 1),)) for i, rid in enumerate(tables)]
        collect(run(engine, *plans))
    return outputs


@pytest.mark.timeout(300)
def test_tp2_equals_tp1(tiny_llama):
    base = WorkerConfig(
        model=str(tiny_llama), kv_cache_gb=0.01, block_size=BLOCK, num_threads=1, seed=3
    )
    single, _, stop_single = start_engine(base)
    expected = generate(single)
    stop_single()
    group, runner, stop_group = start_engine(
        WorkerConfig(
            model=str(tiny_llama),
            kv_cache_gb=0.01,
            block_size=BLOCK,
            num_threads=1,
            tensor_parallel_size=2,
        )
    )
    try:
        assert runner.kv_cache.spec.num_kv_heads == 1  # 2 KV heads split over 2 ranks
        got = generate(group)
        group.reset()  # the followers take commands other than steps too
        assert generate(group) == got
    finally:
        stop_group()
    assert got == expected
    assert [len(got["r0"]), len(got["r1"])] == [11, 12]  # r1 samples from step 0, r0 from step 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("pp", "tp"), [(2, 1), (2, 2)])
def test_pipeline_stages_equal_one_process(tiny_llama, pp, tp):
    """Each stage holds one of the 2 layers and the KV cache of its own; the last
    samples; every stage keeps the sequences' tokens (a reset and a rerun give the same),
    also with two micro-batches in flight."""
    base = dict(model=str(tiny_llama), kv_cache_gb=0.01, block_size=BLOCK, num_threads=1)
    single, one, stop_single = start_engine(WorkerConfig(**base, seed=3))
    expected = generate(single)
    stop_single()
    group, runner, stop_group = start_engine(
        WorkerConfig(**base, pipeline_parallel_size=pp, tensor_parallel_size=tp)
    )
    try:
        assert runner.kv_cache.spec.num_layers == 1 and runner.pp.first
        assert runner.kv_cache.spec.num_kv_heads == 2 // tp
        assert runner.geometry.num_kv_blocks >= one.geometry.num_kv_blocks  # half the layers
        got = generate(group)
        group.reset()
        assert generate(group) == got
        group.reset()
        assert generate(group, in_flight=True) == got  # two micro-batches at once
    finally:
        stop_group()
    assert got == expected


@pytest.mark.parametrize(
    ("num_layers", "stages", "ranges"),
    [(2, 2, [(0, 1), (1, 2)]), (30, 4, [(0, 8), (8, 16), (16, 23), (23, 30)]), (5, 1, [(0, 5)])],
)
def test_stages_hold_contiguous_layers_the_first_ones_longer(num_layers, stages, ranges):
    from sarathi_serve.worker.pipeline import PipelineStage

    got = [PipelineStage(s, stages).layers(num_layers) for s in range(stages)]
    assert [(r.start, r.stop) for r in got] == ranges
    with pytest.raises(ValueError, match="3 pipeline stages for 2 layers"):
        PipelineStage(0, 3).layers(2)
    assert PipelineStage.of_rank(5, 2, 4) == PipelineStage(1, 2, 4, 1)
    assert PipelineStage(1, 2, 4, 1).rank_of(0) == 1 and PipelineStage(1, 2, 4).output_rank == 4


def test_a_layer_split_places_the_stages_layers():
    """`--pipeline-layers 16,14`: the first stage one layer longer (the last runs the
    LM head too); the counts must cover the model's layers, one per stage."""
    from sarathi_serve.worker.pipeline import PipelineStage

    split = (16, 14)
    got = [PipelineStage(s, 2, layer_split=split).layers(30) for s in range(2)]
    assert [(r.start, r.stop) for r in got] == [(0, 16), (16, 30)]
    assert PipelineStage.of_rank(3, 2, 2, split) == PipelineStage(1, 2, 2, 1, split)
    with pytest.raises(
        ValueError, match="pipeline-layers 16,14 places 30 layers; the model has 32"
    ):
        PipelineStage(0, 2, layer_split=split).layers(32)
    with pytest.raises(ValueError, match="needs 2 counts"):
        PipelineStage(0, 2, layer_split=(30,))
    assert WorkerConfig(pipeline_parallel_size=2, pipeline_layers="16, 14").layer_split == split
    assert WorkerConfig().layer_split == ()
    for bad in ("16", "16,14,1", "a,b", "31,-1"):
        with pytest.raises(ValueError, match="pipeline_layers"):
            WorkerConfig(pipeline_parallel_size=2, pipeline_layers=bad)


def test_indivisible_heads_are_refused(tiny_llama):
    from sarathi_serve.worker.parallel import check_divisible

    class Config:
        num_attention_heads, num_key_value_heads, intermediate_size = 9, 3, 1536

    with pytest.raises(ValueError, match="num_attention_heads"):
        check_divisible(Config(), 2)


@pytest.mark.timeout(300)
def test_a_group_spread_over_processes_one_per_stage_equals_one_process(tiny_llama):
    """One process per pipeline stage, as the pods of a LeaderWorkerSet: stage 1 is
    `python -m sarathi_serve.worker --pipeline-stage 1 --group-addr HOST:PORT` (with its
    second tensor-parallel rank as its child) and meets stage 0 at stage 0's address;
    stage 0 alone drives the group. It stops when stage 0 stops the group."""
    base = dict(model=str(tiny_llama), kv_cache_gb=0.01, block_size=BLOCK, num_threads=1)
    single, _, stop_single = start_engine(WorkerConfig(**base, seed=3))
    expected = generate(single)
    stop_single()
    addr = f"127.0.0.1:{free_port()}"
    flags = ["--model", str(tiny_llama), "--kv-cache-gb", "0.01", "--block-size", str(BLOCK),
             "--num-threads", "1", "--pipeline-parallel-size", "2",
             "--tensor-parallel-size", "2", "--group-addr", addr]  # fmt: skip
    stage_1_flags = [*flags, "--pipeline-stage", "1", "--port", str(free_port())]
    stage_1 = subprocess.Popen([sys.executable, "-m", "sarathi_serve.worker", *stage_1_flags])
    try:
        group, runner, stop_group = start_engine(
            WorkerConfig.from_args([*flags, "--pipeline-stage", "0"])
        )
        try:
            assert runner.pp.first and runner.kv_cache.spec.num_kv_heads == 1
            got = generate(group, in_flight=True)
        finally:
            stop_group()
        assert stage_1.wait(timeout=60) == 0, "stage 1 did not stop with the group"
    finally:
        stage_1.kill()
    assert got == expected
