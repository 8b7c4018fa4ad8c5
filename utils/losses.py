"""SegVG training loss (SPEC §3): box -> mask supervision re-weighting deep-supervised box losses."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


def focal_loss(prob, target, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss written on probabilities, averaged over pixels: [..., P] -> [...]"""
    ce = F.binary_cross_entropy(prob, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(-1)


def dice_loss(prob, target, eps=1e-8):
    """[..., P] -> [...]"""
    numerator = 2 * (prob * target).sum(-1) + eps
    return 1 - numerator / (prob.sum(-1) + target.sum(-1) + eps)


def positive_factor(prob, target):
    """1 + (1 - r)^2, r = mean predicted probability inside the ground-truth box: [..., P] -> [...]"""
    inside = (prob * target).sum(-1) / target.sum(-1).clamp(min=1)
    return 1 + (1 - inside) ** 2


class SegVGLoss(nn.Module):
    """Focal + dice on every (decoder layer, segmentation query) mask, L1 x5 + GIoU x2 on every layer's
    box weighted by the mask fit, all summed and divided by the batch size."""

    def __init__(self, detach_pos_factor=False, weight_l1=5.0, weight_giou=2.0):
        super().__init__()
        self.detach_pos_factor = detach_pos_factor
        self.weight_l1 = weight_l1
        self.weight_giou = weight_giou

    def forward(self, outputs, target, pos_region):
        """outputs: the model's training outputs; target [B, 4] cx,cy,w,h; pos_region [B, S, S]."""
        # Always fp32: binary cross-entropy on probabilities is not autocast-safe.
        with torch.autocast(target.device.type, enabled=False):
            return self._losses(outputs["aux_boxes"].float(), outputs["aux_seg_logits"].float(), target.float(),
                                pos_region)

    def _losses(self, boxes, seg, target, pos_region):
        """boxes [layers, B, 4], seg [layers, Q, B, g, g]"""
        layers, queries, batch = seg.shape[:3]
        # Upsample to the canvas before the sigmoid, as the original does.
        logits = F.interpolate(seg.flatten(0, 2)[:, None], size=pos_region.shape[-2:], mode="bilinear",
                               align_corners=False)
        prob = logits.sigmoid().view(layers, queries, batch, -1)  # [layers, Q, B, S*S]
        gt_mask = pos_region.flatten(1).to(prob.dtype).expand_as(prob)

        pos_factor = positive_factor(prob, gt_mask)  # [layers, Q, B]
        if self.detach_pos_factor:
            pos_factor = pos_factor.detach()
        box_weight = pos_factor.mean(1)  # [layers, B]

        gt = target.expand_as(boxes)
        l1 = (boxes - gt).abs().sum(-1)
        pred_xyxy = box_convert(boxes.flatten(0, 1), "cxcywh", "xyxy")
        gt_xyxy = box_convert(gt.flatten(0, 1), "cxcywh", "xyxy")
        giou = generalized_box_iou(pred_xyxy, gt_xyxy).diagonal().view(layers, batch)

        losses = {
            "loss_focal": focal_loss(prob, gt_mask).sum() / batch,
            "loss_dice": (dice_loss(prob, gt_mask) * pos_factor).sum() / batch,
            "loss_bbox": self.weight_l1 * (box_weight * l1).sum() / batch,
            "loss_giou": self.weight_giou * (box_weight * (1 - giou)).sum() / batch,
        }
        losses["loss"] = sum(losses.values())
        return losses


def build_criterion(args):
    return SegVGLoss(detach_pos_factor=args.detach_pos_factor)
