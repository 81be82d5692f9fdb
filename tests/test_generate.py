"""Transformers backend and disk cache, on tiny random models (real transformers + peft)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pd.errors import ConfigError, ModelUnavailableError, PDError
from pd.generate import make_generator
from pd.generate.base import SamplingParams
from pd.generate.transformers_backend import TransformersGenerator, render_prompt

CONVS = [
    [{"role": "user", "content": "Hello there, how are you?"}],
    [{"role": "user", "content": "The New York Yankees won the game on a long Sunday afternoon in the Bronx, "
                                 "and the crowd of forty thousand stayed until the end."}],
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}],
]


@pytest.fixture(scope="module")
def gen(tiny_llama):
    return TransformersGenerator(tiny_llama.spec, progress=False, batch_size=4)


def reference_greedy(model, tok, prompt: str, steps: int) -> list[int]:
    """Greedy decoding without KV cache, padding or batching: full recompute each step."""
    ids = tok.encode(prompt, add_special_tokens=False)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + out])).logits[0, -1].double()
            out.append(int(logits.argmax()))
    return out


def test_batched_greedy_equals_single_and_unpadded_reference(gen, tiny_llama):
    # logprobs too: a random tiny model's greedy tokens barely depend on positions, its
    # log-probabilities do, so they catch wrong position ids under left padding.
    p = SamplingParams(temperature=0, max_new_tokens=12, logprobs=3)
    batched = gen.generate(CONVS, p)
    for conv, b in zip(CONVS, batched):
        single = gen.generate([conv], p)[0][0]
        assert b[0].token_ids == single.token_ids
        for x, y in zip(b[0].top_logprobs, single.top_logprobs):
            assert list(x) == list(y) and max(abs(u - v) for u, v in zip(x.values(), y.values())) < 1e-4
        ref = reference_greedy(gen.model, tiny_llama.tokenizer, gen.prompt(conv), 12)
        # The random model never ends its turn within 12 tokens, so nothing is cut early.
        assert b[0].token_ids == ref
        assert b[0].finish_reason == "length" and b[0].n_tokens == 12
    # The prompts differ in length, so the batch really was padded.
    lengths = {len(tiny_llama.tokenizer.encode(gen.prompt(c), add_special_tokens=False)) for c in CONVS}
    assert len(lengths) == len(CONVS)


def test_rows_that_stop_early_leave_the_batch_without_disturbing_the_others(tiny_llama):
    """Make one generated token a stop token so that rows end at different steps."""
    g = TransformersGenerator(tiny_llama.spec, progress=False, batch_size=4)
    refs = [reference_greedy(g.model, tiny_llama.tokenizer, g.prompt(c), 16) for c in CONVS]
    first = lambda ref, t: ref.index(t) if t in ref else len(ref)  # noqa: E731
    # A token whose first occurrence differs between rows (absent from some counts as "never").
    tok = next(t for t in sorted({t for r in refs for t in r}) if len({first(r, t) for r in refs}) >= 2
               and min(first(r, t) for r in refs) >= 1)
    g.stop_ids = [tok]
    p = SamplingParams(temperature=0, max_new_tokens=16, logprobs=2)
    batched = g.generate(CONVS, p)
    assert len({first(r, tok) for r in refs}) >= 2
    for conv, ref, b in zip(CONVS, refs, batched):
        cut = first(ref, tok)
        assert b[0].token_ids == ref[:cut]
        assert b[0].finish_reason == ("stop" if cut < len(ref) else "length")
        single = g.generate([conv], p)[0][0]
        for x, y in zip(b[0].top_logprobs, single.top_logprobs):
            assert list(x) == list(y) and max(abs(u - v) for u, v in zip(x.values(), y.values())) < 1e-4


def test_greedy_also_on_a_qwen2_model(tiny_qwen2):
    g = TransformersGenerator(tiny_qwen2.spec, progress=False, batch_size=3)
    p = SamplingParams(temperature=0, max_new_tokens=8)
    outs = g.generate(CONVS[:3], p)
    for conv, o in zip(CONVS[:3], outs):
        assert o[0].token_ids == reference_greedy(g.model, tiny_qwen2.tokenizer, g.prompt(conv), 8)[: o[0].n_tokens]


def test_seeded_sampling_is_reproducible_and_independent_of_batch(gen):
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=10, n=3, seed=7)
    a = gen.generate(CONVS, p)
    b = gen.generate(CONVS[::-1], p)[::-1]  # other order, other batch neighbours
    c = [gen.generate([conv], p)[0] for conv in CONVS]  # batch of one
    ids = lambda res: [[x.token_ids for x in r] for r in res]  # noqa: E731
    assert ids(a) == ids(b) == ids(c)
    # n samples of one conversation differ, and another seed gives other samples.
    assert len({tuple(x.token_ids) for x in a[1]}) == 3
    other = gen.generate(CONVS, SamplingParams(temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=10, n=3, seed=8))
    assert ids(other) != ids(a)


def test_top_k_one_and_tiny_top_p_are_greedy(gen):
    greedy = gen.generate(CONVS, SamplingParams(temperature=0, max_new_tokens=6))
    k1 = gen.generate(CONVS, SamplingParams(temperature=1.5, top_k=1, max_new_tokens=6, seed=3, n=2))
    p0 = gen.generate(CONVS, SamplingParams(temperature=1.5, top_p=1e-6, max_new_tokens=6, seed=4))
    for g, k, p in zip(greedy, k1, p0):
        assert k[0].token_ids == k[1].token_ids == g[0].token_ids == p[0].token_ids


def test_sampling_frequencies_follow_the_tempered_top_k_distribution(gen):
    """The first sampled token's frequencies over many seeds match softmax(logits/T) cut to top-k."""
    conv = CONVS[0]
    T, k, n = 1.5, 5, 400
    out = gen.generate([conv], SamplingParams(temperature=T, top_k=k, max_new_tokens=1, n=n, seed=11))[0]
    ids = torch.tensor([gen.tokenizer.encode(gen.prompt(conv), add_special_tokens=False)])
    with torch.no_grad():
        logits = gen.model(ids).logits[0, -1].double()
    top = torch.topk(logits, k)
    probs = torch.softmax(top.values / T, dim=0)
    counts = {int(t): 0 for t in top.indices}
    for c in out:
        assert c.token_ids[0] in counts  # never outside the top k
        counts[c.token_ids[0]] += 1
    for t, p in zip(top.indices.tolist(), probs.tolist()):
        assert abs(counts[t] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_top_logprobs_match_a_float64_forward(gen):
    conv = CONVS[1]
    out = gen.generate([conv], SamplingParams(temperature=1.0, max_new_tokens=5, seed=2, logprobs=4))[0][0]
    prompt = gen.tokenizer.encode(gen.prompt(conv), add_special_tokens=False)
    with torch.no_grad():
        logits = gen.model(torch.tensor([prompt + out.token_ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    assert len(out.top_logprobs) == 5
    for step, got in enumerate(out.top_logprobs):
        ref = torch.topk(lp[len(prompt) - 1 + step], 4)
        assert list(got) == ref.indices.tolist()
        assert max(abs(a - b) for a, b in zip(got.values(), ref.values.tolist())) < 1e-4


def test_prefill_and_system_prompt_rendering(gen, tiny_llama):
    conv = [{"role": "user", "content": "Ask me something."}, {"role": "assistant", "content": "What"}]
    text = render_prompt(tiny_llama.tokenizer, conv, system_prompt="SYS")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nWhat")
    assert "<|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>" in text
    assert render_prompt(tiny_llama.tokenizer, [{"role": "raw", "content": "plain text"}]) == "plain text"
    out = gen.generate([conv], SamplingParams(temperature=0, max_new_tokens=4))[0][0]
    plain = reference_greedy(gen.model, tiny_llama.tokenizer,
                             text.replace("<|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>", ""), 4)
    assert out.token_ids == plain  # the spec has no system prompt: none is inserted


@pytest.mark.parametrize("bad", [
    dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5), dict(max_new_tokens=0), dict(n=0),
])
def test_bad_sampling_params_are_config_errors(gen, bad):
    with pytest.raises(ConfigError, match=list(bad)[0]):
        gen.generate(CONVS[:1], SamplingParams(**bad))


def test_bad_conversations_and_backends(gen):
    with pytest.raises(ConfigError, match="allowed"):
        gen.generate([[{"role": "robot", "content": "x"}]], SamplingParams())
    with pytest.raises(ConfigError, match="only message"):
        gen.generate([[{"role": "raw", "content": "x"}, {"role": "user", "content": "y"}]], SamplingParams())
    with pytest.raises(ConfigError, match="transformers, vllm, openai"):
        make_generator("tiny-llama", backend="llamacpp")
    with pytest.raises(ConfigError, match="unknown model"):
        make_generator("no-such-model")


def test_vllm_missing_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(ModelUnavailableError, match=r"pip install 'pd-harness\[vllm\]'"):
        make_generator("tiny-llama", backend="vllm")


def _save_adapter(tiny_llama, folder, scale: float) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama.model(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(scale)
    model.save_pretrained(folder)


def test_cache_makes_no_model_calls_on_rerun_and_misses_on_new_adapter(tiny_llama, tmp_path):
    adapter, cache = tmp_path / "adapter", tmp_path / "cache"
    _save_adapter(tiny_llama, adapter, 0.0)
    p = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=6, n=2, seed=5)

    first = make_generator("tiny-llama", adapter=adapter, cache_dir=cache, progress=False)
    a = first.generate(CONVS, p)
    assert first.inner.conversations_generated == len(CONVS) and first.inner.calls > 0
    assert len(list(cache.rglob("*.json"))) == len(CONVS)

    second = make_generator("tiny-llama", adapter=adapter, cache_dir=cache, progress=False)  # as a new process would
    b = second.generate(CONVS + CONVS[:1], p)  # a duplicate inside one request is served once
    assert second.inner.calls == 0 and second.inner.conversations_generated == 0
    assert second.hits == len(CONVS) + 1
    assert [[x.text for x in r] for r in b[:-1]] == [[x.text for x in r] for r in a]

    # Other params miss.
    second.generate(CONVS[:1], SamplingParams(temperature=1.0, top_k=50, max_new_tokens=6, n=2, seed=6))
    assert second.inner.conversations_generated == 1

    # Retrained adapter: new weights, new hash, every conversation is generated again.
    _save_adapter(tiny_llama, adapter, 0.05)
    third = make_generator("tiny-llama", adapter=adapter, cache_dir=cache, progress=False)
    assert third.name != first.name
    c = third.generate(CONVS, p)
    assert third.inner.conversations_generated == len(CONVS) and third.misses == len(CONVS)
    assert [[x.token_ids for x in r] for r in c] != [[x.token_ids for x in r] for r in a]  # the adapter acts


def test_cache_roundtrips_logprobs_and_recovers_from_a_corrupt_entry(gen, tmp_path):
    from pd.generate.cache import CachedGenerator

    cached = CachedGenerator(gen, tmp_path)
    p = SamplingParams(temperature=0, max_new_tokens=3, logprobs=2)
    a = cached.generate(CONVS[:2], p)
    key = cached.key(CONVS[0], p)
    cached.path(key).write_text("{ truncated")
    before = gen.conversations_generated
    b = CachedGenerator(gen, tmp_path).generate(CONVS[:2], p)
    assert gen.conversations_generated == before + 1
    assert a[1][0].top_logprobs == b[1][0].top_logprobs and all(isinstance(k, int) for k in b[1][0].top_logprobs[0])
    assert a[0][0].token_ids == b[0][0].token_ids


def test_adapter_folder_must_exist(tmp_path):
    with pytest.raises(PDError, match="adapter_config.json"):
        make_generator("tiny-llama", adapter=tmp_path / "missing", progress=False)


_WORKER = """
import json, sys
from pd.generate import make_generator
from pd.generate.base import SamplingParams
convs = json.loads(sys.argv[2])
g = make_generator("tiny-llama", cache_dir=sys.argv[1], progress=False)
out = g.generate(convs, SamplingParams(temperature=1.0, max_new_tokens=5, seed=3))
print(json.dumps([[c.token_ids for c in r] for r in out]))
"""


def test_two_processes_sharing_a_cache_dir(tmp_path):
    """Both write the same entries at once: each gets the same samples, every entry stays valid JSON."""
    import json
    import os
    import subprocess
    import sys

    convs = [[{"role": "user", "content": f"Question number {i}?"}] for i in range(6)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), json.dumps(convs)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    a, b = (json.loads(o[0].strip().splitlines()[-1]) for o in outs)
    assert a == b
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == len(convs) and not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    for f in files:
        json.loads(f.read_text())


def test_merged_adapter_generates_as_the_unmerged_lora_does(tiny_llama, tmp_path):
    """Evaluation merges the adapter into the weights (PEFT merge_and_unload): the same greedy text
    and log-probabilities as the separate LoRA layers, in float32, and its own cache identity."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = get_peft_model(tiny_llama.model(), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    lora.save_pretrained(tmp_path / "adapter")
    p = SamplingParams(temperature=0, max_new_tokens=8, logprobs=3)
    merged = make_generator("tiny-llama", adapter=tmp_path / "adapter", progress=False)
    separate = make_generator("tiny-llama", adapter=tmp_path / "adapter", progress=False, merge_adapter=False)
    base = make_generator("tiny-llama", progress=False)
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    assert any("lora_" in n for n, _ in separate.model.named_parameters())
    assert merged.name.endswith("@merged") and merged.name != separate.name

    a, b, c = merged.generate(CONVS, p), separate.generate(CONVS, p), base.generate(CONVS, p)
    assert [r[0].token_ids for r in a] == [r[0].token_ids for r in b]
    assert [r[0].token_ids for r in a] != [r[0].token_ids for r in c]  # the adapter acts
    for ra, rb in zip(a, b):
        for ta, tb in zip(ra[0].top_logprobs, rb[0].top_logprobs):
            assert ta.keys() == tb.keys()
            assert max(abs(ta[k] - tb[k]) for k in ta) < 1e-5


def test_batched_inverse_transform_draws_follow_the_full_distribution():
    """Every row's draw (one uniform from its own generator, one batched searchsorted) follows softmax(logits/T)
    over the whole vocabulary: a chi-square test against the exact probabilities (scipy), tokens of expected
    count below 5 pooled."""
    from scipy.stats import chisquare

    from pd.generate.transformers_backend import TransformersGenerator

    vocab, rows, T = 300, 30000, 1.3
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    gens = [torch.Generator().manual_seed(1000 + r) for r in range(rows)]
    draws = TransformersGenerator._choose(logits.float().expand(rows, vocab).contiguous(), gens,
                                          SamplingParams(temperature=T, max_new_tokens=1))
    assert draws.shape == (rows,) and int(draws.min()) >= 0 and int(draws.max()) < vocab
    expected = torch.softmax(logits / T, dim=0) * rows
    counts = torch.bincount(draws, minlength=vocab).double()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    assert chisquare(obs.numpy(), exp.numpy()).pvalue > 1e-3
    # the same generators give the same draws: a row's draw depends on its own generator only
    again = TransformersGenerator._choose(logits.float().expand(3, vocab).contiguous(),
                                          [torch.Generator().manual_seed(1000 + r) for r in range(3)],
                                          SamplingParams(temperature=T, max_new_tokens=1))
    assert again.tolist() == draws[:3].tolist()
