"""A short prompt-distillation run on SmolLM2-135M-Instruct lowers the held-out KL(teacher || student).

One SQuADShifts NYT passage, eight hand-written training question-answer pairs, four
held-out pairs about the same passage that training never sees. The held-out KL is the
information the passage adds about those answers; PD should move part of it into the
adapter. The before value is also checked against a float64 reference written here.
"""

import time

import pytest
import torch
import torch.nn.functional as F

from pd.chat import prompt_text
from pd.data import load_squadshifts
from pd.train.heldout import heldout_kl, heldout_kl_per_example
from pd.train.loop import train
from pd.train.settings import TrainConfig

DOC = "nyt-p0002"  # Mattingly as Yankees hitting coach (2004, 242 homers), now Dodgers manager; Torre, Girardi
TRAIN = [
    ("What was Mattingly's job with the Yankees in 2004?", "In 2004 Mattingly was the Yankees' hitting coach."),
    ("How many home runs did the Yankees hit in 2004?", "The 2004 Yankees hit 242 home runs."),
    ("Which team does Mattingly manage now?", "Mattingly is now the manager of the Dodgers."),
    ("Who stepped down as Yankees manager before Girardi?", "Joe Torre stepped down as manager of the Yankees."),
    ("Who was picked to replace Joe Torre?", "Joe Girardi replaced Joe Torre as manager."),
    ("What record did the 2004 Yankees set?", "They hit 242 homers, the most of any Yankee team in history."),
    ("What did Mattingly do after retiring as a player?", "He became a successful coach for the Yankees."),
    ("Whom did the writer favour to replace Joe Torre?", "The writer favoured Mattingly over Joe Girardi."),
]
HELD_OUT = [
    ("What position did Mattingly hold on the Yankees' staff in 2004?", "He was the hitting coach."),
    ("What team is Mattingly the manager of?", "He manages the Dodgers."),
    ("Who became Yankees manager after Joe Torre?", "Joe Girardi became the manager."),
    ("How many homers did the Yankees belt in 2004?", "They belted 242 homers."),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_heldout_kl(model, tok, spec, passage, pairs, temperature=2.0) -> float:
    """KL(teacher with passage || model without) per answer token, float64, full logits, one pair at a time."""
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    vals = []
    with torch.no_grad():
        for q, a in pairs:
            ans = tok.encode(a, add_special_tokens=False) + [eot]
            lp = {}
            for side, user in (("t", passage + "\n\n---\n\n" + q), ("s", q)):
                prompt = tok.encode(prompt_text(tok, user, spec), add_special_tokens=False)
                ids = torch.tensor([prompt + ans])
                logits = model(input_ids=ids).logits[0].double()
                lp[side] = F.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(ans)] / temperature, -1)
            vals.append((lp["t"].exp() * (lp["t"] - lp["s"])).sum(-1).mean())
    return float(torch.stack(vals).mean())


@pytest.mark.slow
def test_pd_lowers_heldout_kl_on_smollm2(smollm2, tmp_path, capsys):
    t0 = time.time()
    ds = load_squadshifts("nyt").select_passages(3)
    passage = ds.documents[DOC].text
    rows = [{"id": f"t{i}", "doc_id": DOC, "question": q, "answer": a} for i, (q, a) in enumerate(TRAIN)]
    held = [{"id": f"h{i}", "passage": passage, "question": q, "answer": a} for i, (q, a) in enumerate(HELD_OUT)]

    base = smollm2.model()
    before = heldout_kl(base, smollm2.tokenizer, smollm2.spec, held)
    reference = _reference_heldout_kl(base, smollm2.tokenizer, smollm2.spec, passage, HELD_OUT)
    assert before == pytest.approx(reference, rel=1e-4)
    del base

    cfg = TrainConfig(method="pd", rank=16, lr=1e-3, epochs=3, warmup_epochs=0, batch_size=4, progress=False)
    res = train(cfg, smollm2.spec, tmp_path / "adapter", rows=rows, dataset=ds, device="cpu")
    after = heldout_kl(res.model, smollm2.tokenizer, smollm2.spec, held)
    with capsys.disabled():
        print(f"\nSmolLM2 PD, held-out KL(teacher || student) at T=2: before {before:.4f}, after {after:.4f} "
              f"({res.steps} steps, train KL {res.meta['final_step']['kl']:.4f}, {time.time() - t0:.0f} s)")
    assert after < 0.8 * before
    per = heldout_kl_per_example(res.model, smollm2.tokenizer, smollm2.spec, held)
    assert sorted(per) == ["h0", "h1", "h2", "h3"]
