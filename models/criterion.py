"""SegVG training loss (docs/original.md, "Loss"): box -> mask supervision re-weighting deep-supervised box losses."""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from .mask_losses import build_fine_mask_loss
from .mask_statistics import mask_statistics

FOCAL_ALPHA = 0.25
DICE_EPS = 1e-8


def dice_from_sums(sum_pt, sum_p, sum_t):
    return 1 - (2 * sum_pt + DICE_EPS) / (sum_p + sum_t + DICE_EPS)


def positive_factor_from_sums(sum_pt, sum_t):
    """1 + (1 - r)^2, r = mean predicted probability inside the ground-truth box."""
    return 1 + (1 - sum_pt / sum_t.clamp(min=1)) ** 2


def focal_loss(prob, target, alpha=FOCAL_ALPHA, gamma=2.0):
    """Sigmoid focal loss written on probabilities, averaged over pixels: [..., P] -> [...]"""
    ce = F.binary_cross_entropy(prob, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(-1)


def dice_loss(prob, target):
    """[..., P] -> [...]"""
    return dice_from_sums((prob * target).sum(-1), prob.sum(-1), target.sum(-1))


def positive_factor(prob, target):
    """[..., P] -> [...]"""
    return positive_factor_from_sums((prob * target).sum(-1), target.sum(-1))


def segmentation_terms_direct(seg, pos_region):
    """The readable formulation (the original's): every mask upsampled to the canvas, then the sigmoid, then
    focal, dice and the positive factor per mask. seg [layers, Q, B, g, g] -> three [layers, Q, B] tensors.
    Keeps ~10 canvas-size tensors per mask for backward; ``segmentation_terms`` gives the same numbers."""
    layers, queries, batch = seg.shape[:3]
    logits = F.interpolate(seg.flatten(0, 2)[:, None], size=pos_region.shape[-2:], mode="bilinear",
                           align_corners=False)
    prob = logits.sigmoid().view(layers, queries, batch, -1)  # [layers, Q, B, S*S]
    gt_mask = pos_region.flatten(1).to(prob.dtype).expand_as(prob)
    return focal_loss(prob, gt_mask), dice_loss(prob, gt_mask), positive_factor(prob, gt_mask)


def segmentation_terms(seg, pos_region):
    """Focal, dice and positive factor per mask from three sums per mask (models.mask_statistics): the same
    values and gradients as ``segmentation_terms_direct`` without any canvas-size tensor kept for backward."""
    layers, queries, batch, grid_h, grid_w = seg.shape
    logits = seg.permute(2, 0, 1, 3, 4).reshape(batch, layers * queries, grid_h, grid_w)
    sums = mask_statistics(logits, pos_region, FOCAL_ALPHA)  # [B, layers * Q, 3]
    sum_p, sum_pt, sum_focal = sums.view(batch, layers, queries, 3).permute(3, 1, 2, 0)  # each [layers, Q, B]
    sum_t = pos_region.flatten(1).sum(-1).to(sums.dtype)
    pixels = pos_region.shape[-2] * pos_region.shape[-1]
    return sum_focal / pixels, dice_from_sums(sum_pt, sum_p, sum_t), positive_factor_from_sums(sum_pt, sum_t)


class SegVGLoss(nn.Module):
    """Focal + dice on every (decoder layer, segmentation query) mask, L1 x5 + GIoU x2 on every layer's
    box weighted by the mask fit, all summed and divided by the batch size."""

    def __init__(self, detach_pos_factor=False, weight_l1=5.0, weight_giou=2.0, low_memory=True, seg_loss=True,
                 weight_focal=1.0, weight_dice=1.0, fine=None, weight_presence=1.0, weight_no_target=1.0):
        """fine: the fine mask head's loss (models.mask_losses.FineMaskLoss), added to these terms. weight_presence:
        of the presence head's binary cross-entropy, where the model has one. weight_no_target: of the focal term of
        phrases with no target, whose mask target is empty (dice has no gradient there)."""
        super().__init__()
        self.fine = fine
        self.weight_presence = weight_presence
        self.weight_no_target = weight_no_target
        self.seg_loss = seg_loss
        self.weight_focal = weight_focal
        self.weight_dice = weight_dice
        self.detach_pos_factor = detach_pos_factor
        self.weight_l1 = weight_l1
        self.weight_giou = weight_giou
        self.segmentation_terms = segmentation_terms if low_memory else segmentation_terms_direct

    def forward(self, outputs, target, pos_region, batch=None, fraction=1.0):
        """outputs: the model's training outputs; target [B, 4] cx,cy,w,h; pos_region [B, S, S]. batch: its
        n_targets [B] (phrases with no target add nothing to the box terms, train the maps toward empty with the focal
        term times weight_no_target, and train the presence head) and,
        with a fine head, its img, image_rect and, under mask supervision, gt_mask and has_mask; fraction: of the run
        done (the pairwise term's warmup)."""
        n_targets = batch.get("n_targets") if batch is not None else None
        targeted = None if n_targets is None or bool((n_targets > 0).all()) else n_targets > 0
        # Always fp32: binary cross-entropy on probabilities is not autocast-safe.
        with torch.autocast(target.device.type, enabled=False):
            losses = self._losses(outputs["aux_boxes"].float(), outputs["aux_seg_logits"].float(), target.float(),
                                  pos_region, targeted)
            if self.fine is not None and self.seg_loss:
                n = outputs["seg_logits"].shape[0]  # the samples the head ran on (--mask_head_samples)
                gt_mask, has_mask = (batch[k][:n] if k in batch else None for k in ("gt_mask", "has_mask"))
                fine = self.fine(outputs["seg_logits"].float(), pos_region[:n], batch["img"][:n].float(),
                                 batch["image_rect"][:n], gt_mask, has_mask, fraction,
                                 None if targeted is None else targeted[:n], self.weight_no_target)
                losses.update(fine)
                losses["loss"] = losses["loss"] + sum(fine.values())
            if "presence_logits" in outputs:
                present = (n_targets > 0).float() if n_targets is not None else torch.ones_like(target[:, 0])
                losses["loss_presence"] = self.weight_presence * F.binary_cross_entropy_with_logits(
                    outputs["presence_logits"].float(), present)
                losses["loss"] = losses["loss"] + losses["loss_presence"]
            return losses

    def _losses(self, boxes, seg, target, pos_region, targeted=None):
        """boxes [layers, B, 4], seg [layers, Q, B, g, g]; targeted [B] bool (None: all): the samples scored."""
        layers, batch = boxes.shape[:2]
        if targeted is not None:  # a stand-in box keeps GIoU finite where the empty target is weighed out
            target = torch.where(targeted[:, None], target, target.new_tensor([0.5, 0.5, 1.0, 1.0]))
        if self.seg_loss:
            # Upsampled to the canvas before the sigmoid, as the original does.
            focal, dice, pos_factor = self.segmentation_terms(seg, pos_region)  # each [layers, Q, B]
            if self.detach_pos_factor:
                pos_factor = pos_factor.detach()
        else:  # the paper's baseline: no mask supervision, box losses unweighted
            focal = dice = boxes.new_zeros(seg.shape[:3])
            pos_factor = torch.ones_like(focal)
        box_weight = pos_factor.mean(1)  # [layers, B]
        if targeted is not None:
            keep = targeted.to(focal.dtype)
            # No target: the box mask is empty, so the focal term pulls the whole map toward 0.
            focal = focal * (keep + self.weight_no_target * (1 - keep))
            dice, box_weight = dice * keep, box_weight * keep

        gt = target.expand_as(boxes)
        l1 = (boxes - gt).abs().sum(-1)
        pred_xyxy = box_convert(boxes.flatten(0, 1), "cxcywh", "xyxy")
        gt_xyxy = box_convert(gt.flatten(0, 1), "cxcywh", "xyxy")
        giou = generalized_box_iou(pred_xyxy, gt_xyxy).diagonal().view(layers, batch)

        losses = {
            "loss_focal": self.weight_focal * focal.sum() / batch,
            "loss_dice": self.weight_dice * (dice * pos_factor).sum() / batch,
            "loss_bbox": self.weight_l1 * (box_weight * l1).sum() / batch,
            "loss_giou": self.weight_giou * (box_weight * (1 - giou)).sum() / batch,
        }
        losses["loss"] = sum(losses.values())
        return losses


def build_criterion(args, no_target_phrases=False):
    """no_target_phrases: whether the training data has phrases with no target (their maps are then trained toward
    empty, --no_target_mask_loss_coef)."""
    return SegVGLoss(detach_pos_factor=args.detach_pos_factor, seg_loss=args.seg_loss == "on",
                     weight_focal=args.mask_loss_coef, weight_dice=args.dice_loss_coef,
                     fine=build_fine_mask_loss(args), weight_presence=args.presence_loss_coef,
                     weight_no_target=args.no_target_mask_loss_coef if no_target_phrases else 0.0)
