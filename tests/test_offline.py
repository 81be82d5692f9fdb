"""Compute nodes without network (issue 21 part 5): API embeddings are computed by a local job where the
network is and cached by content; the retrieval job reads the cache and opens no connection; `pd validate`
refuses jobs that would call a service on an offline site's compute nodes."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from pd.cli import main
from pd.config import DEFAULT_CONFIG, load_config
from pd.data import Document
from pd.errors import ConfigError, ModelUnavailableError
from pd.evaluation.retrieve import embed_corpus_and_queries, openai_retriever, retrieve_for_items
from pd.io import read_json, read_jsonl
from pd.pipeline.plan import build_plan
from pd.pipeline.run import run_spec
from pd.serve import create_app, serve_in_thread
from pd.site import load_site

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
EMB = "minilm"  # the embedding model's name at the test server
DOCS = [
    Document("a", "The Eiffel Tower stands in Paris. Paris is the capital of France."),
    Document("b", "Mount Everest is the highest mountain on Earth, in the Himalayas."),
    Document("c", "The Danube flows through Budapest, the capital of Hungary."),
    Document("d", "Gold has the chemical symbol Au; silver has the symbol Ag."),
]
QUERIES = ["Which river runs through Budapest?", "symbol of gold", "tallest mountain"]


class CountingEmbedder:
    """The real MiniLM model behind the server; counts the texts it is asked to embed."""

    def __init__(self):
        from pd.evaluation.retrieve import sentence_transformer

        self.st, self.texts = sentence_transformer("all-minilm-l6-v2"), 0
        self.tokenizer = getattr(self.st, "tokenizer", None)

    def encode(self, texts, **kw):
        self.texts += len(texts)
        return self.st.encode(texts, **kw)


@pytest.fixture(scope="module")
def embedder():
    return CountingEmbedder()


@contextlib.contextmanager
def offline(monkeypatch):
    """Every socket connection fails inside the block, as on a compute node without network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test: a compute node has none")

    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", refuse)
        m.setattr(socket.socket, "connect_ex", refuse)
        yield


def openai_plan(tmp_path: Path, passages: int = 4):
    """The tiny grid with closed-book and `openai` retrieval cells over a few NYT passages."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    over = yaml.safe_load(TINY.read_text())
    over["datasets"]["tiny-nyt"]["passages"] = passages
    over["experiments"]["tiny"]["grid"]["retrieval"] = ["none", "openai"]
    over["retrieval"] = {"openai_embedding_model": EMB}
    over["results_dir"] = str(tmp_path / "results")
    over["reports_dir"] = str(tmp_path / "reports")
    return build_plan(load_config(raw, over), ["tiny"])


def test_local_job_caches_and_offline_retrieval_ranks_the_same(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    plan = openai_plan(tmp_path)
    [emb], [ret] = plan.of_kind("embeddings"), plan.of_kind("retrieval")
    assert ret.inputs == (emb.path,)  # Snakemake builds the embeddings before the retrieval
    ds = ret.spec.load_dataset()
    with serve_in_thread(create_app(embedder=embedder, embedding_model_name=EMB)) as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        before = embedder.texts
        run_spec(emb.spec, emb.path)  # the local job, where the network is
        record = read_json(emb.path)
        n_texts = len(ds.documents) + len(ds.items)
        assert record["documents"] == len(ds.documents) and record["queries"] == len(ds.items) > 0
        assert record["sent"] == n_texts == embedder.texts - before
        cached = sorted(p.stem for p in (tmp_path / "cache" / "retrieval" / "embeddings").glob("*.npy"))
        assert cached == sorted(record["keys"])
        run_spec(emb.spec, emb.path)  # again: every text from the cache
        assert read_json(emb.path)["sent"] == 0 and embedder.texts - before == n_texts
        # What an online retriever ranks, with its own cache.
        want = retrieve_for_items(ds, "openai", ret.spec.k, model=EMB, cache_dir=tmp_path / "online")
    # The server is gone and no socket may connect: the retrieval job reads the cache only.
    with offline(monkeypatch):
        run_spec(ret.spec, ret.path)
    rows = read_jsonl(ret.path)
    assert {r["item_id"]: r["retrieved"] for r in rows} == want
    assert [r["item_id"] for r in rows] == [it.id for it in ds.items]


def test_retrieval_without_the_cache_fails_with_one_line_saying_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PD_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there; nothing connects
    [ret] = openai_plan(tmp_path, passages=2).of_kind("retrieval")
    with offline(monkeypatch), pytest.raises(ModelUnavailableError) as err:
        run_spec(ret.spec, ret.path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "not in the cache" in msg and str(tmp_path / "empty-cache") in msg
    assert "`--forcerun embeddings`" in msg and "opens no connection" in msg
    assert not Path(ret.path).exists()


def test_a_changed_passage_or_question_misses_the_cache(tmp_path, monkeypatch, embedder):
    with serve_in_thread(create_app(embedder=embedder, embedding_model_name=EMB)) as url:
        online = openai_retriever(DOCS, model=EMB, base_url=url, cache_dir=tmp_path).search(QUERIES, 2)
        before = embedder.texts
        # The local job's texts are the retriever's, in its order: all of them are in the cache already.
        rec = embed_corpus_and_queries(_dataset(DOCS, QUERIES), "openai", model=EMB, base_url=url, cache_dir=tmp_path)
        assert rec["sent"] == 0 and embedder.texts == before
    hint = "run the local embeddings job"
    with offline(monkeypatch):
        r = openai_retriever(DOCS, model=EMB, base_url=url, cache_dir=tmp_path, offline=hint)
        assert r.search(QUERIES, 2) == online
        changed = [*DOCS[:2], Document("c", DOCS[2].text.replace("Budapest", "Vienna")), DOCS[3]]
        with pytest.raises(ModelUnavailableError, match=f"embeddings of {len(DOCS)} texts .*: {hint}$"):
            openai_retriever(changed, model=EMB, base_url=url, cache_dir=tmp_path, offline=hint)
        with pytest.raises(ModelUnavailableError, match="embeddings of 1 texts"):
            r.search(["Which river runs through Vienna?"], 2)
        with pytest.raises(ModelUnavailableError, match="by other-model"):  # the model is part of the key
            openai_retriever(DOCS, model="other-model", base_url=url, cache_dir=tmp_path, offline=hint)


def _dataset(docs, queries):
    from pd.data import Dataset, TestItem

    items = [TestItem(id=f"q{i}", question=q, answers=["x"], doc_ids=["a"]) for i, q in enumerate(queries)]
    return Dataset("docs", {d.id: d for d in docs}, items, {})


# --------------------------------------------------------------------------- pd validate on an offline site


def _validate(tmp_path, capsys, site: dict, config: list[str]) -> tuple[int, str]:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({"slurm_site": site}))
    code = main(["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(TINY), "--configfile",
                 str(site_file), "--config", *config])
    return code, capsys.readouterr().out


OPENAI_BACKEND = 'generation={backend: openai, openai_base_url: "http://127.0.0.1:9/v1"}'


def test_validate_refuses_openai_backend_jobs_on_offline_compute_nodes(tmp_path, capsys):
    code, out = _validate(tmp_path, capsys, {"device": "cpu"}, [OPENAI_BACKEND])
    assert code == 2
    lines = [ln for ln in out.splitlines() if ln.startswith("needs network on a compute node: ")]
    # tiny: base x {none, bm25, oracle}: 3 evaluations (one per cell); substring grades call nothing.
    assert lines == ["needs network on a compute node: tiny: cell tiny-nyt/base/tiny-llama/s0/none and 2 more: "
                     "3 evaluate job(s) would call the openai backend (generation.backend: openai): set "
                     "generation.backend to transformers or vllm, or set slurm_site.compute_network: true if the "
                     "compute nodes reach the service"]
    assert "`pd fetch --check --run tiny`" in out  # the hub models and datasets are fetched beforehand
    code, out = _validate(tmp_path, capsys, {"device": "cpu", "compute_network": True}, [OPENAI_BACKEND])
    assert code == 0 and "needs network" not in out


def test_validate_passes_api_embeddings_as_local_jobs(tmp_path, capsys):
    grid = "experiments={tiny: {grid: {model: [tiny-llama], method: [base], dataset: [tiny-nyt], " \
           "retrieval: [none, openai], seed: [0]}, graders: [substring]}}"
    code, out = _validate(tmp_path, capsys, {"device": "cpu"}, [grid])
    assert code == 0, out
    assert "needs network" not in out
    assert re.search(r"1 jobs that call a service \(API embeddings\) are local rules", out)


def test_shipped_slurm_site_is_offline_and_refuses_the_openai_backend(capsys):
    assert load_site(ROOT / "profiles" / "slurm" / "site.yaml").compute_network is False
    code = main(["--config", str(DEFAULT_CONFIG), "validate", "--configfile", str(TINY), "--configfile",
                 str(ROOT / "profiles" / "slurm" / "site.yaml"), "--config", OPENAI_BACKEND])
    out = capsys.readouterr().out
    assert code == 2 and "needs network on a compute node: tiny: cell tiny-nyt/base/tiny-llama/s0/none" in out


def test_compute_network_must_be_a_boolean():
    assert load_site({"compute_network": True}).compute_network is True
    assert load_site({}).compute_network is False
    with pytest.raises(ConfigError, match=r"slurm_site.compute_network: expected true or false, got 'yes'"):
        load_site({"compute_network": "yes"})


def test_fetch_lists_embeddings_as_local_not_as_network_jobs(tmp_path):
    from pd.fetch import network_jobs, offline_problems

    plan = openai_plan(tmp_path, passages=2)
    [emb] = plan.of_kind("embeddings")
    assert network_jobs(plan) == [] and network_jobs(plan, local=True) == [emb.path]
    assert offline_problems(plan) == []
    assert json.dumps(emb.spec.as_dict())  # its spec names no registry model (pd fetch lists none for it)
    from pd.fetch import plan_needs

    assert not [n for n in plan_needs(plan) if EMB in n.name]
