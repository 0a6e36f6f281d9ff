"""The paged, ragged forward pass matches the dense Hugging Face model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.common.step import WorkerGeometry
from sarathi_serve.worker.model_runner import BatchEntry, ModelRunner, Sequence
from sarathi_serve.worker.null_runner import NullRunner

GREEDY = SamplingParams(temperature=0.0)


def make_sequences(runner, lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    free = list(range(runner.kv_cache.num_blocks))[::-1]  # reversed: non-contiguous tables
    seqs = []
    for i, n in enumerate(lengths):
        tokens = torch.randint(3, 300, (n,), generator=gen).tolist()
        num_blocks = -(-(n + 16) // runner.block_size)
        seqs.append(Sequence(f"r{i}", tokens, n, GREEDY, [free.pop() for _ in range(num_blocks)]))
    return seqs


@pytest.mark.parametrize(
    ("arch", "backend", "linear", "fuse"),
    [
        ("llama", "torch", "auto", True),  # fused layers (fused_layers.py)
        ("llama", "torch", "auto", False),  # Hugging Face's layers
        ("llama", "torch", "torch", True),
        ("mistral", "torch", "auto", True),  # a sliding window
        ("mistral", "torch", "auto", False),
        ("qwen2", "torch", "auto", True),  # attention bias: fused and packed with its bias
        ("qwen2", "torch", "torch", False),
        ("qwen3", "torch", "auto", True),  # per-head q/k norms
        ("qwen3", "torch", "auto", False),
        ("llama", "flex", "auto", True),
        ("mistral", "flex", "auto", True),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_mixed_chunked_batch_logits_match_hf(tiny_checkpoint, arch, backend, linear, fuse):
    path = tiny_checkpoint(arch)
    runner = ModelRunner(
        path,
        kv_cache_bytes=4 << 20,
        block_size=4,
        attention_backend=backend,
        linear_backend=linear,
        fuse_layers=fuse,
    )
    assert runner.fused_layers == (runner.model.config.num_hidden_layers if fuse else 0)
    ref = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    seqs = make_sequences(runner, [13, 5, 30, 9])
    captured = {}

    original = runner.model.forward

    def capture(*args, **kwargs):
        out = original(*args, **kwargs)
        captured["logits"] = out.logits[0]
        return out

    runner.model.forward = capture
    # step 1: a chunk that stops mid-block, a whole prompt, a first chunk
    # step 2: a decode, a chunk that starts mid-block and ends a prompt,
    #         a second chunk, a new prompt
    # step 3..: all decode, then a mix again
    plans = [
        [(0, 6), (1, 5), (2, 11)],
        [(1, 1), (0, 7), (2, 10), (3, 9)],
        [(0, 1), (1, 1), (2, 9), (3, 1)],
        [(0, 1), (1, 1), (2, 1), (3, 1)],
    ]
    max_err = 0.0
    for plan in plans:
        batch = [BatchEntry(seqs[i], n) for i, n in plan]
        sampled = runner.execute(batch).sampled
        rows = [
            e
            for e in batch
            if e.sequence.num_computed_tokens + e.num_tokens == len(e.sequence.token_ids)
        ]
        for entry, logits in zip(rows, captured["logits"], strict=True):
            seq = entry.sequence
            context = seq.token_ids[: seq.num_computed_tokens + entry.num_tokens]
            with torch.no_grad():
                expected = ref(torch.tensor([context])).logits[0, -1]
            err = ((logits - expected).abs().max() / expected.abs().max()).item()
            max_err = max(max_err, err)
        for entry in batch:
            entry.sequence.num_computed_tokens += entry.num_tokens
        for seq in seqs:
            if seq.request_id in sampled:
                seq.token_ids.append(sampled[seq.request_id])
    name = f"{arch}/{backend}/{runner.linear_backend}/fused={fuse}"
    print(f"{name}: max relative logit error {max_err:.2e}")
    assert max_err < 1e-4
    assert all(len(s.token_ids) > s.num_prompt_tokens for s in seqs)


def test_greedy_decode_matches_hf_generate(tiny_llama):
    runner = ModelRunner(tiny_llama, kv_cache_bytes=4 << 20, block_size=4)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    seqs = make_sequences(runner, [7, 21], seed=1)
    prompts = [list(s.token_ids) for s in seqs]
    for _ in range(12):
        batch = [BatchEntry(s, len(s.token_ids) - s.num_computed_tokens) for s in seqs]
        sampled = runner.execute(batch).sampled
        for s in seqs:
            s.num_computed_tokens = len(s.token_ids)
            s.token_ids.append(sampled[s.request_id])
    for prompt, seq in zip(prompts, seqs, strict=True):
        expected = ref.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
        assert seq.token_ids[len(prompt) :] == expected


def test_geometry_is_what_the_runner_holds(tiny_llama):
    runner = ModelRunner(tiny_llama, kv_cache_bytes=4 << 20, block_size=4)
    # 2 layers x (K, V) x 2 KV heads x 4 tokens x 16 dims x 4 bytes = 2 KiB a block
    assert runner.geometry == WorkerGeometry(
        num_kv_blocks=2048, block_size=4, max_model_len=512, eos_token_id=2, vocab_size=320
    )
    assert runner.geometry.num_kv_blocks == runner.kv_cache.num_blocks
    assert NullRunner(num_blocks=7).geometry == WorkerGeometry(7, 16, 1 << 20, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_kv_cache_is_sized_from_free_memory(tiny_llama):
    runner = ModelRunner(tiny_llama, kv_cache_bytes=None, device="cuda", dtype=torch.bfloat16)
    total = torch.cuda.get_device_properties(0).total_memory
    assert 0.5 * total < runner.kv_cache.num_bytes < 0.9 * total
    assert runner.backend.name in ("flex", "flash")


@pytest.mark.parametrize("backend", ["torch", "flex"])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_cached_prefix_in_shared_blocks_gives_the_tokens_of_a_full_compute(tiny_llama, backend):
    """The prefix cache's contract: a new request whose first chunk starts past a cached
    prefix reads that prefix's KV from blocks another request wrote (and goes on using),
    and writes only into blocks of its own."""
    runner = ModelRunner(
        tiny_llama, kv_cache_bytes=4 << 20, block_size=4, attention_backend=backend
    )
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    system = torch.randint(3, 300, (18,), generator=torch.Generator().manual_seed(3)).tolist()
    owner = Sequence("owner", [*system, 7, 8], 20, GREEDY, list(range(10, 18)))
    owner.token_ids.append(runner.execute([BatchEntry(owner, 20)]).sampled["owner"])
    owner.num_computed_tokens = 20
    shared_slots = torch.tensor([b * 4 + i for b in owner.block_ids[:4] for i in range(4)])
    kv_before = runner.kv_cache.read(0, shared_slots)
    # a: 4 of its 5 full blocks shared; b: an exact repeat of 4 blocks, its last recomputed
    prompts = {"a": [*system, 9, 10, 11], "b": system[:16]}
    seqs = []
    for i, (rid, prompt) in enumerate(prompts.items()):
        num_shared = 4 if rid == "a" else 3
        own = list(range(30 + 4 * i, 34 + 4 * i))
        table = owner.block_ids[:num_shared] + own
        seqs.append(Sequence(rid, list(prompt), len(prompt), GREEDY, table, 4 * num_shared))
    for _ in range(6):  # the owner decodes alongside: its blocks stay in use
        batch = [BatchEntry(s, len(s.token_ids) - s.num_computed_tokens) for s in [*seqs, owner]]
        sampled = runner.execute(batch).sampled
        for entry in batch:
            entry.sequence.num_computed_tokens = len(entry.sequence.token_ids)
            entry.sequence.token_ids.append(sampled[entry.sequence.request_id])
    for seq, prompt in zip(seqs, prompts.values(), strict=True):
        expected = ref.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()  # fmt: skip
        assert seq.token_ids[len(prompt) :] == expected, seq.request_id
    for before, after in zip(kv_before, runner.kv_cache.read(0, shared_slots), strict=True):
        assert torch.equal(before, after), "a shared block was written"
