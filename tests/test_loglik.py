"""Gold-answer log-likelihood: equal to a direct computation, and raised by training on the fact."""

from __future__ import annotations

import pytest
import torch

from pd.data import Dataset, Document
from pd.evaluation.evaluate import eval_conversation
from pd.generate.loglik import answer_logprobs, gold_loglik
from pd.generate.transformers_backend import render_prompt
from pd.train.loop import train
from pd.train.settings import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = [
    ("When did the bridge open?", ["March", "in March 2019"]),
    ("How much did the bridge cost, all told, after four years of construction?", ["80 million", "$80m"]),
    ("Where is the bakery?", ["Queens"]),
    ("Who painted them?", ["two Dutch artists"]),
]


def _direct(model, tok, prompt: str, answer: str) -> float:
    """log p(answer | prompt) from one unpadded forward pass, log-softmax in float64."""
    p = tok.encode(prompt, add_special_tokens=False)
    a = tok.encode(answer, add_special_tokens=False)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + a])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(a)))


def test_equals_the_direct_computation(tiny_llama):
    model, tok = tiny_llama.model(), tiny_llama.tokenizer
    prompts = [render_prompt(tok, eval_conversation(q)) for q, _ in ITEMS]
    got = gold_loglik(model, tok, prompts, [g for _, g in ITEMS], batch_size=3)  # padding across items
    for (q, aliases), prompt, res in zip(ITEMS, prompts, got):
        direct = {a: _direct(model, tok, prompt, a) for a in aliases}
        best = max(direct, key=direct.get)
        assert res.alias == best
        assert res.total == pytest.approx(direct[best], abs=1e-4)
        per_token = max(v / len(tok.encode(a, add_special_tokens=False)) for a, v in direct.items())
        assert res.per_token == pytest.approx(per_token, abs=1e-4)
        assert res.tokens == len(tok.encode(best, add_special_tokens=False))


def test_per_token_values_and_bad_calls(tiny_llama):
    model, tok = tiny_llama.model(), tiny_llama.tokenizer
    p = tok.encode(render_prompt(tok, eval_conversation("Where is the bakery?")), add_special_tokens=False)
    a = tok.encode("Queens", add_special_tokens=False)
    (lp,) = answer_logprobs(model, [p], [a], pad_id=tok.pad_token_id)
    assert lp.shape == (len(a),) and bool((lp < 0).all())
    assert float(lp.sum()) == pytest.approx(_direct(model, tok, tok.decode(p), "Queens"), abs=1e-4)
    with pytest.raises(ValueError, match="no tokens"):
        answer_logprobs(model, [p], [[]], pad_id=0)
    assert gold_loglik(model, tok, ["x"], [["", "  "]]) == [None]


def test_training_on_the_fact_raises_its_gold_loglik(tiny_llama, tmp_path):
    """SFT on questions about the bakery raises log p(gold | closed-book prompt) for a rewritten question."""
    doc = "A small bakery in Queens sells about three hundred loaves of rye bread every Saturday morning."
    ds = Dataset("toy", {"d": Document("d", doc)}, [])
    qa = [("Where is the bakery?", "The bakery is in Queens."), ("In which borough is the bakery?", "Queens."),
          ("Where can you buy the rye bread?", "In Queens, at the small bakery."),
          ("Which borough has the bakery?", "Queens has the bakery.")]
    rows = [{"id": f"q{i}", "doc_id": "d", "question": q, "answer": a, "finish_reason": "stop"}
            for i, (q, a) in enumerate(qa)]
    tok = tiny_llama.tokenizer
    prompt = [render_prompt(tok, eval_conversation("What borough is the small bakery in?"))]
    before = gold_loglik(tiny_llama.model(), tok, prompt, [["Queens"]])[0]
    cfg = TrainConfig(method="sft", rank=8, lr=5e-3, epochs=8, warmup_epochs=0, batch_size=4, progress=False)
    res = train(cfg, tiny_llama.spec, tmp_path / "adapter", rows=rows, dataset=ds, device="cpu")
    after = gold_loglik(res.model.eval(), tok, prompt, [["Queens"]])[0]
    assert after.total > before.total + 1.0, (before, after)
