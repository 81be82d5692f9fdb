"""Compact teacher targets: the top-k of the teacher's distribution per answer position.

Keeping only k of V probabilities drops a tail. To keep the distillation loss well defined
and exact on what is kept, the tail becomes one "rest" bucket on both sides: the teacher's
rest mass is computed from its full logits when the targets are made (stored, not guessed),
and the student's rest is the mass it puts outside the teacher's top-k ids. With k = V
there is no rest bucket and the loss equals the full-vocabulary one.

Log-probabilities are stored at T = 1 (compact dtype); the teacher's log-sum-exp of its
logits at T = 1 and at the training temperature T is stored in float32 so that
probabilities at T follow exactly: log p_i^T = (log p_i^1 + lse_1) / T - lse_T.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from pd.errors import ConfigError


@dataclass
class TopKTargets:
    """Teacher targets at answer positions, shape [..., k] / [...] (e.g. [B, A] or [N]).

    ``ids``: token ids (int32 when stored, any int when used); ``logprobs``: log p at T = 1;
    ``lse``: log-sum-exp of the raw logits; ``lse_t``: log-sum-exp of logits / ``temperature``;
    ``log_rest`` / ``log_rest_t``: log of the mass outside ``ids`` at T = 1 / at T (-inf
    when k = V); ``vocab_size``: V of the teacher.
    """

    ids: Tensor
    logprobs: Tensor
    lse: Tensor
    lse_t: Tensor
    log_rest: Tensor
    log_rest_t: Tensor
    temperature: float
    vocab_size: int

    TENSORS = ("ids", "logprobs", "lse", "lse_t", "log_rest", "log_rest_t")

    @property
    def k(self) -> int:
        return int(self.ids.shape[-1])

    def map(self, fn) -> "TopKTargets":
        """Apply ``fn`` to every tensor (indexing, ``.to(device)``...)."""
        return replace(self, **{name: fn(getattr(self, name)) for name in self.TENSORS})

    def log_probs_at(self, temperature: float) -> tuple[Tensor, Tensor]:
        """(log p_i^T for the top-k ids, log rest^T) in float32, for T = 1 or the stored T."""
        logp1 = self.logprobs.float()
        if temperature == 1.0:
            return logp1, self.log_rest.float()
        if abs(temperature - self.temperature) > 1e-9:
            raise ConfigError(f"teacher targets were cached for temperature {self.temperature} (and 1.0); "
                              f"the loss asks for temperature {temperature}: rebuild the cache for that temperature")
        lse, lse_t = self.lse.float(), self.lse_t.float()
        return (logp1 + lse.unsqueeze(-1)) / temperature - lse_t.unsqueeze(-1), self.log_rest_t.float()

    def covered_mass(self, temperature: float = 1.0) -> Tensor:
        """Teacher probability covered by the top-k ids, per position (1 - rest)."""
        return -torch.expm1(self.log_probs_at(temperature)[1])


def topk_targets(logits: Tensor, k: int, temperature: float, *,
                 logprob_dtype: torch.dtype = torch.float16) -> TopKTargets:
    """Targets from full teacher logits [..., V] (no grad); the rest masses are exact."""
    if not 1 <= k:
        raise ConfigError(f"top-k: k must be >= 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    v = logits.shape[-1]
    k = min(k, v)
    with torch.no_grad():
        z = logits.float()
        lse = torch.logsumexp(z, -1)
        lse_t = torch.logsumexp(z / temperature, -1)
        top, ids = torch.topk(z, k, dim=-1)
        if k < v:
            rest = z.scatter(-1, ids, float("-inf"))
            log_rest = torch.logsumexp(rest, -1) - lse
            log_rest_t = torch.logsumexp(rest / temperature, -1) - lse_t
        else:
            log_rest = torch.full_like(lse, float("-inf"))
            log_rest_t = log_rest.clone()
        return TopKTargets(ids=ids.to(torch.int32), logprobs=(top - lse.unsqueeze(-1)).to(logprob_dtype), lse=lse,
                           lse_t=lse_t, log_rest=log_rest, log_rest_t=log_rest_t, temperature=float(temperature),
                           vocab_size=int(v))


def cat_targets(parts: list[TopKTargets]) -> TopKTargets:
    """Concatenate flat targets [N_i, k] along the first dimension."""
    if not parts:
        raise ValueError("cat_targets: nothing to concatenate")
    first = parts[0]
    return replace(first, **{n: torch.cat([getattr(p, n) for p in parts], 0) for n in TopKTargets.TENSORS})

