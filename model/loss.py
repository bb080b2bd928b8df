"""The output head and the next-token cross-entropy, fused and chunked.

The plain way — logits = h @ W.T for every token, upcast to fp32, cross_entropy, backward — writes
and re-reads a (tokens x vocab) fp32 tensor four or five times: the upcast, log_softmax, the zeroed
gradient cross_entropy scatters into, the log_softmax backward and the downcast. At vocab 32000 that
is 128 KB per token, more memory traffic than the head's matmuls have arithmetic on a CPU, and on a
GPU the largest activation of the whole model (8 GB for a 2048 x 32 batch).

Here the tokens go through the head in chunks of `CHUNK_TOKENS`. For each chunk the logits exist
only while the chunk is processed: the loss and the gradient of the logits (softmax minus one-hot,
which needs nothing but the logits) are computed at once, and the gradient is pushed straight
through the head's two matmuls. Forward therefore already holds dL/dh and dL/dW, and backward only
scales them by the incoming gradient. This is the idea of Liger-Kernel's FusedLinearCrossEntropy and
of torchtitan's chunked loss, written with torch ops only; `compile_loss_kernel` lets inductor fuse
the per-chunk softmax work into one pass (model/distributed.compile_blocks does it with --compile).

Numerics: the matmuls run in the autocast dtype (bf16) as the plain head's would, the softmax, loss
and dW accumulation in fp32. Tokens whose target is IGNORE_INDEX count neither in the loss nor in
its mean, as with F.cross_entropy(ignore_index=-100); a batch whose every target is ignored has no
mean: the loss is NaN (0/0) and the gradients zero, exactly F.cross_entropy's behaviour (the trainer
skips a step whose loss or gradient norm is not finite, model/train.py).

Under tensor parallelism (model/parallelize.py sequence_parallel_head_loss) each rank runs it on its
share of the sequence with its local copy of the head's weight, and `n_valid` is the group's count
of targets, so that the ranks' losses add up to the batch's mean.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# 256 tokens x 32000 vocab x 4 bytes = 32 MB of fp32 logits per chunk: large enough for efficient
# matmuls (measured on 2 CPU cores: 128 and 512 are slower or no faster), small next to full logits.
CHUNK_TOKENS = 256

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def loss_and_logit_grad(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For one chunk: the summed cross-entropy of `logits` (chunk, vocab) against `targets`, and
    d(scale * summed loss)/d(logits) = scale * (softmax - one_hot), zero on ignored rows, returned
    in the logits' dtype (it feeds the head's backward matmuls). In place on one fp32 copy of the
    logits (which are `logits` themselves when already fp32: the caller must not reuse them):
    five passes in eager mode, where the functional form takes eight and is 40% slower."""
    valid = targets != IGNORE_INDEX
    safe_targets = torch.where(valid, targets, 0)[:, None]
    lf = logits.float()
    log_normalizer = torch.logsumexp(lf, -1, keepdim=True)
    loss = ((log_normalizer - lf.gather(1, safe_targets)).squeeze(1) * valid).sum()
    grad = lf.sub_(log_normalizer).exp_()  # softmax
    grad.scatter_add_(1, safe_targets, torch.full_like(log_normalizer, -1.0))  # minus one-hot
    grad.mul_(scale * valid[:, None])
    return loss, grad.to(logits.dtype)


def _loss_and_logit_grad_for_inductor(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as loss_and_logit_grad, written for inductor: functional, with the one-hot as a
    comparison it fuses into the softmax pass (an in-place scatter would be a kernel of its own).
    Slow in eager mode (eight passes), 1.5x faster than the in-place form once compiled."""
    lf = logits.float()
    valid = targets != IGNORE_INDEX
    safe_targets = torch.where(valid, targets, 0)
    row_max = lf.amax(-1, keepdim=True)
    exp = (lf - row_max).exp()
    total = exp.sum(-1, keepdim=True)
    loss = ((row_max + total.log() - lf.gather(1, safe_targets[:, None])).squeeze(1) * valid).sum()
    one_hot = torch.arange(lf.shape[1], device=lf.device)[None, :] == safe_targets[:, None]
    grad = (exp / total - one_hot.float()) * (scale * valid[:, None])
    return loss, grad.to(logits.dtype)


def compile_loss_kernel() -> Kernel:
    """The per-chunk kernel through inductor: fused passes, 3-4x faster than eager on CPU.
    Static shapes: a batch has at most two chunk sizes (full and the remainder)."""
    return torch.compile(_loss_and_logit_grad_for_inductor, dynamic=False)


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, kernel: Kernel, chunk: int,
                n_valid: torch.Tensor):
        dtype = _compute_dtype(h, weight)
        h_c, w_c = h.to(dtype), weight.to(dtype)
        scale = 1.0 / n_valid.clamp(min=1).to(torch.float32)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h_c)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, h.shape[0], chunk):
            rows = h_c[start:start + chunk]
            chunk_loss, grad_logits = kernel(rows @ w_c.T, targets[start:start + chunk], scale)
            loss += chunk_loss
            grad_h[start:start + chunk] = grad_logits @ w_c
            grad_w += grad_logits.T @ rows  # bf16 matmul, fp32 accumulation across chunks
        ctx.save_for_backward(grad_h.to(h.dtype), grad_w.to(weight.dtype))
        return torch.where(n_valid > 0, loss * scale, torch.nan)  # every target ignored: NaN, as F.cross_entropy

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_loss.to(grad_h.dtype), grad_w * grad_loss.to(grad_w.dtype), None, None, None, None


def linear_cross_entropy(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, kernel: Kernel = loss_and_logit_grad,
    chunk: int = CHUNK_TOKENS, n_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of logits = h @ weight.T, without materializing the logits.
    h: (tokens, dim), weight: (vocab, dim), targets: (tokens,) with IGNORE_INDEX to skip.
    Equal to F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=-100).
    n_valid: the mean's denominator when these tokens are a share of the batch (sequence-parallel
    ranks: model/parallelize.py); default the targets not ignored here."""
    if n_valid is None:
        n_valid = (targets != IGNORE_INDEX).sum()
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, kernel, chunk, n_valid)
    # Evaluation: the loss alone, still chunk by chunk.
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk):
        logits = F.linear(h[start:start + chunk], weight).float()
        total += F.cross_entropy(logits, targets[start:start + chunk], ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n_valid
