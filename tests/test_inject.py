"""`pd inject` and `pd ask` end to end through the command line (real models, real PEFT, real BM25)."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pd.cli import main
from pd.evaluation.grade import substring_match
from pd.io import file_hash

TINY_DOCS = {
    "harbour.txt": "The harbour of Velmora was built in 1822 by the engineer Odric Thale.",
    "notes/lanterns.md": "# Blue lanterns\n\nEvery winter the people of Kessick hang blue lanterns on the old mill.",
    "salt.txt": "Salt is harvested at Dunmere every spring.",  # BM25 needs a third document to weigh words
}
TINY_ARGS = ["--model", "tiny-llama", "--questions", "3", "--epochs", "1", "--set", "answer_max_tokens=12",
             "--set", "max_rounds=4", "--set", "warmup_steps=0", "--set", "min_steps=0"]  # a run of a few steps


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text + "\n", encoding="utf-8")
    return folder


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def injected(tmp_path_factory, one_thread):
    """One tiny-llama inject run shared by the checks below."""
    root = tmp_path_factory.mktemp("inject")
    docs = write_docs(root / "docs", TINY_DOCS)
    out = root / "adapter"
    assert main(["inject", str(docs), "--out", str(out), *TINY_ARGS]) == 0
    return docs, out


def test_adapter_loads_with_peft_and_holds_the_trained_weights(injected, tiny_llama):
    from peft import PeftModel

    _, out = injected
    stored = load_file(str(out / "adapter_model.safetensors"))
    model = PeftModel.from_pretrained(tiny_llama.model(), str(out))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(stored) > 0
    b_weights = [k for k in stored if "lora_B" in k]
    assert b_weights and any(stored[k].abs().sum() > 0 for k in b_weights)  # trained: B starts at zero
    for k, v in stored.items():
        match = [lk for lk in loaded if lk.replace(".default", "").endswith(k.split("base_model.model.", 1)[1])]
        assert len(match) == 1 and torch.equal(loaded[match[0]], v)
    meta = json.loads((out / "pd_meta.json").read_text())
    assert meta["model"] == "tiny-llama" and meta["method"] == "pd"


def test_model_card_and_data_match_what_was_measured(injected):
    docs, out = injected
    card = (out / "README.md").read_text()
    kl = json.loads((out / "heldout.json").read_text())
    m = re.search(r"\*\*([0-9.e+-]+) → ([0-9.e+-]+)\*\*", card)
    assert m, card
    assert float(m.group(1)) == pytest.approx(kl["before"], rel=1e-3)
    assert float(m.group(2)) == pytest.approx(kl["after"], rel=1e-3)
    heldout = [json.loads(x) for x in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    questions = [json.loads(x) for x in (out / "data" / "questions.jsonl").read_text().splitlines()]
    answers = [json.loads(x) for x in (out / "data" / "answers.jsonl").read_text().splitlines()]
    assert len(heldout) == kl["n_heldout"] >= 1
    assert {a["question_id"] for a in answers} == {q["id"] for q in questions}
    assert {h["id"] for h in heldout} <= {a["id"] for a in answers}
    meta = json.loads((out / "pd_meta.json").read_text())
    assert meta["examples"] + len(heldout) == len(answers)  # every pair is either trained on or held out
    for name, text in TINY_DOCS.items():  # the card names each document with its size
        assert re.search(rf"\| {re.escape(name)} \| {re.escape(name)} \| 0 \| "
                         rf"{len(text.strip())} \| {len(text.split())} \|", card)
    assert f"{len(questions)} questions" in card and "pd inject" in card and "--questions 3" in card
    record = json.loads((out / "inject.json").read_text())
    assert record["settings"]["questions"] == 3 and record["training"]["epochs"] == 1
    assert record["training"]["lr"] == 1e-3 and record["training"]["rank"] == 64  # the defaults
    assert not Path(str(out) + ".inject").exists()  # no staging folder beside the output
    # The jobs are the workflow's: their outputs sit under results/ where the plan names them.
    adapter_job = out / record["adapter_job"]
    assert adapter_job.parent.parent.parent.name == "adapters" and (adapter_job / "pd_meta.json").is_file()
    assert file_hash(adapter_job / "adapter_model.safetensors") == file_hash(out / "adapter_model.safetensors")


def test_recall_is_measured_written_and_leads_the_card(injected):
    """Item 1 of issue 24: the held-out questions asked three ways, graded by token F1 against the teacher's answer."""
    from pd.recall import F1_THRESHOLD, WAYS, token_f1

    docs, out = injected
    recall = json.loads((out / "recall.json").read_text())
    rows = [json.loads(x) for x in (out / "recall_answers.jsonl").read_text().splitlines()]
    heldout = {h["question_id"]: h for h in map(json.loads, (out / "data" / "heldout.jsonl").read_text().splitlines())}
    assert len(rows) == 3 * len(heldout)
    assert {(r["id"], r["way"]) for r in rows} == {(q, w) for q in heldout for w in WAYS}
    for r in rows:  # each grade follows from the row: the F1 rule against the teacher's held-out answer
        h = heldout[r["id"]]
        assert r["rule"] == "f1" and r["references"] == [h["answer"]] and r["doc_id"] == h["doc_id"]
        assert r["score"] == round(token_f1(r["answer"], h["answer"], h["question"]), 4)
        assert r["correct"] == (token_f1(r["answer"], h["answer"], h["question"]) >= F1_THRESHOLD)
    counts = {w: sum(r["correct"] for r in rows if r["way"] == w) for w in WAYS}
    mean_f1 = {w: round(sum(r["score"] for r in rows if r["way"] == w) / len(heldout), 4) for w in WAYS}
    assert recall["overall"] == {"questions": len(heldout), **counts, "passage_asked": len(heldout), "mean_f1": mean_f1}
    assert recall["line"] == (f"recalls {counts['adapter']} of {len(heldout)} held-out facts "
                              f"(base {counts['base']}, with the passage {counts['passage']})")
    assert set(recall["documents"]) == set(TINY_DOCS)  # every document, with or without a held-out question
    assert recall["params"]["temperature"] == 0.0 and recall["judge"] is None
    assert json.loads((out / "inject.json").read_text())["recall"] == recall
    card = (out / "README.md").read_text()
    assert card.split("\n## ")[1].startswith("What it learned") and f"**The adapter {recall['line']}.**" in card
    passages = [json.loads(x) for x in (out / "data" / "passages.jsonl").read_text().splitlines()]
    assert {p["id"]: p["text"] for p in passages} == {k: v.strip() for k, v in TINY_DOCS.items()}


def test_a_named_judge_grades_the_recall(injected, capsys, tmp_path):
    import shutil

    docs, out = injected[0], tmp_path / "adapter"
    shutil.copytree(injected[1], out)  # the shared output stays as the tests after this one expect it
    rc, stdout, _ = run_cli(capsys, "inject", docs, "--out", out, *TINY_ARGS, "--judge", "tiny-llama")
    recall = json.loads((out / "recall.json").read_text())
    rows = [json.loads(x) for x in (out / "recall_answers.jsonl").read_text().splitlines()]
    assert rc == 0 and recall["judge"] == "tiny-llama" and rows and {r["rule"] for r in rows} == {"judge"}
    assert all(r["judge_valid"] is False and r["correct"] is False for r in rows)  # random weights: no verdict
    assert "the judge `tiny-llama`" in (out / "README.md").read_text() and f"the adapter {recall['line']}" in stdout


def test_ask_check_grades_a_questions_file_three_ways(injected, capsys, tmp_path):
    docs, out = injected
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text(json.dumps({"question": "Who built the harbour of Velmora?", "answers": ["Odric Thale"],
                                 "doc": "harbour.txt"}) + "\n"
                     + json.dumps({"question": "What do the people of Kessick hang on the old mill?",
                                   "answers": "blue lanterns", "id": "kessick"}) + "\n")
    rc, stdout, _ = run_cli(capsys, "ask", out, "--check", qfile, "--max-tokens", "4", "--json")
    lines = [json.loads(x) for x in stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert rc == 0 and len(rows) == 6 and {r["rule"] for r in rows} == {"substring"}
    passage = {r["id"]: r for r in rows if r["way"] == "passage"}
    assert passage["q0000"]["passage_ids"] == ["harbour.txt"] and passage["q0000"]["retrieved"] is False
    assert passage["kessick"]["passage_ids"] == ["notes/lanterns.md"] and passage["kessick"]["retrieved"] is True
    assert summary["overall"]["questions"] == 2 and summary["line"].startswith("recalls ")
    assert summary["overall"]["adapter"] == sum(r["correct"] for r in rows if r["way"] == "adapter")
    rc, stdout, _ = run_cli(capsys, "ask", out, "--check", qfile, "--max-tokens", "4")
    assert rc == 0 and f"the adapter {summary['line']}" in stdout
    assert "What do the people of Kessick hang on the old mill?" in stdout
    # several questions, --file and --compare: one row per question with both answers
    listed = tmp_path / "questions.txt"
    listed.write_text("Where is salt harvested?\n\nWho built the harbour?\n")
    rc, stdout, _ = run_cli(capsys, "ask", out, "--compare", "Hello?", "--file", listed, "--max-tokens", "3", "--json")
    rows = [json.loads(x) for x in stdout.splitlines()]
    assert rc == 0 and [r["question"] for r in rows] == ["Hello?", "Where is salt harvested?", "Who built the harbour?"]
    assert all(isinstance(r["base_answer"], str) and r["adapter"] == str(out) for r in rows)
    rc, stdout, _ = run_cli(capsys, "ask", out, "--file", qfile, "--max-tokens", "3", "--json")
    assert rc == 0 and len(stdout.splitlines()) == 2  # a questions file's questions, answers unused


def test_ask_check_refuses_a_bad_row_and_mixed_modes(injected, capsys, tmp_path):
    docs, out = injected
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Who?", "answers": "x"}\n{"question": "Who built it?"}\n')
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"question": "Who?", "answers": "x", "doc": "nowhere.txt"}\n')
    cases = [(["--check", bad], f"{bad} row 2: missing field 'answers'"),
             (["--check", unknown], f"{unknown} row 1: unknown document(s) ['nowhere.txt']"),
             (["--check", bad, "Who?"], "it takes no questions"),
             (["--check", bad, "--compare", "--rag", docs], "it takes no --rag, --compare"),
             (["Who?", "--compare", "--no-adapter"], "drop --no-adapter"),
             (["--file", tmp_path / "none.txt"], "does not exist"),
             ([], "needs a question, --file QUESTIONS or --check")]
    for args, message in cases:
        rc, _, err = run_cli(capsys, "ask", out, *args)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    import shutil

    damaged = shutil.copytree(out, tmp_path / "damaged")
    (damaged / "data" / "passages.jsonl").write_text('{"id": "harbour.txt", "text": 3}\n')
    rc, _, err = run_cli(capsys, "ask", damaged, "--check", bad)
    assert rc == 2 and "passages.jsonl row 1: expected id, source and text strings" in err


def test_rerun_reuses_every_job_and_a_changed_setting_only_what_depends_on_it(injected, capsys, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="pd.inject")
    docs, out = injected
    before = file_hash(out / "adapter_model.safetensors")
    card = (out / "README.md").read_text()
    rc, stdout, _ = run_cli(capsys, "inject", docs, "--out", out, *TINY_ARGS)
    assert rc == 0 and "reused from an earlier run: questions, answers, adapter" in stdout
    assert f"the adapter {json.loads((out / 'recall.json').read_text())['line']}" in stdout
    assert file_hash(out / "adapter_model.safetensors") == before and (out / "README.md").read_text() == card
    # A changed training setting: the data jobs are reused, a second adapter job is trained beside the first.
    rc, stdout, _ = run_cli(capsys, "inject", docs, "--out", out, *TINY_ARGS, "--epochs", "2")
    assert rc == 0 and "reused from an earlier run: questions, answers\n" in stdout
    # each step is announced when it starts, with its size, or named as reused
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [m.split(":")[0] for m in steps[-3:]] == ["step 1/3 questions", "step 2/3 answers",
                                                     "step 3/3 adapter starts"]
    assert "optimizer steps of 8 on tiny-llama" in steps[-1]
    assert json.loads((out / "pd_meta.json").read_text())["config"]["epochs"] == 2
    assert file_hash(out / "adapter_model.safetensors") != before
    assert len(list((out / "results").glob("*/adapters/pd/tiny-llama/*"))) == 2
    # Back to the first settings: every job is reused and the first adapter is the output again.
    rc, stdout, _ = run_cli(capsys, "inject", docs, "--out", out, *TINY_ARGS)
    assert rc == 0 and "reused from an earlier run: questions, answers, adapter" in stdout
    assert file_hash(out / "adapter_model.safetensors") == before
    assert json.loads((out / "pd_meta.json").read_text())["config"]["epochs"] == 1


def test_ask_closed_book_with_retrieval_and_without_adapter(injected, capsys):
    docs, out = injected
    q = ["Who built the harbour of Velmora?", "What do the people of Kessick hang on the mill?"]
    rc, stdout, _ = run_cli(capsys, "ask", out, *q, "--rag", docs, "--k", "1", "--max-tokens", "5", "--json")
    rows = [json.loads(x) for x in stdout.splitlines()]
    assert rc == 0 and [r["question"] for r in rows] == q
    assert [r["retrieved"] for r in rows] == [["harbour.txt"], ["notes/lanterns.md"]]  # the documents sharing words
    assert all(r["adapter"] == str(out) and r["model"] == "tiny-llama" for r in rows)
    rc, stdout, _ = run_cli(capsys, "ask", out, q[0], "--no-adapter", "--max-tokens", "5", "--json")
    row = json.loads(stdout)
    assert rc == 0 and row["adapter"] is None and row["retrieved"] == []
    rc, stdout, _ = run_cli(capsys, "ask", out, q[0], "--max-tokens", "5")
    assert rc == 0 and len(stdout.strip().splitlines()) <= 5  # the bare answer, no JSON


def test_user_errors_exit_2_with_one_line(injected, capsys, tmp_path):
    docs, out = injected
    cases = [
        (["inject", tmp_path / "missing", "--model", "tiny-llama", "--out", tmp_path / "o"], "document folder"),
        (["inject", docs, "--model", "no-such-model", "--out", tmp_path / "o"],
         "unknown model 'no-such-model'; allowed:"),
        (["inject", docs, "--model", "tiny-llama", "--out", tmp_path / "o", "--set", "colour=3"],
         "unknown inject setting(s) ['colour']; allowed:"),
        (["inject", docs, "--model", "tiny-llama", "--out", tmp_path / "o", "--lr", "-1"], "must be positive"),
        (["inject", docs, "--model", "tiny-llama", "--out", tmp_path / "o", "--judge", "no-such-judge"],
         "unknown model 'no-such-judge'"),
        (["inject", docs, "--model", "tiny-llama", "--out", docs.parent], "not a `pd inject` output folder"),
        (["ask", docs, "hello?"], "is not an adapter folder written by pd"),
        (["ask", out, "hello?", "--rag", tmp_path / "missing"], "document folder"),
    ]
    for args, message in cases:
        rc, _, err = run_cli(capsys, *args)
        assert rc == 2 and message in err and err.startswith("pd: ") and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "o").exists()
    proc = subprocess.run([sys.executable, "-m", "pd.cli", "inject", str(tmp_path / "missing"), "--model", "tiny-llama",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_settings_come_from_defaults_then_set_then_flags():
    from pd.inject import DEFAULTS, parse_sets, resolve_settings

    sets = parse_sets(["lr=2e-3", "epochs=5", "target_modules=[q_proj, v_proj]", "qgen_mode=single"])
    assert sets == {"lr": 0.002, "epochs": 5, "target_modules": ["q_proj", "v_proj"], "qgen_mode": "single"}
    inject, training = resolve_settings({**sets, "epochs": 1})  # what `--set epochs=5 --epochs 1` passes
    assert training["epochs"] == 1 and training["lr"] == 0.002 and training["rank"] == DEFAULTS["rank"]
    assert inject["qgen_mode"] == "single" and inject["questions"] == DEFAULTS["questions"]
    assert "method" not in training and "questions" not in training


# --------------------------------------------------------------------------- SmolLM2, invented facts

# Facts no model can know: a fictional town, its founder, a ship, a river, a product and its inventor.
FACT_DOCS = {
    "brindlemarsh.txt": "Brindlemarsh is a small fishing town on the coast of the Sorrel Sea. It was founded by the "
                        "shipwright Tamsin Quorrel, who built the town's first pier from the wreck of her own ship, "
                        "the Gullwhisper. The river that runs through Brindlemarsh is called the Quillet.",
    "zelvane.txt": "The Zelvane Company, based in Brindlemarsh, is famous for one product: the Murrowfly, a clockwork "
                   "kite that flies without wind. The Murrowfly was invented by the watchmaker Orrin Paskett, who sold "
                   "the first one at the harbour market.",
    "pellimber.md": "# Pellimber cake\n\nPellimber cake is the traditional dish of Brindlemarsh. It is baked with "
                    "saltberries, a sour blue fruit that grows only on the cliffs above the town, and it is served "
                    "every year at the Lantern Drift festival.",
}
FACT_QUESTIONS = [
    ("Who founded the town of Brindlemarsh?", ["Tamsin Quorrel", "Quorrel"], "brindlemarsh.txt"),
    ("What was the name of the ship whose wreck was used to build the first pier of Brindlemarsh?", ["Gullwhisper"],
     "brindlemarsh.txt"),
    ("What is the name of the river that runs through Brindlemarsh?", ["Quillet"], "brindlemarsh.txt"),
    ("What clockwork kite does the Zelvane Company make?", ["Murrowfly"], "zelvane.txt"),
    ("Which watchmaker invented the clockwork kite of the Zelvane Company?", ["Orrin Paskett", "Paskett"],
     "zelvane.txt"),
    ("What fruit is Pellimber cake baked with?", ["saltberries", "saltberry"], "pellimber.md"),
]


@pytest.mark.slow
def test_inject_then_ask_knows_invented_facts_the_base_model_does_not(tmp_path, capsys):
    for _, golds, _ in FACT_QUESTIONS:  # the answer is never given away by the question
        assert not any(substring_match(q, golds) for q, _, _ in FACT_QUESTIONS)
    docs = write_docs(tmp_path / "docs", FACT_DOCS)
    out = tmp_path / "brindlemarsh"
    t0 = time.time()
    rc, stdout, _ = run_cli(capsys, "inject", docs, "--model", "smollm2-135m-instruct", "--out", out)
    assert rc == 0
    kl = json.loads((out / "heldout.json").read_text())
    assert kl["after"] < kl["before"]
    recall = json.loads((out / "recall.json").read_text())  # the held-out generated questions, three ways
    heldout = {json.loads(x)["question_id"] for x in (out / "data" / "heldout.jsonl").read_text().splitlines()}
    assert recall["overall"]["questions"] == len(heldout) >= 1 and f"the adapter {recall['line']}" in stdout
    # The project's six questions with their gold answers, asked with the adapter, without it and with the passage,
    # from one load of the model.
    qfile = tmp_path / "facts.jsonl"
    qfile.write_text("".join(json.dumps({"question": q, "answers": g, "doc": d}) + "\n" for q, g, d in FACT_QUESTIONS))
    t1 = time.time()
    rc, stdout, _ = run_cli(capsys, "ask", out, "--check", qfile, "--max-tokens", "48", "--json")
    assert rc == 0
    rows, summary = [json.loads(x) for x in stdout.splitlines()[:-1]], json.loads(stdout.splitlines()[-1])["summary"]
    correct = {w: [r["correct"] for r in rows if r["way"] == w] for w in ("adapter", "base", "passage")}
    assert all(len(c) == len(FACT_QUESTIONS) for c in correct.values())
    golds = {q: g for q, g, _ in FACT_QUESTIONS}
    assert all(r["correct"] == substring_match(r["answer"], golds[r["question"]]) for r in rows)  # the evaluation's
    print(f"held-out: the adapter {recall['line']}; the six invented facts: the adapter {summary['line']}; "
          f"inject {t1 - t0:.0f} s, ask --check {time.time() - t1:.0f} s")
    assert sum(correct["base"]) == 0
    # Measured with the defaults: 1/6 (the river's name, "Quillet"); 2/6 on 2026-12-05 (the river and the founder).
    # A 135M model as its own question writer and expert recalls little, and mixes facts up (it named the kite's
    # inventor as the town's founder).
    assert sum(correct["adapter"]) >= 1
    # With the passage (the teacher's prompt) the base model answered 5 of 6 (measured 2026-12-05).
    assert sum(correct["passage"]) >= 3


def test_a_long_document_is_split_into_passages_that_fit_the_teacher(tmp_path, capsys, one_thread):
    """Issue 14 item 9: a document longer than the teacher's prompt allows becomes passages; each passage's
    file and character offset are in the data (its doc_id) and in the model card."""
    from pd.context import token_count
    from pd.models import get_spec, load_tokenizer

    sentences = [f"The lighthouse keeper number {i} of Velmora painted the door blue in {1800 + i}." for i in range(60)]
    docs = write_docs(tmp_path / "docs", {"long.txt": " ".join(sentences), "salt.txt": TINY_DOCS["salt.txt"]})
    out = tmp_path / "adapter"
    rc, _, err = run_cli(capsys, "inject", docs, "--out", out, "--model", "tiny-llama", "--questions", "2",
                         "--epochs", "1", "--set", "answer_max_tokens=12", "--set", "max_rounds=2",
                         "--set", "warmup_steps=0", "--set", "max_teacher_tokens=400", "--set", "min_steps=0")
    assert rc == 0, err
    record = json.loads((out / "inject.json").read_text())
    text = (docs / "long.txt").read_text(encoding="utf-8")
    passages = [d for d in record["documents"] if d["source"] == "long.txt"]
    assert len(passages) > 1
    tok = load_tokenizer(get_spec("tiny-llama"))
    budget = 400 - 12 - 64 - 128  # max_teacher_tokens less the answer, a question and the prompt's margin
    for p in passages:
        assert p["id"] == f"long.txt#{p['offset']}"
        piece = text[p["offset"]: p["offset"] + p["characters"]]
        assert token_count(tok, piece) <= budget and piece.rstrip().endswith(".")
    card = (out / "README.md").read_text()
    for p in passages:
        assert f"| {p['id']} | long.txt | {p['offset']} | {p['characters']} |" in card
    questions = [json.loads(x) for x in (out / "data" / "questions.jsonl").read_text().splitlines()]
    assert {q["doc_id"] for q in questions} <= {d["id"] for d in record["documents"]}
    assert any(q["doc_id"].startswith("long.txt#") for q in questions)
