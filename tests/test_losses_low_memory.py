"""The low-memory segmentation terms (models.mask_statistics) against the direct formulation: values and
gradients on random shapes, ragged, empty and full boxes, saturated logits, both pos-factor modes, autocast."""
import pytest
import torch

from models.criterion import SegVGLoss, segmentation_terms, segmentation_terms_direct
from models.mask_statistics import interpolation_matrix, mask_statistics


def random_case(seed, layers, queries, batch, grid, size, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    seg = torch.randn(layers, queries, batch, grid, grid, generator=g) * scale
    pos_region = torch.zeros(batch, size, size, dtype=torch.bool)
    for b in range(batch):
        x1, y1 = torch.randint(0, size - 1, (2,), generator=g).tolist()
        x2, y2 = x1 + 1 + torch.randint(0, size - x1, (1,), generator=g).item(), y1 + 1 + torch.randint(
            0, size - y1, (1,), generator=g).item()
        pos_region[b, y1:y2, x1:x2] = True
    boxes = torch.rand(layers, batch, 4, generator=g) * 0.4 + 0.3
    target = torch.rand(batch, 4, generator=g) * 0.4 + 0.3
    return seg, pos_region, boxes, target


def terms_and_grad(fn, seg, pos_region, weights):
    seg = seg.clone().requires_grad_()
    terms = fn(seg, pos_region)
    sum((t * w).sum() for t, w in zip(terms, weights)).backward()
    return [t.detach() for t in terms], seg.grad


@pytest.mark.parametrize("seed, layers, queries, batch, grid, size, scale", [
    (0, 2, 3, 2, 4, 32, 3.0),
    (1, 1, 1, 3, 5, 40, 1.0),     # stride 8
    (2, 3, 2, 1, 2, 64, 10.0),    # stride 32
    (3, 2, 5, 2, 4, 64, 40.0),    # saturated: p rounds to 0 and 1, the log clamp and the 1e-12 floor act
    (4, 6, 5, 2, 20, 640, 3.0),   # the paper's canvas: several chunks per sample
])
@pytest.mark.device
def test_terms_and_gradients_match_the_direct_formulation(seed, layers, queries, batch, grid, size, scale, device):
    seg, pos_region, _, _ = random_case(seed, layers, queries, batch, grid, size, scale)
    seg, pos_region = seg.to(device), pos_region.to(device)
    if batch > 1:
        pos_region[-1] = False  # an empty box
    if batch > 2:
        pos_region[0] = True  # a box covering the whole canvas
    weights = torch.randn(3, layers, queries, batch, generator=torch.Generator().manual_seed(seed + 100)).to(device)
    ours, grad = terms_and_grad(segmentation_terms, seg, pos_region, weights)
    ref, grad_ref = terms_and_grad(segmentation_terms_direct, seg, pos_region, weights)
    for name, a, b in zip(("focal", "dice", "pos_factor"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-7 * grad_ref.abs().max().item())


@pytest.mark.parametrize("detach", [False, True])
def test_full_loss_matches_including_box_gradients(detach):
    seg, pos_region, boxes, target = random_case(5, 3, 5, 3, 4, 64)
    results = []
    for low_memory in (True, False):
        s, b = seg.clone().requires_grad_(), boxes.clone().requires_grad_()
        losses = SegVGLoss(detach_pos_factor=detach, low_memory=low_memory)(
            {"aux_boxes": b, "aux_seg_logits": s}, target, pos_region)
        losses["loss"].backward()
        results.append(({k: v.item() for k, v in losses.items()}, s.grad, b.grad))
    (ours, seg_grad, box_grad), (ref, seg_grad_ref, box_grad_ref) = results
    assert ours == pytest.approx(ref, rel=1e-6)
    torch.testing.assert_close(seg_grad, seg_grad_ref, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(box_grad, box_grad_ref)


def test_fp32_under_autocast():
    seg, pos_region, boxes, target = random_case(6, 2, 5, 2, 4, 64)
    outputs = {"aux_boxes": boxes.bfloat16(), "aux_seg_logits": seg.bfloat16().requires_grad_()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = SegVGLoss()(outputs, target, pos_region)
    assert losses["loss"].dtype == torch.float32
    losses["loss"].backward()
    ref = SegVGLoss(low_memory=False)({"aux_boxes": boxes.bfloat16().float(),
                                       "aux_seg_logits": seg.bfloat16().float()}, target, pos_region)
    assert losses["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-6)
    assert outputs["aux_seg_logits"].grad.dtype == torch.bfloat16


def test_exact_gradient_in_float64():
    logits = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.zeros(2, 7, 9, dtype=torch.bool)
    target[0, 1:5, 2:8] = True
    assert torch.autograd.gradcheck(lambda z: mask_statistics(z, target), (logits,))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32])
def test_no_gradient_needed_and_any_mask_dtype(dtype):
    seg, pos_region, _, _ = random_case(7, 2, 2, 2, 4, 32)
    with torch.no_grad():
        terms = segmentation_terms(seg, pos_region.to(dtype))
    ref = segmentation_terms_direct(seg, pos_region)
    for a, b in zip(terms, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(t.grad_fn is None for t in terms)


@pytest.mark.parametrize("out_size, in_size", [(64, 4), (640, 20), (30, 7), (5, 5)])
def test_interpolation_matrix_is_f_interpolate(out_size, in_size):
    z = torch.randn(3, in_size, in_size, dtype=torch.float64)
    a = interpolation_matrix(out_size, in_size, torch.float64, "cpu")
    expected = torch.nn.functional.interpolate(z[:, None], size=(out_size, out_size), mode="bilinear",
                                               align_corners=False)[:, 0]
    torch.testing.assert_close(a @ z @ a.T, expected)
