"""Per-mask sums of the upsampled segmentation logits, without keeping anything at full resolution.

The SegVG loss needs only three sums per mask of the canvas-size probabilities p = sigmoid(upsample(z)) and the
box mask t: sum(p), sum(p * t) and the focal sum. ``mask_statistics`` computes them chunk by chunk (a few masks,
or on small canvases a few samples' masks, at a time, so the work stays in cache) and, when a gradient is needed,
the exact Jacobian of each sum with respect to the low-resolution logits z (3 x g x g numbers per mask) in the same
pass. Backward is then a weighted sum of those Jacobians: no full-resolution tensor is saved and nothing is
recomputed.

Every formula repeats what autograd does for the direct formulation in ``models.criterion`` (binary cross-entropy
on probabilities with its log clamp at -100 and its 1e-12 floor in the backward), so values and gradients
agree with it to float rounding, saturated logits included.
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

BCE_LOG_FLOOR = -100.0  # torch.nn.functional.binary_cross_entropy clamps log(p) here
BCE_GRAD_EPS = 1e-12  # ... and divides its gradient by max(p (1 - p), 1e-12)
CHUNK_PIXELS = 1 << 20  # ~4 MB per temporary in float32: the chunk's temporaries stay in the CPU's cache


def interpolation_matrix(out_size, in_size, dtype, device):
    """[out, in] matrix of 1-D bilinear interpolation with align_corners=False (F.interpolate's weights): the
    adjoint of the upsampling is A_h.T @ g @ A_w (13x faster on CPU than ATen's upsample backward)."""
    src = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = src - low
    rows = torch.arange(out_size)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((rows, low), 1 - frac, accumulate=True)
    matrix.index_put_((rows, high), frac, accumulate=True)
    return matrix.to(dtype=dtype, device=device)


class MaskStatistics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, alpha):
        """logits [B, M, g, g] (M masks per sample), target [B, H, W] binary (nonzero = inside) -> [B, M, 3]:
        sum(p), sum(p * t), sum(focal) over the H x W upsampled pixels of each mask."""
        batch, masks, grid_h, grid_w = logits.shape
        height, width = target.shape[-2:]
        dtype, device = logits.dtype, logits.device
        a_h = interpolation_matrix(height, grid_h, dtype, device)
        a_w = interpolation_matrix(width, grid_w, dtype, device)
        need_grad = ctx.needs_input_grad[0]
        stats = logits.new_empty(batch, masks, 3)
        jacobians = logits.new_empty(batch, masks, 3, grid_h, grid_w) if need_grad else None
        # Whole samples per chunk where their masks fit (small canvases: one chunk for the batch, not a loop of
        # tiny ops per sample), else a few masks of one sample at a time.
        samples = max(1, CHUNK_PIXELS // (masks * height * width))
        chunk = masks if samples > 1 else max(1, CHUNK_PIXELS // (height * width))
        for b in range(0, batch, samples):
            rows = slice(b, b + samples)
            positive = target[rows, None] != 0  # [s, 1, H, W]
            t = positive.to(dtype)
            alpha_t = alpha * t + (1 - alpha) * (1 - t)
            alpha_sign = alpha_t * (2 * t - 1)  # alpha_t * d p_t / d p
            for start in range(0, masks, chunk):
                cols = slice(start, start + chunk)
                part = logits[rows, cols]  # [s, c, g, g]
                # F.interpolate, not a_h @ z @ a_w.T: the same rounding as the direct formulation, which matters
                # where p rounds to 0 or 1 and the cross-entropy's log jumps to its clamp.
                z = F.interpolate(part.flatten(0, 1)[:, None], size=(height, width), mode="bilinear",
                                  align_corners=False).view(*part.shape[:2], height, width)  # [s, c, H, W]
                p = z.sigmoid_()
                one_minus_p = 1 - p
                stats[rows, cols, 0] = p.sum((2, 3))
                stats[rows, cols, 1] = (p * t).sum((2, 3))
                # As binary_cross_entropy: log(p) for positives, log1p(-p) for negatives, floored at -100.
                log_p_t = torch.where(positive, p.log(), torch.log1p(-p)).clamp_(min=BCE_LOG_FLOOR)
                q = 1 - torch.where(positive, p, one_minus_p)  # 1 - p_t, rounded as the direct formulation does
                q_sq = q * q  # focal = -alpha_t (1 - p_t)^2 log(p_t)
                stats[rows, cols, 2] = -(q_sq * log_p_t * alpha_t).sum((2, 3))
                if not need_grad:
                    continue
                slope = one_minus_p.mul_(p)  # sigmoid'(z) = (1 - p) p, as sigmoid's backward computes it
                # d focal / d z = alpha_t * sign * q * (2 log(p_t) (1 - p) p - q^2 r): r = 1 unless (1 - p) p
                # < 1e-12, where the cross-entropy's backward floor scales its part by (1 - p) p / 1e-12.
                floor_ratio = slope / slope.clamp(min=BCE_GRAD_EPS)
                d_focal = (2 * log_p_t * slope).sub_(q_sq.mul_(floor_ratio)).mul_(q).mul_(alpha_sign)
                maps = torch.stack([slope, slope * t, d_focal], dim=2)  # [s, c, 3, H, W]
                jacobians[rows, cols] = a_h.T @ maps @ a_w
        if need_grad:
            ctx.save_for_backward(jacobians)
        return stats

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_stats):
        (jacobians,) = ctx.saved_tensors
        grad = torch.einsum("bmk,bmkhw->bmhw", grad_stats, jacobians)
        return grad, None, None


def mask_statistics(logits, target, alpha=0.25):
    """logits [B, M, g, g], target [B, H, W] (binary box masks, any dtype) -> sums [B, M, 3] of p, p * t and the
    focal term (alpha for positives, 1 - alpha for negatives, gamma 2) over the bilinearly upsampled masks."""
    return MaskStatistics.apply(logits, target, alpha)
