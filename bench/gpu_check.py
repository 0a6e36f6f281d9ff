"""GPU check: a Llama-3-8B-shaped model with random bf16 weights, against its floors.

Run on a CUDA machine from the repository root (no network needed):

    pip install --no-deps --no-build-isolation -e .
    python -m sarathi_serve.bench.gpu_check --out results/   # about 3 minutes on an H100

It measures, for each attention backend available (flex, torch; flash when installed):
  - a decode step at batch 32, context 2048, vs its floor: (weight bytes + KV bytes read)
    / measured device copy bandwidth;
  - a 512-token prefill chunk vs its floor: FLOPs / measured bf16 matmul rate;
and the correctness of the paged backends against a dense reference, in bf16.
`--shape tiny --device cpu` runs the same code on a toy model (a smoke test).
Prints a table and writes gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.worker.model_runner import BatchEntry, ModelRunner, Sequence

SHAPES: dict[str, dict[str, Any]] = {
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=4096,
    ),
}
GREEDY = SamplingParams(temperature=0.0, max_tokens=1 << 20)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, repeats: int = 10) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, num_bytes: int = 2 << 30) -> float:
    """Bytes/s moved by a device-to-device copy (read + write)."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * num_bytes / (ms / 1e3)


def matmul_rate(device: torch.device, n: int = 8192) -> float:
    """bf16 FLOP/s of a large square matmul."""
    if device.type != "cuda":
        n = 1024
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    ms = median_ms(lambda: a @ b, device)
    return 2 * n**3 / (ms / 1e3)


def random_model(shape: str, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[shape])
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.bfloat16().eval()


def sequences(runner: ModelRunner, num: int, context: int, computed: int) -> list[Sequence]:
    bs = runner.block_size
    per_seq = -(-(context + 1) // bs)
    vocab = runner.model.config.vocab_size
    out = []
    for i in range(num):
        blocks = list(range(i * per_seq, (i + 1) * per_seq))
        tokens = torch.randint(0, vocab, (context,)).tolist()
        out.append(Sequence(f"s{i}", tokens, context, GREEDY, blocks, computed))
    return out


def run_backend(
    model, backend: str, args, device: torch.device, bandwidth: float, flops: float
) -> dict:
    batch, context, chunk = args.batch, args.context, args.chunk
    bs = 16 if backend != "flash" else 256
    kv_tokens = batch * (context + bs) + chunk + 2 * bs
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2
    runner = ModelRunner(
        None,
        model=model,
        kv_cache_bytes=kv_tokens * kv_bytes_per_token + (64 << 20),
        block_size=bs,
        dtype=torch.bfloat16,
        device=str(device),
        attention_backend=backend,
    )
    decodes = [BatchEntry(s, 1) for s in sequences(runner, batch, context, context - 1)]
    decode_ms = median_ms(lambda: runner.execute(decodes), device)
    prefill_seq = sequences(runner, batch + 1, chunk, 0)[-1]
    prefill_ms = median_ms(lambda: runner.execute([BatchEntry(prefill_seq, chunk)]), device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_read = batch * context * kv_bytes_per_token
    decode_floor = (weight_bytes + kv_read) / bandwidth * 1e3
    params = (
        sum(p.numel() for p in model.parameters()) - cfg.vocab_size * cfg.hidden_size
    )  # no embedding
    attn_flops = 4 * cfg.num_hidden_layers * cfg.hidden_size * chunk * chunk / 2
    prefill_floor = (2 * params * chunk + attn_flops) / flops * 1e3
    return dict(
        backend=backend,
        block_size=bs,
        decode_ms=decode_ms,
        decode_floor_ms=decode_floor,
        decode_ratio=decode_ms / decode_floor,
        prefill_ms=prefill_ms,
        prefill_floor_ms=prefill_floor,
        prefill_ratio=prefill_ms / prefill_floor,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--backends", default="flex,torch")
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    bandwidth, flops = copy_bandwidth(device), matmul_rate(device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"{card}: copy {bandwidth / 1e9:.0f} GB/s, bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    model = random_model(args.shape, device)
    backends = [b for b in args.backends.split(",") if b]
    rows = []
    for backend in backends:
        rows.append(run_backend(model, backend, args, device, bandwidth, flops))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous backend's KV cache
    print(
        f"{'backend':>8} {'decode ms':>10} {'floor':>7} {'ratio':>6} "
        f"{'prefill ms':>11} {'floor':>7} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['backend']:>8} {r['decode_ms']:>10.2f} {r['decode_floor_ms']:>7.2f} "
            f"{r['decode_ratio']:>6.2f} "
            f"{r['prefill_ms']:>11.2f} {r['prefill_floor_ms']:>7.2f} {r['prefill_ratio']:>6.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(
        json.dumps(
            {
                "card": card,
                "torch": torch.__version__,
                "shape": args.shape,
                "batch": args.batch,
                "context": args.context,
                "chunk": args.chunk,
                "copy_bandwidth_Bps": bandwidth,
                "bf16_matmul_flops": flops,
                "results": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
