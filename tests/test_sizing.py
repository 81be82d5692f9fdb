"""Decoding batch sizes from memory, against byte counts worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pd.generate import sizing
from pd.generate.base import SamplingParams
from pd.generate.transformers_backend import TransformersGenerator
from pd.models import get_spec

# Llama-3-8B: 32 layers, 32 heads of 128, 8 KV heads, hidden 4096, intermediate 14336, vocab 128,256.
LLAMA3_8B = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_size=4096,
                            intermediate_size=14336, vocab_size=128256)


def test_kv_bytes_per_token_llama3_8b():
    # 2 (K, V) x 32 layers x 8 KV heads x 128 x 2 bytes = 131,072 bytes = 128 KiB per token in bfloat16.
    assert sizing.kv_bytes_per_token(LLAMA3_8B, 2) == 131072
    no_gqa = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=64)
    assert sizing.kv_bytes_per_token(no_gqa, 4) == 2 * 2 * 4 * 16 * 4


def test_batch_for_an_h100_llama3_8b():
    # Prompt 768 + 512 new tokens: KV 1280 x 131,072 = 167,772,160; logits 2 x 128,256 x 4 = 1,026,048;
    # prefill 768 x 14,336 x 2 x 2 = 44,040,192: 212,838,400 bytes per sequence. With 64 GB free,
    # 0.8 x 64e9 / 212,838,400 = 240.5 -> 240.
    per = sizing.sequence_bytes(LLAMA3_8B, 2, 768, 512)
    assert per == 167772160 + 1026048 + 44040192
    assert sizing.batch_for_memory(LLAMA3_8B, 2, 768, 512, 64 * 10**9) == 240
    assert sizing.batch_for_memory(LLAMA3_8B, 2, 768, 512, 10**15) == sizing.MAX_BATCH
    assert sizing.batch_for_memory(LLAMA3_8B, 2, 768, 512, 10**6) == 1


def test_auto_batch_on_a_cpu_and_bad_values(tiny_llama):
    gen = TransformersGenerator(tiny_llama.spec, batch_size="auto", progress=False)
    assert gen.batch_rows(100, 50) == sizing.CPU_BATCH
    convs = [[{"role": "user", "content": f"Question {i}?"}] for i in range(5)]
    fixed = TransformersGenerator(get_spec("tiny-llama"), batch_size=2, progress=False)
    params = SamplingParams(temperature=0.7, max_new_tokens=6, seed=3)
    # Per-sample seeds: the batch size changes nothing in the samples.
    assert ([c[0].token_ids for c in gen.generate(convs, params)]
            == [c[0].token_ids for c in fixed.generate(convs, params)])
    with pytest.raises(Exception, match="integer >= 1 or 'auto'"):
        TransformersGenerator(tiny_llama.spec, batch_size=0, progress=False)
