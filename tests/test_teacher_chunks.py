"""The teacher cache is built in chunks kept in a work folder: an interrupted build resumes from them and ends
with the uninterrupted build's files, bit for bit."""

import sys
from pathlib import Path

import pytest

from pd.data import Dataset, Document
from pd.errors import ConfigError
from pd.train.cache_builder import build_teacher_cache
from pd.train.lora import attach_lora
from pd.train.sequences import Tokens, pd_examples
from pd.train.settings import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_train import PASSAGES, ROWS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class Killed(Exception):
    """Stands for the job's time limit."""


@pytest.fixture(scope="module")
def inputs(tiny_llama):
    ds = Dataset("toy", {k: Document(k, v) for k, v in PASSAGES.items()}, [])
    tokens = Tokens(tiny_llama.tokenizer, tiny_llama.spec)
    examples, _ = pd_examples(ROWS, ds, tokens, TrainConfig().limits())
    model = attach_lora(tiny_llama.model(), rank=1, alpha=2.0)  # as the workflow's teacher job does
    return model, examples, tokens.pad_id


def _files(folder: Path, name: str) -> dict:
    """A cache's files: the safetensors file's tensors (as bytes) and metadata, the sidecar and stats files' bytes.
    (safetensors writes its metadata's keys in no fixed order, so the file's bytes may differ.)"""
    from safetensors import safe_open

    with safe_open(str(folder / f"{name}.safetensors"), framework="pt") as f:
        tensors = {k: (str(f.get_tensor(k).dtype), f.get_tensor(k).numpy().tobytes()) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    return {"tensors": tensors, "metadata": meta,
            **{suffix: (folder / f"{name}{suffix}").read_bytes() for suffix in (".json", ".jsonl")}}


def test_an_interrupted_build_resumes_from_its_chunks_and_ends_bit_for_bit(inputs, tmp_path):
    model, examples, pad = inputs
    kw = dict(k=8, temperature=2.0, batch_size=2)  # 8 examples: 4 batches

    def build(name, **more):
        return build_teacher_cache(model, examples, pad, out=tmp_path / f"{name}.safetensors",
                                   stats_path=tmp_path / f"{name}.jsonl", **kw, **more)

    full = build("full")  # one chunk (CHUNK_BATCHES), nothing kept
    assert full.meta["examples"] == 8

    def stop_after_two(done, total):
        assert total == 4
        if done == 2:
            raise Killed

    work = tmp_path / "cut.work"
    with pytest.raises(Killed):
        build("cut", work=work, chunk_batches=1, on_chunk=stop_after_two)
    assert sorted(p.name for p in work.iterdir()) == ["chunk-000000", "chunk-000001"]
    assert not (tmp_path / "cut.safetensors").exists()

    ran = []
    cut = build("cut", work=work, chunk_batches=1, on_chunk=lambda done, total: ran.append(done))
    assert ran == [3, 4]  # the teacher ran on the two chunks left only
    assert not work.exists()  # removed once the cache is written
    assert cut.example_ids == full.example_ids and cut.stats == full.stats
    assert _files(tmp_path, "cut") == _files(tmp_path, "full")  # targets, sidecar (covered mass...) and stats


def test_chunks_of_another_build_are_not_used(inputs, tmp_path):
    model, examples, pad = inputs
    work = tmp_path / "w"

    def stop_at_one(done, total):
        raise Killed

    with pytest.raises(Killed):
        build_teacher_cache(model, examples, pad, k=8, temperature=2.0, batch_size=2, work=work, chunk_batches=1,
                            on_chunk=stop_at_one)
    assert [p.name for p in work.iterdir()] == ["chunk-000000"]
    ran = []
    other = build_teacher_cache(model, examples, pad, k=4, temperature=2.0, batch_size=2, work=work, chunk_batches=1,
                                on_chunk=lambda done, total: ran.append(done))
    assert ran == [1, 2, 3, 4] and other.k == 4  # the k=8 chunk was dropped, all of the k=4 pass ran
    assert not work.exists()
    with pytest.raises(ConfigError, match="chunk_batches"):
        build_teacher_cache(model, examples, pad, k=4, temperature=2.0, chunk_batches=0)
