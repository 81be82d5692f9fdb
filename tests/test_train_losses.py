"""Losses against an independent float64 reference (numpy loops), with masks and padding."""

import math

import numpy as np
import pytest
import torch

from pd.errors import ConfigError
from pd.train.losses import cross_entropy, cross_entropy_from_hidden, kl_divergence, kl_from_hidden
from pd.train.targets import topk_targets

LENGTHS = [7, 3, 0, 5]  # sample 2 has no answer tokens
B, A, V, H = len(LENGTHS), 7, 97, 16


def _mask():
    return torch.tensor([[j < n for j in range(A)] for n in LENGTHS])


def _softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_kl(s, t, mask, T, direction="forward"):
    """Paper reduction by plain loops in float64."""
    s, t = s.double().numpy(), t.double().numpy()
    per_sample = []
    for b in range(s.shape[0]):
        toks = []
        for j in range(s.shape[1]):
            if not mask[b, j]:
                continue
            p, q = _softmax64(t[b, j] / T), _softmax64(s[b, j] / T)
            if direction == "reverse":
                p, q = q, p
            toks.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))
        if toks:
            per_sample.append(sum(toks) / len(toks))
    return sum(per_sample) / len(per_sample)


def ref_ce(s, labels, mask):
    s = s.double().numpy()
    per_sample = []
    for b in range(s.shape[0]):
        toks = [-math.log(_softmax64(s[b, j])[int(labels[b, j])]) for j in range(s.shape[1]) if mask[b, j]]
        if toks:
            per_sample.append(sum(toks) / len(toks))
    return sum(per_sample) / len(per_sample)


def _logits(seed, pad_value=float("nan")):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, A, V, generator=g) * 3
    x[~_mask()] = pad_value  # padding must never reach the result
    return x


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("chunk", [None, 1, 4, 100])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_kl_matches_float64_reference(direction, chunk, T):
    s, t, mask = _logits(0), _logits(1), _mask()
    got = kl_divergence(s, t, mask, temperature=T, direction=direction, chunk_size=chunk)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert abs(got.item() - ref_kl(s, t, mask, T, direction)) < 1e-6


def test_teacher_in_bfloat16_is_upcast():
    s, t, mask = _logits(0), _logits(1).bfloat16(), _mask()
    got = kl_divergence(s, t, mask, temperature=2.0, chunk_size=3)
    assert abs(got.item() - ref_kl(s, t.float(), mask, 2.0)) < 1e-6


def test_temperature_applies_to_both_sides_and_t2_scale():
    s, t, mask = _logits(2, 0.0), _logits(3, 0.0), _mask()
    at_t = kl_divergence(s, t, mask, temperature=2.0)
    assert torch.allclose(at_t, kl_divergence(s / 2, t / 2, mask, temperature=1.0), atol=1e-6)
    # Only one side scaled would give a different value.
    assert abs(kl_divergence(s / 2, t, mask, temperature=1.0).item() - at_t.item()) > 1e-2
    scaled = kl_divergence(s, t, mask, temperature=2.0, t2_scale=True)
    assert abs(scaled.item() - 4 * ref_kl(s, t, mask, 2.0)) < 4e-6


def test_all_masked_sample_excluded_and_empty_batch():
    s, t, mask = _logits(4, 0.0), _logits(5, 0.0), _mask()
    full = kl_divergence(s, t, mask, temperature=2.0)
    keep = [0, 1, 3]
    assert torch.allclose(full, kl_divergence(s[keep], t[keep], mask[keep], temperature=2.0), atol=1e-7)
    per = kl_divergence(s, t, mask, temperature=2.0, reduction="sample")
    assert math.isnan(per[2].item()) and abs(per[keep].mean().item() - full.item()) < 1e-6
    tok = kl_divergence(s, t, mask, temperature=2.0, reduction="token")
    assert tok.shape == (B, A) and (tok[~mask] == 0).all()
    s = _logits(4).requires_grad_(True)  # NaN padding everywhere must not leak either
    none = kl_divergence(s, t, torch.zeros(B, A, dtype=torch.bool), temperature=2.0)
    assert none.item() == 0.0
    none.backward()  # a batch without answer tokens must not break the step


@pytest.mark.parametrize("chunk", [None, 2])
def test_cross_entropy_matches_reference(chunk):
    s, mask = _logits(6), _mask()
    labels = torch.randint(0, V, (B, A), generator=torch.Generator().manual_seed(7))
    got = cross_entropy(s, labels, mask, chunk_size=chunk)
    assert abs(got.item() - ref_ce(s, labels, mask)) < 1e-6


def _hidden_setup(seed, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, A, H, generator=g)
    head = torch.nn.Linear(H, V, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g) * 0.5)
        if bias:
            head.bias.copy_(torch.randn(V, generator=g))
    return hidden, head


def _grads(loss_fn, hidden, head):
    h = hidden.clone().requires_grad_(True)
    head.zero_grad()
    loss = loss_fn(h, head)
    loss.backward()
    grads = [h.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if head.bias is not None else [])
    return loss.detach(), grads


def _ref64_grads(hidden, head, teacher, mask, T, direction):
    """Float64 autograd through an explicit per-token softmax, a separate implementation."""
    h = hidden.double().clone().requires_grad_(True)
    w = head.weight.detach().double().clone().requires_grad_(True)
    bias = head.bias.detach().double().clone().requires_grad_(True) if head.bias is not None else None
    total, samples = 0.0, 0
    for b in range(B):
        toks = [j for j in range(A) if mask[b, j]]
        if not toks:
            continue
        acc = 0.0
        for j in toks:
            z = h[b, j] @ w.T + (bias if bias is not None else 0.0)
            q = torch.exp(z / T - torch.max(z / T))
            q = q / q.sum()
            p = torch.exp(teacher[b, j].double() / T - torch.max(teacher[b, j].double() / T))
            p = p / p.sum()
            acc = acc + ((p * torch.log(p / q)).sum() if direction == "forward" else (q * torch.log(q / p)).sum())
        total = total + acc / len(toks)
        samples += 1
    loss = total / samples
    loss.backward()
    return loss.detach(), [h.grad, w.grad] + ([bias.grad] if bias is not None else [])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("bias", [False, True])
def test_kl_from_hidden_gradients(direction, bias):
    hidden, head = _hidden_setup(8, bias)
    teacher, mask = _logits(9, 0.0), _mask()
    ref_loss, ref_g = _ref64_grads(hidden, head, teacher, mask, 2.0, direction)
    for chunk in (None, 3, 1000):
        loss, g = _grads(lambda h, m: kl_from_hidden(h, m, teacher, mask, temperature=2.0, direction=direction,
                                                     chunk_size=chunk), hidden, head)
        assert abs(loss.item() - ref_loss.item()) < 1e-6
        for a, r in zip(g, ref_g):
            assert (a.double() - r).abs().max().item() < 1e-6
    # and the chunked value equals kl_divergence on the materialised logits
    with torch.no_grad():
        full = kl_divergence(head(hidden), teacher, mask, temperature=2.0, direction=direction)
    assert abs(full.item() - ref_loss.item()) < 1e-6


def test_cross_entropy_from_hidden_gradients():
    hidden, head = _hidden_setup(10)
    labels = torch.randint(0, V, (B, A), generator=torch.Generator().manual_seed(11))
    mask = _mask()
    loss_a, g_a = _grads(lambda h, m: cross_entropy_from_hidden(h, m, labels, mask, chunk_size=None), hidden, head)
    loss_b, g_b = _grads(lambda h, m: cross_entropy_from_hidden(h, m, labels, mask, chunk_size=2), hidden, head)
    with torch.no_grad():
        ref = ref_ce(head(hidden), labels, mask)
    assert abs(loss_a.item() - ref) < 1e-6 and abs(loss_b.item() - ref) < 1e-6
    for a, b in zip(g_a, g_b):
        assert (a - b).abs().max().item() < 1e-6


# --------------------------------------------------------------------------- cached top-k


def _ref_bucket_kl(s, t, mask, k, T, direction):
    """KL over {teacher's top-k ids} + one rest bucket, by loops in float64."""
    s, t = s.double().numpy(), t.double().numpy()
    per_sample = []
    for b in range(s.shape[0]):
        toks = []
        for j in range(s.shape[1]):
            if not mask[b, j]:
                continue
            top = np.argsort(-t[b, j], kind="stable")[:k]
            p, q = _softmax64(t[b, j] / T), _softmax64(s[b, j] / T)
            pb = list(p[top]) + [1.0 - p[top].sum()]
            qb = list(q[top]) + [1.0 - q[top].sum()]
            if direction == "reverse":
                pb, qb = qb, pb
            toks.append(sum(x * math.log(x / y) for x, y in zip(pb, qb) if x > 0))
        if toks:
            per_sample.append(sum(toks) / len(toks))
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_with_k_equal_vocab_equals_full_loss_and_gradient(direction):
    hidden, head = _hidden_setup(12)
    teacher, mask = _logits(13, 0.0), _mask()
    targets = topk_targets(teacher, V, 2.0, logprob_dtype=torch.float32)
    assert targets.k == V and torch.isinf(targets.log_rest_t).all()
    loss_full, g_full = _grads(lambda h, m: kl_from_hidden(h, m, teacher, mask, direction=direction), hidden, head)
    loss_top, g_top = _grads(lambda h, m: kl_from_hidden(h, m, targets, mask, direction=direction), hidden, head)
    assert abs(loss_full.item() - loss_top.item()) < 1e-6
    for a, b in zip(g_full, g_top):
        assert (a - b).abs().max().item() < 1e-6
    # float16 storage (the compact default) stays close
    half = topk_targets(teacher, V, 2.0)
    assert half.logprobs.dtype == torch.float16
    with torch.no_grad():
        approx = kl_from_hidden(hidden, head, half, mask, direction=direction)
    assert abs(approx.item() - loss_full.item()) < 2e-3


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_rest_bucket_matches_reference(direction, T):
    s, t, mask = _logits(14, 0.0), _logits(15, 0.0), _mask()
    k = 5
    targets = topk_targets(t, k, 2.0, logprob_dtype=torch.float32)
    got = kl_divergence(s, targets, mask, temperature=T, direction=direction, chunk_size=3)
    assert abs(got.item() - _ref_bucket_kl(s, t, mask, k, T, direction)) < 1e-6
    # the bucketed KL is a lower bound of the full one (data processing inequality)
    assert got.item() <= kl_divergence(s, t, mask, temperature=T, direction=direction).item() + 1e-6


def test_covered_mass_reported():
    t, mask = _logits(16, 0.0), _mask()
    k = 10
    targets = topk_targets(t, k, 2.0)
    for T in (1.0, 2.0):
        got = targets.covered_mass(T)
        for b in range(B):
            for j in range(LENGTHS[b]):
                p = _softmax64(t[b, j].double().numpy() / T)
                assert abs(got[b, j].item() - np.sort(p)[::-1][:k].sum()) < 1e-6
    # a higher temperature flattens the teacher: less mass in the top-k
    assert targets.covered_mass(2.0)[mask].mean() < targets.covered_mass(1.0)[mask].mean()
    with pytest.raises(ConfigError, match="temperature 2.0"):
        targets.covered_mass(3.0)


def test_bad_arguments_are_refused():
    s, t, mask = _logits(0, 0.0), _logits(1, 0.0), _mask()
    # Wrong arguments reaching the losses are bugs (settings are validated before): ValueError, not PDError.
    with pytest.raises(ValueError, match="forward"):
        kl_divergence(s, t, mask, direction="sideways")
    with pytest.raises(ValueError, match="teacher logits"):
        kl_divergence(s, t[..., :50], mask)
    with pytest.raises(ValueError, match="bool"):
        kl_divergence(s, t, mask.long())
    with pytest.raises(ValueError, match="temperature"):
        kl_divergence(s, t, mask, temperature=0.0)


def test_chunked_from_hidden_saves_no_full_logits():
    """What autograd keeps for backward stays at chunk size: no [B*A, V] tensor is saved."""
    g = torch.Generator().manual_seed(20)
    n_tok, vocab, chunk = 64, 301, 8
    hidden = torch.randn(1, n_tok, H, generator=g, requires_grad=True)
    head = torch.nn.Linear(H, vocab, bias=False)
    teacher = torch.randn(1, n_tok, vocab, generator=g)
    mask = torch.ones(1, n_tok, dtype=torch.bool)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = kl_from_hidden(hidden, head, teacher, mask, chunk_size=chunk)
    assert max(sizes) < chunk * vocab  # only chunk inputs and per-token values are kept between passes
    sizes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kl_from_hidden(hidden, head, teacher, mask, chunk_size=None)
    assert max(sizes) >= n_tok * vocab  # the unchunked path does keep full logits (the check can fail)
    loss.backward()
