"""How many sequences one decoding batch holds, from the memory the job has.

A fixed batch of 8 leaves an 80 GB GPU mostly idle when an 8B model decodes (its KV cache
for 8 sequences of 1,000 tokens is about 1 GB), and decoding is memory-bound: the weights
are read once per step whatever the batch, so tokens per second grow almost linearly with
the batch until the KV cache fills the memory. The batch here is the largest that fits:

    per sequence = KV cache for (prompt + new tokens)                      (Eq. K)
                   + the last position's logits in float32, twice (softmax)
                   + the prompt's prefill activations (tokens x intermediate x 2 values)
    batch        = floor(usable share of the free memory / per sequence), within [1, cap]

with KV bytes per token = 2 (K and V) x layers x KV heads x head size x bytes per value.
"""

from __future__ import annotations

from typing import Any

USABLE_SHARE = 0.8  # of the memory free when the batch is planned (fragmentation, kernels' workspaces)
MAX_BATCH = 256  # beyond this, batching gains little and one batch's latency grows
CPU_BATCH = 32  # on a CPU decoding is compute-bound: a moderate batch, whatever the memory


def kv_bytes_per_token(config: Any, bytes_per_value: int) -> int:
    """Bytes of KV cache one token takes in every layer (Eq. K).

    Args:
        config: a transformers model config (``num_hidden_layers``, ``num_attention_heads``,
            optional ``num_key_value_heads`` and ``head_dim``, ``hidden_size``).
        bytes_per_value: 2 for bfloat16/float16, 4 for float32.

    Returns:
        Bytes per token.
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * bytes_per_value


def sequence_bytes(config: Any, bytes_per_value: int, prompt_tokens: int, max_new_tokens: int) -> int:
    """Peak bytes one sequence adds to a decoding batch (see the module docstring).

    Args:
        config: the model's config (also ``vocab_size`` and ``intermediate_size``).
        bytes_per_value: bytes of one activation value.
        prompt_tokens: the longest prompt in the batch, tokens.
        max_new_tokens: the tokens to generate at most.

    Returns:
        Bytes.
    """
    kv = kv_bytes_per_token(config, bytes_per_value) * (prompt_tokens + max_new_tokens)
    logits = 2 * config.vocab_size * 4
    inter = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    prefill = prompt_tokens * inter * 2 * bytes_per_value
    return kv + logits + prefill


def batch_for_memory(config: Any, bytes_per_value: int, prompt_tokens: int, max_new_tokens: int,
                     free_bytes: int, cap: int = MAX_BATCH) -> int:
    """The largest decoding batch that fits ``free_bytes`` (at least 1, at most ``cap``).

    Args:
        config: the model's config.
        bytes_per_value: bytes of one activation value.
        prompt_tokens: the longest prompt in the batch, tokens.
        max_new_tokens: the tokens to generate at most.
        free_bytes: the device memory free now (after the weights are loaded).
        cap: the largest batch returned.

    Returns:
        Sequences per batch.
    """
    per = sequence_bytes(config, bytes_per_value, prompt_tokens, max_new_tokens)
    return max(1, min(cap, int(USABLE_SHARE * free_bytes // per)))
