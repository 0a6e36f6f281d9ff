"""Constrained requests on the worker (WorkerEngine): a grammar that does not compile, a
worker without a tokenizer and a recomputed output that does not fit fail that request
alone; a matcher starts after the output so far and follows every sampled token."""

import pytest

from sarathi_serve.common.grammar import GrammarCompiler
from sarathi_serve.common.sampling import Grammar, SamplingParams
from sarathi_serve.common.step import NewRequest, ScheduledChunk, StepPlan, WorkerGeometry
from sarathi_serve.worker.engine import WorkerEngine
from sarathi_serve.worker.model_runner import BatchEntry, StepOutput

EOS = 2


class Model:
    """Samples the next token of `script[request id]` (the grammar is not applied here:
    the worker's mask is the model runner's, tested with the model)."""

    def __init__(self, grammars, script):
        self.geometry = WorkerGeometry(64, 16, 256, EOS, 49152)
        self.grammars = grammars
        self.script = script

    def execute(self, batch: list[BatchEntry]) -> StepOutput:
        sampled = {}
        for entry in batch:
            seq = entry.sequence
            index = len(seq.token_ids) - seq.num_prompt_tokens
            sampled[seq.request_id] = self.script[seq.request_id][index]
        return StepOutput(sampled, {})


@pytest.fixture(scope="module")
def compiler(tokenizer):
    return GrammarCompiler(tokenizer, len(tokenizer), EOS)


def constrained(grammar):
    return SamplingParams(temperature=0.0, max_tokens=8, grammar=grammar)


def step(engine, step_id, *news):
    plan = StepPlan(
        step_id,
        new_requests=tuple(news),
        chunks=tuple(ScheduledChunk(n.request_id, len(n.token_ids), (step_id,)) for n in news),
    )
    return engine.step(plan)


def test_what_cannot_be_constrained_fails_alone(compiler, tokenizer):
    digits = Grammar("regex", "[0-9]+")
    script = {"ok": [*tokenizer.encode("12", add_special_tokens=False), EOS]} | {
        rid: [7] for rid in ("bad-grammar", "recomputed")
    }
    engine = WorkerEngine(Model(compiler, script))
    abc = tuple(tokenizer.encode("abc", add_special_tokens=False))
    result = step(
        engine,
        0,
        NewRequest("ok", (10, 11), 0, constrained(digits)),
        NewRequest("bad-grammar", (10, 11), 0, constrained(Grammar("regex", "a("))),
        NewRequest("recomputed", (10, 11, *abc), len(abc), constrained(digits)),
    )
    assert set(result.sampled) == {"ok"}
    assert str(result.failures["bad-grammar"]).startswith("grammar: Regex parsing error")
    assert "does not match the grammar" in str(result.failures["recomputed"])
    assert {e.code.name for e in result.failures.values()} == {"INVALID_ARGUMENT"}
    assert engine.sequences["ok"].matcher is not None

    no_tokenizer = WorkerEngine(Model(None, {"x": [7]}))
    result = step(no_tokenizer, 0, NewRequest("x", (10, 11), 0, constrained(digits)))
    assert "needs the model's tokenizer" in str(result.failures["x"])


def test_a_sampled_token_the_grammar_refuses_fails_the_request(compiler, tokenizer):
    """The mask makes it impossible; if a runner ever broke that, the request must end
    with an error rather than carry on outside its grammar."""
    letter = tokenizer.encode("a", add_special_tokens=False)[0]
    engine = WorkerEngine(Model(compiler, {"r": [letter]}))
    result = step(engine, 0, NewRequest("r", (10, 11), 0, constrained(Grammar("regex", "[0-9]+"))))
    assert not result.sampled
    assert "does not match the request's grammar" in str(result.failures["r"])
    assert "r" not in engine.sequences
