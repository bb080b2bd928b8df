"""The fused, chunked head + cross-entropy (model/loss.py) against the plain
F.cross_entropy(F.linear(h, W).float()) path: same loss, same gradients, never the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model.loss import IGNORE_INDEX, compile_loss_kernel, linear_cross_entropy

TOKENS, DIM, VOCAB = 37, 16, 300


def inputs(seed: int = 0, ignored: int = 5):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(TOKENS, DIM, generator=gen)
    weight = torch.randn(VOCAB, DIM, generator=gen) * 0.3
    targets = torch.randint(0, VOCAB, (TOKENS,), generator=gen)
    targets[torch.randperm(TOKENS, generator=gen)[:ignored]] = IGNORE_INDEX
    return h, weight, targets


def plain(h, weight, targets):
    h, weight = h.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach(), h.grad, weight.grad


def fused(h, weight, targets, **kwargs):
    h, weight = h.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, targets, **kwargs)
    loss.backward()
    return loss.detach(), h.grad, weight.grad


@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 64])
def test_fp32_loss_and_gradients_equal_the_plain_path_for_any_chunking(chunk):
    h, weight, targets = inputs()
    expected = plain(h, weight, targets)
    got = fused(h, weight, targets, chunk=chunk)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_shares_of_the_tokens_with_the_whole_count_add_up_to_the_whole_loss():
    """What each sequence-parallel rank computes (model/parallelize.py sequence_parallel_head_loss):
    its share of the tokens divided by the whole batch's count of targets. The shares' losses and
    weight gradients add up to the whole batch's; the hidden-state gradients are the whole's rows."""
    h, weight, targets = inputs()
    whole = plain(h, weight, targets)
    n_valid = (targets != IGNORE_INDEX).sum()
    shares = [fused(h[rows], weight, targets[rows], chunk=8, n_valid=n_valid) for rows in (slice(0, 20), slice(20, TOKENS))]
    torch.testing.assert_close(shares[0][0] + shares[1][0], whole[0])
    torch.testing.assert_close(torch.cat([shares[0][1], shares[1][1]]), whole[1])
    torch.testing.assert_close(shares[0][2] + shares[1][2], whole[2])
    with torch.no_grad():  # evaluation: the same share
        torch.testing.assert_close(linear_cross_entropy(h[:20], weight, targets[:20], n_valid=n_valid), shares[0][0])


def test_ignored_targets_add_nothing_and_do_not_count_in_the_mean():
    h, weight, targets = inputs(ignored=0)
    keep = torch.arange(TOKENS) % 3 != 0
    masked = torch.where(keep, targets, IGNORE_INDEX)
    loss, grad_h, _ = fused(h, weight, masked, chunk=8)
    kept_loss, _, _ = plain(h[keep], weight, targets[keep])
    torch.testing.assert_close(loss, kept_loss)
    assert (grad_h[~keep] == 0).all() and (grad_h[keep] != 0).any()


def test_an_all_ignored_batch_is_nan_with_zero_gradients_as_f_cross_entropy():
    """No target to average over: the loss is NaN (not a silent 0.0) and the gradients are zero,
    as F.cross_entropy gives, in training and in evaluation."""
    h, weight, _ = inputs()
    ignored = torch.full((TOKENS,), IGNORE_INDEX)
    loss, grad_h, grad_w = fused(h, weight, ignored, chunk=8)
    plain_loss, plain_h, plain_w = plain(h, weight, ignored)
    assert loss.isnan() and plain_loss.isnan()
    assert torch.equal(grad_h, plain_h) and torch.equal(grad_w, plain_w) and not grad_h.any()
    with torch.no_grad():
        assert linear_cross_entropy(h, weight, ignored).isnan()


def test_upstream_gradient_scales_the_saved_gradients():
    h, weight, targets = inputs()
    a = h.clone().requires_grad_()
    (3.0 * linear_cross_entropy(a, weight, targets, chunk=8)).backward()
    _, grad_h, _ = fused(h, weight, targets, chunk=8)
    torch.testing.assert_close(a.grad, 3.0 * grad_h)


def test_bf16_autocast_matches_the_plain_autocast_path_and_keeps_fp32_grads():
    h, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(h, weight, targets)
        got = fused(h, weight, targets, chunk=8)
    assert got[1].dtype == got[2].dtype == torch.float32
    torch.testing.assert_close(got[0], expected[0], atol=2e-3, rtol=0)
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=5e-2)


def test_evaluation_without_grad_gives_the_same_loss():
    h, weight, targets = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(h, weight, targets, chunk=8)
    torch.testing.assert_close(loss, plain(h, weight, targets)[0])


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_builds_the_full_logits():
    h, weight, targets = inputs()
    a, w = h.clone().requires_grad_(), weight.clone().requires_grad_()
    with LargestTensor() as seen:
        linear_cross_entropy(a, w, targets, chunk=8).backward()
    # The largest tensors are the weight-sized gradient and one chunk's logits, not tokens x vocab.
    assert seen.largest == max(VOCAB * DIM, 8 * VOCAB) < TOKENS * VOCAB
    with LargestTensor() as seen_plain:
        plain(h, weight, targets)
    assert seen_plain.largest == TOKENS * VOCAB  # the check would see full logits


@pytest.mark.slow
def test_compiled_kernel_matches_the_eager_kernel():
    h, weight, targets = inputs()
    expected = fused(h, weight, targets, chunk=8)
    got = fused(h, weight, targets, chunk=8, kernel=compile_loss_kernel())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
