"""Scoring continuations inside the generation's prefill: the same numbers as a pass of their own,
the same completions as plain generation (the KV cache is left as it was), cached or not."""

from __future__ import annotations

import pytest
import torch

from pd.generate.base import SamplingParams
from pd.generate.cache import CachedGenerator
from pd.generate.loglik import answer_logprobs
from pd.generate.transformers_backend import TransformersGenerator

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = [
    "Where is the bakery that opened last spring on the corner of the avenue?",
    "Who?",
    "How much did the bridge cost, all told, after four years of construction and two delays?",
    "When did it open?",
    "What colour is the new ferry?",
]
ALIASES = [["Queens", "in Queens, New York"], ["two Dutch artists"], ["80 million", "$80m", "eighty"], [], ["red"]]


def _convs():
    return [[{"role": "user", "content": q}] for q in QUESTIONS]


def _conts(tok):
    return [[tok.encode(a, add_special_tokens=False) for a in aliases] for aliases in ALIASES]


def _direct(model, tok, conv_prompt: str, cont: list[int]) -> torch.Tensor:
    """Per-token log p(cont | prompt) from one unpadded float64 log-softmax."""
    p = tok.encode(conv_prompt, add_special_tokens=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + cont])).logits[0].double(), -1)
    return torch.stack([logp[len(p) - 1 + j, t] for j, t in enumerate(cont)]).float()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_new_tokens=6),
                                    SamplingParams(temperature=0.8, max_new_tokens=6, seed=3, n=2)])
def test_prefill_scores_equal_a_separate_pass_and_leave_generation_unchanged(request, name, params):
    loaded = request.getfixturevalue(name)
    gen = TransformersGenerator(loaded.spec, progress=False, batch_size=2)  # padding across rows of a batch
    tok, convs, conts = gen.tokenizer, _convs(), _conts(gen.tokenizer)
    plain = gen.generate(convs, params)
    outs, scores = gen.generate_scored(convs, params, conts)
    assert [[c.token_ids for c in cs] for cs in outs] == [[c.token_ids for c in cs] for cs in plain]
    prompts = [tok.encode(gen.prompt(c), add_special_tokens=False) for c in convs]
    flat = [(i, c) for i, cs in enumerate(conts) for c in cs]
    separate = answer_logprobs(gen.model, [prompts[i] for i, _ in flat], [c for _, c in flat], gen.pad_id)
    got = [lp for cs in scores for lp in cs]
    assert [len(cs) for cs in scores] == [len(cs) for cs in conts]
    for (i, c), a, b in zip(flat, got, separate):
        direct = _direct(gen.model, tok, gen.prompt(convs[i]), c)
        assert a.shape == (len(c),) and a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        torch.testing.assert_close(a, direct, atol=1e-4, rtol=0)


def test_the_cache_scores_its_hits_in_a_pass_of_their_own(tiny_llama, tmp_path):
    gen = TransformersGenerator(tiny_llama.spec, progress=False, batch_size=3)
    cached = CachedGenerator(gen, tmp_path)
    params = SamplingParams(temperature=0, max_new_tokens=5)
    convs, conts = _convs(), _conts(gen.tokenizer)
    first, s1 = cached.generate_scored(convs, params, conts)
    generated = gen.conversations_generated
    again, s2 = cached.generate_scored(convs + convs[:1], params, conts + conts[:1])
    assert gen.conversations_generated == generated and cached.hits == len(convs) + 1  # no generation
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first + first[:1]]
    for a, b in zip([lp for cs in s1 + s1[:1] for lp in cs], [lp for cs in s2 for lp in cs]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert cached.generate(convs, params) == again[:len(convs)]


def test_bad_continuations_are_refused(tiny_generator):
    with pytest.raises(ValueError, match="continuations"):
        tiny_generator.generate_scored(_convs()[:2], SamplingParams(max_new_tokens=2), [[[1]]])
    with pytest.raises(ValueError, match="non-empty"):
        tiny_generator.generate_scored(_convs()[:1], SamplingParams(max_new_tokens=2), [[[]]])


@pytest.mark.slow
def test_smollm2_rag_prompt_scores_match_a_separate_pass(smollm2):
    """A real instruct model, a long retrieval-style prompt: prefill scores equal the separate pass."""
    gen = TransformersGenerator(smollm2.spec, progress=False, batch_size=4)
    passage = ("The Harlow Street bakery opened in Queens in May 2019. Its owners, two Dutch artists, "
               "painted the storefront red. ") * 6
    convs = [[{"role": "user", "content": f"{passage}\n\nQuestion: {q}"}] for q in QUESTIONS[:4]]
    conts = _conts(gen.tokenizer)[:4]
    params = SamplingParams(temperature=0, max_new_tokens=8)
    outs, scores = gen.generate_scored(convs, params, conts)
    assert [[c.text for c in cs] for cs in outs] == [[c.text for c in cs] for cs in gen.generate(convs, params)]
    prompts = [gen.tokenizer.encode(gen.prompt(c), add_special_tokens=False) for c in convs]
    flat = [(i, c) for i, cs in enumerate(conts) for c in cs]
    separate = answer_logprobs(gen.model, [prompts[i] for i, _ in flat], [c for _, c in flat], gen.pad_id)
    for a, b in zip([lp for cs in scores for lp in cs], separate):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    ((closed,),) = gen.score(_convs()[:1], [conts[0][:1]])
    assert scores[0][0].sum() > closed.sum() + 1  # "Queens" is in the passage: more likely with it than without
