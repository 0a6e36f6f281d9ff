import torch

from sarathi_serve.common.sampling import SamplingParams
from sarathi_serve.worker.sampler import Sampler


def random_logits(rows, vocab=50, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = random_logits(4)
    tokens = Sampler(2, 0).sample(logits, [SamplingParams(temperature=0.0)] * 4, [0] * 4)
    assert tokens == logits.argmax(-1).tolist()


def test_seeded_rows_are_batch_invariant():
    logits = random_logits(1, seed=5)
    seeded = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=1234)
    alone = [Sampler(2, 1).sample(logits, [seeded], [i])[0] for i in range(20)]
    others = random_logits(6, seed=9)
    for position in (0, 3, 6):
        batch = torch.cat([others[:position], logits, others[position:]])
        params = [SamplingParams(temperature=1.0)] * 6
        params.insert(position, seeded)
        got = [Sampler(2, position + 7).sample(batch, params, [i] * 7)[position] for i in range(20)]
        assert got == alone
    assert len(set(alone)) > 1  # really sampling, not argmax


def test_top_k_and_top_p_restrict_the_support():
    logits = random_logits(1, seed=2)[0]
    order = logits.argsort(descending=True).tolist()
    sampler = Sampler(2, 0)
    top3 = {sampler.sample(logits[None], [SamplingParams(top_k=3)], [0])[0] for _ in range(200)}
    assert top3 <= set(order[:3]) and len(top3) > 1
    probs = logits.softmax(-1)
    nucleus = [t for t in order if probs[order[: order.index(t)]].sum() < 0.5]
    got = {sampler.sample(logits[None], [SamplingParams(top_p=0.5)], [0])[0] for _ in range(200)}
    assert got <= set(nucleus)


def test_temperature_sampling_follows_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    sampler = Sampler(2, 0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sampler.sample(logits, [SamplingParams(temperature=1.0)], [0])[0]] += 1
    assert torch.allclose(counts / 4000, logits.softmax(-1)[0], atol=0.03)


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    logits = torch.zeros(1, 10)
    logits[0, 2] = 10.0  # EOS
    logits[0, 5] = 9.0  # a stop token
    logits[0, 7] = 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=(5,))
    sampler = Sampler(2, 0)
    assert sampler.sample(logits, [params], [0]) == [7]
    assert sampler.sample(logits, [params], [1]) == [7]
    assert sampler.sample(logits, [params], [2]) == [2]
    ignoring = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert sampler.sample(logits, [ignoring], [0]) == [2]  # EOS is an ordinary token then
