"""Gradient of the top-k (bucketed) KL, written out in pd.train.losses, against float64 autograd."""

from __future__ import annotations

import pytest
import torch

from pd.train.targets import topk_targets
from pd.train.token_losses import token_kl_topk


def _reference(student: torch.Tensor, teacher: torch.Tensor, k: int, T: float, direction: str) -> torch.Tensor:
    """Bucketed KL per row in float64 from scratch: top-k ids of the teacher, the rest as one bucket."""
    ids = teacher.topk(k, -1).indices
    p, q = torch.softmax(teacher.double() / T, -1), torch.softmax(student / T, -1)
    keep = torch.zeros_like(p, dtype=torch.bool).scatter(-1, ids, True)
    pb = torch.cat([p.gather(-1, ids), (p * ~keep).sum(-1, keepdim=True)], -1)
    qb = torch.cat([q.gather(-1, ids), (q * ~keep).sum(-1, keepdim=True)], -1)
    if direction == "reverse":
        pb, qb = qb, pb
    return (pb * (pb.log() - qb.log())).sum(-1)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_topk_kl_value_and_gradient_match_float64(direction, T, k):
    g = torch.Generator().manual_seed(k)
    n, V = 6, 50
    student = (torch.randn(n, V, generator=g, dtype=torch.float64) * 2.5)
    teacher = torch.randn(n, V, generator=g) * 3.0
    targets = topk_targets(teacher, k, T, logprob_dtype=torch.float32)
    weights = torch.rand(n, generator=g, dtype=torch.float64)  # a non-uniform upstream gradient

    s32 = student.float().requires_grad_(True)
    (token_kl_topk(s32, targets, T, direction) * weights.float()).sum().backward()
    s64 = student.clone().requires_grad_(True)
    ref = _reference(s64, teacher, k, T, direction)
    (ref * weights).sum().backward()

    with torch.no_grad():
        got = token_kl_topk(student.float(), targets, T, direction)
    assert torch.allclose(got.double(), ref.detach(), atol=2e-6, rtol=1e-5)
    assert torch.allclose(s32.grad.double(), s64.grad, atol=2e-6, rtol=1e-4)


def test_bfloat16_logits_get_a_bfloat16_gradient_close_to_float32():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 64, generator=g)
    targets = topk_targets(torch.randn(4, 64, generator=g) * 2, 8, 2.0, logprob_dtype=torch.float32)
    bf = student.bfloat16().requires_grad_(True)
    token_kl_topk(bf, targets, 2.0, "forward").sum().backward()
    fp = student.bfloat16().float().requires_grad_(True)
    token_kl_topk(fp, targets, 2.0, "forward").sum().backward()
    assert bf.grad.dtype == torch.bfloat16
    assert torch.allclose(bf.grad.float(), fp.grad, atol=1e-2)
