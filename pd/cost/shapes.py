"""A model's shape (what its memory and time follow) and the token lengths of a job's rows.

A decoder-only transformer of ``layers`` blocks, each with attention (``heads`` query heads, ``kv_heads``
key/value heads of ``hidden / heads`` dimensions) and a gated MLP (``intermediate``), and an embedding and
output head over ``vocab`` tokens (shared when ``tied``): the Llama, Qwen2 and Mistral families.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

LORA_MODULES = "q, k, v, o, gate, up, down"  # PEFT's all-linear on these blocks (the output head is left out)


@dataclass(frozen=True)
class Shape:
    """The dimensions of a decoder-only transformer.

    Attributes:
        layers: transformer blocks.
        hidden: model width.
        intermediate: MLP width.
        heads: query heads.
        kv_heads: key/value heads (grouped-query attention).
        vocab: vocabulary size.
        tied: the output head shares the embedding matrix.
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, config: Any) -> Shape:
        """The shape of a transformers config (or any object with its attribute names).

        Args:
            config: ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
                optional ``num_key_value_heads``, ``vocab_size``, ``tie_word_embeddings``.

        Returns:
            The :class:`Shape`.
        """
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        heads = get("num_attention_heads")
        return cls(layers=get("num_hidden_layers"), hidden=get("hidden_size"),
                   intermediate=get("intermediate_size") or 4 * get("hidden_size"), heads=heads,
                   kv_heads=get("num_key_value_heads") or heads, vocab=get("vocab_size"),
                   tied=bool(get("tie_word_embeddings", False)))

    @classmethod
    def from_params(cls, params_b: float) -> Shape:
        """A Llama-3-like shape of about ``params_b`` billion parameters (for a model whose shape is unknown).

        Width grows with the square root of the size from Llama-3-8B's (4096 wide, 32 layers); the estimate
        is within 30 % of the real sizes from 1B to 70B, which is what job sizing needs before a download.
        """
        scale = max(params_b, 0.01) / 8.03
        hidden = max(64, int(round(4096 * scale ** 0.35 / 128)) * 128)
        layers = max(2, round(32 * scale ** 0.3))
        return cls(layers=layers, hidden=hidden, intermediate=int(hidden * 3.5), heads=max(1, hidden // 128),
                   kv_heads=8 if hidden >= 1024 else max(1, hidden // 128), vocab=128256)

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head."""
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Parameters of one block's linear layers: attention 2h^2 + 2h(kv x head_dim), MLP 3 h x intermediate."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * self.intermediate

    @property
    def head_params(self) -> int:
        """Parameters of the embedding and the output head (one matrix when tied)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        """All parameters (norms left out: < 0.01 %)."""
        return self.layers * self.layer_params + self.head_params

    def lora_params(self, rank: int) -> int:
        """LoRA parameters at ``rank`` on every linear layer of every block (q, k, v, o, gate, up, down).

        A d_in x d_out layer gets rank x (d_in + d_out); per block that is rank x (9 h + 2 kv + 3 i).
        Llama-3-8B at rank 1024: 2.684e9 (the measured count); Qwen2.5-14B at 512: 2.202e9.
        """
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return self.layers * rank * (9 * h + 2 * kv + 3 * self.intermediate)

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes of one token over all layers: 2 (K and V) x layers x kv_heads x head_dim x bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bytes_per_value

    def config(self) -> SimpleNamespace:
        """The shape under transformers' config names (what :mod:`pd.generate.sizing` reads)."""
        return SimpleNamespace(num_hidden_layers=self.layers, hidden_size=self.hidden,
                               intermediate_size=self.intermediate, num_attention_heads=self.heads,
                               num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
                               tie_word_embeddings=self.tied, head_dim=self.head_dim)


@dataclass(frozen=True)
class Tokens:
    """Token lengths of one training row: the student's sequence, the teacher's and the answer (in both)."""

    student: int
    teacher: int
    answer: int

    def __post_init__(self):
        for name in ("student", "teacher", "answer"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Tokens.{name} must be an integer >= 0, got {v!r}")


def shape_of(spec: Any) -> Shape:
    """The shape of a registry model (:class:`pd.models.ModelSpec`): its ``shape`` entry, its random-weight
    config, else an estimate from its size (:meth:`Shape.from_params`).

    Args:
        spec: a model spec (``shape``, ``random_config`` and ``tokenizer_vocab``, ``params_b``).

    Returns:
        The :class:`Shape`.
    """
    if getattr(spec, "shape", None):
        return Shape.from_config(spec.shape)
    if getattr(spec, "random_config", None):  # random weights: the vocabulary is the trained tokenizer's
        return Shape.from_config({"vocab_size": spec.tokenizer_vocab, **spec.random_config})
    return Shape.from_params(spec.params_b)
