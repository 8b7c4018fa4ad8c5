import math

import pytest
import torch

from models.criterion import SegVGLoss, dice_loss, focal_loss, positive_factor, segmentation_terms_direct


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def giou_by_hand(a, b):
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def xyxy(c):
    return [c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2]


def test_terms_on_a_single_mask():
    prob = torch.tensor([0.9, 0.2, 0.6, 0.1])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected_focal = (0.25 * 0.1 ** 2 * -math.log(0.9) + 0.75 * 0.2 ** 2 * -math.log(0.8)
                      + 0.25 * 0.4 ** 2 * -math.log(0.6) + 0.75 * 0.1 ** 2 * -math.log(0.9)) / 4
    assert focal_loss(prob, target).item() == pytest.approx(expected_focal, rel=1e-6)
    assert dice_loss(prob, target).item() == pytest.approx(1 - 2 * 1.5 / (1.8 + 2), rel=1e-6)
    assert positive_factor(prob, target).item() == pytest.approx(1 + (1 - 0.75) ** 2, rel=1e-6)
    # An empty ground-truth mask divides by 1, not 0.
    assert positive_factor(prob, torch.zeros(4)).item() == pytest.approx(2.0)


def test_full_loss_against_hand_computation():
    """2 layers x 2 seg queries x 2 samples; constant logits per mask, so the bilinear upsampling
    leaves p = sigmoid(logit) on every canvas pixel and every term has a closed form."""
    layers, queries, batch, size = 2, 2, 2, 4
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]], [[-0.3, 1.5], [0.7, -2.0]]])  # [layers, Q, B]
    seg = logits[..., None, None].expand(-1, -1, -1, 2, 2).clone()
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.6], [0.3, 0.6, 0.2, 0.3]],
                          [[0.45, 0.55, 0.5, 0.5], [0.35, 0.6, 0.3, 0.2]]])  # [layers, B, 4]
    target = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.625, 0.5, 0.25]])
    pos_region = torch.zeros(batch, size, size, dtype=torch.bool)
    pos_region[0, 1:3, 1:3] = True  # 4 of 16 pixels
    pos_region[1, 2:3, 0:2] = True  # 2 of 16 pixels
    losses = SegVGLoss()({"aux_boxes": boxes, "aux_seg_logits": seg}, target, pos_region)

    inside = [4, 2]
    focal = dice = l1 = giou = 0.0
    for layer in range(layers):
        for b in range(batch):
            factors = []
            for q in range(queries):
                p, n_pos = sigmoid(logits[layer, q, b].item()), inside[b]
                n_neg = size * size - n_pos
                focal += (n_pos * 0.25 * (1 - p) ** 2 * -math.log(p)
                          + n_neg * 0.75 * p ** 2 * -math.log(1 - p)) / (size * size)
                factor = 1 + (1 - p) ** 2
                dice += (1 - 2 * p * n_pos / (p * size * size + n_pos)) * factor
                factors.append(factor)
            weight = sum(factors) / queries
            pred, gt = boxes[layer, b].tolist(), target[b].tolist()
            l1 += weight * sum(abs(x - y) for x, y in zip(pred, gt))
            giou += weight * (1 - giou_by_hand(xyxy(pred), xyxy(gt)))
    expected = {"loss_focal": focal / batch, "loss_dice": dice / batch, "loss_bbox": 5 * l1 / batch,
                "loss_giou": 2 * giou / batch}
    expected["loss"] = sum(expected.values())
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value, rel=1e-5), key


def test_pos_factor_gradient_flows_into_masks_unless_detached():
    torch.manual_seed(0)
    target = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    pos_region = torch.zeros(1, 8, 8, dtype=torch.bool)
    pos_region[0, 2:6, 2:6] = True
    boxes = torch.tensor([[[0.4, 0.5, 0.3, 0.5]]], requires_grad=True)

    def seg_grad_from_box_terms(detach):
        seg = torch.randn(1, 1, 1, 2, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
        losses = SegVGLoss(detach_pos_factor=detach)({"aux_boxes": boxes, "aux_seg_logits": seg}, target,
                                                     pos_region)
        (losses["loss_bbox"] + losses["loss_giou"]).backward()
        return seg.grad

    assert seg_grad_from_box_terms(False).abs().sum() > 0
    assert seg_grad_from_box_terms(True) is None


def test_seg_loss_off_is_the_unweighted_box_loss():
    torch.manual_seed(0)
    boxes = (torch.rand(3, 2, 4) * 0.4 + 0.3).requires_grad_()
    target = torch.rand(2, 4) * 0.4 + 0.3
    seg = torch.randn(3, 5, 2, 4, 4, requires_grad=True)
    pos_region = torch.zeros(2, 16, 16, dtype=torch.bool)
    pos_region[:, 4:12, 2:9] = True
    outputs = {"aux_boxes": boxes, "aux_seg_logits": seg}
    off = SegVGLoss(seg_loss=False)(outputs, target, pos_region)
    on = SegVGLoss()(outputs, target, pos_region)
    assert off["loss_focal"].item() == off["loss_dice"].item() == 0
    l1 = sum(abs(b - t) for layer in boxes.tolist() for pred, gt in zip(layer, target.tolist())
             for b, t in zip(pred, gt))
    assert off["loss_bbox"].item() == pytest.approx(5 * l1 / 2, rel=1e-6)
    # With the segmentation loss, each layer's box terms are weighted by its masks' mean positive factor.
    _, _, factor = segmentation_terms_direct(seg.detach(), pos_region)
    weight = factor.mean(1)  # [layers, B]
    l1_each = (boxes.detach() - target).abs().sum(-1)
    assert on["loss_bbox"].item() == pytest.approx(5 * (weight * l1_each).sum().item() / 2, rel=1e-5)
    off["loss"].backward()
    assert seg.grad is None


def test_mask_and_dice_coefficients_scale_only_their_terms():
    torch.manual_seed(1)
    boxes = torch.rand(3, 2, 4) * 0.4 + 0.3
    target = torch.rand(2, 4) * 0.4 + 0.3
    seg = torch.randn(3, 5, 2, 4, 4)
    pos_region = torch.zeros(2, 16, 16, dtype=torch.bool)
    pos_region[:, 3:11, 5:14] = True
    outputs = {"aux_boxes": boxes, "aux_seg_logits": seg}
    plain = SegVGLoss()(outputs, target, pos_region)
    weighted = SegVGLoss(weight_focal=3.0, weight_dice=0.5)(outputs, target, pos_region)
    assert weighted["loss_focal"].item() == pytest.approx(3.0 * plain["loss_focal"].item(), rel=1e-6)
    assert weighted["loss_dice"].item() == pytest.approx(0.5 * plain["loss_dice"].item(), rel=1e-6)
    for key in ("loss_bbox", "loss_giou"):
        assert weighted[key].item() == plain[key].item()
