"""Test setup: offline hub, shared model fixtures (loaded once per session)."""

import dataclasses
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from pd.models import get_spec, load_model, load_tokenizer  # noqa: E402


class Loaded:
    """A spec with its tokenizer and (lazily) a fresh model copy."""

    def __init__(self, name: str, dtype: str | None = None):
        spec = get_spec(name)
        self.spec = dataclasses.replace(spec, dtype=dtype) if dtype else spec
        self.tokenizer = load_tokenizer(self.spec)

    def model(self):
        return load_model(self.spec, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama() -> Loaded:
    return Loaded("tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2() -> Loaded:
    return Loaded("tiny-qwen2")


@pytest.fixture(scope="session")
def smollm2() -> Loaded:
    # float32 on every machine (`auto` would pick bfloat16 where it is fast): tests compare with
    # float64 references and expect the same numbers on every CPU.
    return Loaded("smollm2-135m-instruct", dtype="float32")


@pytest.fixture(scope="module")
def one_thread():
    """Small models are overhead-bound: one intra-op thread avoids OpenMP spin-waiting on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
