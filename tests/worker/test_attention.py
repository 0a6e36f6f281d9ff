"""Every attention backend against a dense reference on random ragged batches."""

import pytest
import torch

from sarathi_serve.worker.attention import select_backend
from sarathi_serve.worker.attention.cpu_kernel import load_paged_decode
from sarathi_serve.worker.attention.layout import BatchLayout
from sarathi_serve.worker.attention.torch_backend import TorchBackend
from sarathi_serve.worker.kv_cache import KVCache, KVCacheSpec

H, KVH, D, BLOCK = 4, 2, 16, 4


def random_case(seed, device, layout, dtype=torch.float32):
    """A cache holding random contexts and a batch mixing decodes and chunks.

    Chunks start mid-prompt and mid-block; block tables are shuffled so that
    neighbouring positions live in distant blocks.
    """
    gen = torch.Generator().manual_seed(seed)
    spec = KVCacheSpec(num_layers=1, num_kv_heads=KVH, head_dim=D, block_size=BLOCK, dtype=dtype)
    cache = KVCache(spec, num_blocks=128, device=device, layout=layout)
    cache.keys[0].copy_(torch.randn(cache.keys[0].shape, generator=gen).to(dtype))
    cache.values[0].copy_(torch.randn(cache.values[0].shape, generator=gen).to(dtype))
    free = torch.randperm(128, generator=gen).tolist()
    # (context length, new tokens): decodes, first chunks (two of equal length),
    # chunks starting mid-prompt
    shapes = [
        (1, 1),
        (9, 1),
        (33, 1),
        (17, 17),
        (23, 7),
        (40, 13),
        (5, 1),
        (12, 5),
        (17, 17),
        (6, 6),
    ]
    query_start, num_query, context_len, tables, slots = [], [], [], [], []
    for ctx, n in shapes:
        table = [free.pop() for _ in range(-(-ctx // BLOCK))]
        query_start.append(sum(num_query))
        num_query.append(n)
        context_len.append(ctx)
        tables.append(table)
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(ctx - n, ctx)]
    layout = BatchLayout(
        query_start,
        num_query,
        context_len,
        tables,
        BLOCK,
        torch.tensor(slots, device=device),
        torch.device(device),
    )
    q = torch.randn(sum(num_query), H, D, generator=gen).to(device=device, dtype=dtype)
    return cache, layout, q


def dense_reference(cache, layout, q, scale, window):
    out = torch.empty_like(q, dtype=torch.float32)
    for i in range(layout.num_seqs):
        keys, values = cache.read(0, layout.context_slots(i))  # [ctx, KVH, D]
        k = keys.float().repeat_interleave(H // KVH, 1)
        v = values.float().repeat_interleave(H // KVH, 1)
        ctx, n, s = layout.context_len[i], layout.num_query[i], layout.query_start[i]
        for j in range(n):
            pos = ctx - n + j
            key_pos = torch.arange(ctx, device=q.device)
            visible = key_pos <= pos
            if window is not None:
                visible &= key_pos > pos - window
            scores = torch.einsum("hd,khd->hk", q[s + j].float(), k) * scale
            scores[:, ~visible] = float("-inf")
            out[s + j] = torch.einsum("hk,khd->hd", scores.softmax(-1), v)
    return out


def check_backend(name, device, dtype=torch.float32, tol=1e-5, backend=None):
    backend = backend or select_backend(name, torch.device(device))
    for seed, window in [(0, None), (1, None), (2, 6), (3, 16)]:
        cache, layout, q = random_case(seed, device, backend.kv_layout, dtype)
        meta = backend.prepare(layout)
        k, v = cache.read(0, layout.slot_mapping)  # the step's own keys, as the model gives them
        got = backend.forward(q, k, v, cache.keys[0], cache.values[0], meta, D**-0.5, window)
        want = dense_reference(cache, layout, q, D**-0.5, window)
        err = (got.float() - want).abs().max().item()
        assert err < tol, f"{name} seed {seed} window {window}: max abs error {err:.2e}"


def test_torch_backend_cpu():
    backend = select_backend("torch", torch.device("cpu"))
    assert backend.decode_kernel is not None, "the C++ decode kernel did not build (see log)"
    check_backend("torch", "cpu", backend=backend)  # decodes through the C++ kernel
    check_backend("torch", "cpu", backend=TorchBackend())  # gather + SDPA


def test_cpu_decode_kernel_refuses_bad_block_tables():
    kernel = load_paged_decode()
    assert kernel is not None
    q, pool = torch.randn(1, H, D), torch.randn(KVH, 8 * BLOCK, D)
    with pytest.raises(RuntimeError, match="block id out of the pool"):
        kernel(q, pool, pool, torch.tensor([[8]]), torch.tensor([3]), BLOCK, 1.0, 0)
    with pytest.raises(RuntimeError, match="context length"):
        kernel(q, pool, pool, torch.tensor([[0]]), torch.tensor([BLOCK + 1]), BLOCK, 1.0, 0)


def test_auto_picks_torch_on_cpu():
    assert select_backend("auto", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("nope", torch.device("cpu"))


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
def test_torch_backend_cuda():
    check_backend("torch", "cuda")


@pytest.mark.gpu
@gpu
def test_flex_backend_cuda():
    check_backend("flex", "cuda", tol=2e-3)
    check_backend("flex", "cuda", dtype=torch.bfloat16, tol=6e-2)


@pytest.mark.gpu
@gpu
def test_flash_backend_cuda():
    pytest.importorskip("flash_attn")
    check_backend("flash", "cuda", dtype=torch.bfloat16, tol=6e-2)


def test_flex_backend_cpu_unfused():
    """The GPU path's masking logic, checked here with the unfused CPU kernel."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_backend("flex", "cpu", tol=1e-4)
