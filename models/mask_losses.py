"""Losses of the fine mask head (docs/model.md, "Mask heads"), on its map at its stride of the canvas.

From boxes only: BoxInst's (Tian et al., CVPR 2021) projection term (dice between the map's maxima along x and along
y and those of the filled ground-truth box) and pairwise term (a pixel and each of its 8 neighbours at a dilation
should take the same label where their LAB colours are alike, counted inside the box), plus SegVG's own target, the
dice against the filled box, which keeps the object's interior: the other two leave it free, and without it the head
learns to draw only the outline its finest maps see (docs/model.md, "Mask heads"). From true masks
(--mask_supervision mask): focal + dice against the mask. Padding never counts: the image's rectangle on the canvas
(NormalizeAndPad's image_rect) bounds every term, whatever --mask_padding says.
"""
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
from models.mask_head import mask_stride

PROJECTION_EPS = 1e-5  # BoxInst's dice epsilon
# sRGB (D65) -> XYZ, and the D65 white point: the CIE definitions skimage's rgb2lab uses.
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb):
    """[B, 3, H, W] sRGB in [0, 1] -> CIE LAB [B, 3, H, W] (L in [0, 100])."""
    linear = torch.where(rgb > 0.04045, ((rgb.clamp(min=0) + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor(RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(WHITE, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def neighbours(x, dilation):
    """[B, C, H, W] -> [B, C, 8, H, W]: each pixel's 8 neighbours at `dilation` (zeros beyond the border)."""
    height, width = x.shape[-2:]
    padded = F.pad(x, (dilation,) * 4)
    return torch.stack([padded[..., dilation * (1 + dy):dilation * (1 + dy) + height,
                               dilation * (1 + dx):dilation * (1 + dx) + width] for dy, dx in OFFSETS], dim=2)


def canvas_images(img):
    """The normalised canvas [B, 3, S, S] -> RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device)[:, None, None]
    return img * std + mean


def color_similarity(img, stride, dilation):
    """exp(-||LAB_i - LAB_j|| / 2) between each pixel of the canvas averaged over stride x stride cells and its 8
    neighbours at `dilation`: [B, 8, S/stride, S/stride]."""
    with torch.no_grad():
        rgb = F.avg_pool2d(canvas_images(img.float()), stride) if stride > 1 else canvas_images(img.float())
        lab = rgb_to_lab(rgb)
        diff = lab[:, :, None] - neighbours(lab, dilation)
        return torch.exp(-(diff * diff).sum(1).sqrt() * 0.5)  # sum and sqrt: linalg's norm is slow over dim 1


def region_at_stride(region, stride):
    """A bool canvas map [B, S, S] -> at the head's cells [B, S/stride, S/stride]: the value at each cell's centre
    pixel (BoxInst samples its box masks so)."""
    return region[:, stride // 2::stride, stride // 2::stride]


def image_region(image_rect, size):
    """[B, 4] x1, y1, x2, y2 of each image on the size x size canvas -> bool [B, size, size], True on the image."""
    coords = torch.arange(size, device=image_rect.device)
    rows = (coords[None] >= image_rect[:, 1:2]) & (coords[None] < image_rect[:, 3:4])
    cols = (coords[None] >= image_rect[:, 0:1]) & (coords[None] < image_rect[:, 2:3])
    return rows[:, :, None] & cols[:, None, :]


def projection_loss(logits, box_mask, valid):
    """BoxInst's projection term per sample: logits, box_mask, valid [B, h, w] -> [B]."""
    prob = logits.sigmoid() * valid
    target = box_mask.to(prob.dtype)
    loss = 0
    for dim in (1, 2):
        p, t = prob.amax(dim), target.amax(dim)
        loss = loss + 1 - 2 * (p * t).sum(-1) / ((p * p).sum(-1) + (t * t).sum(-1) + PROJECTION_EPS)
    return loss


def pairwise_loss(logits, similarity, box_mask, valid, dilation, threshold):
    """BoxInst's pairwise term: -log P(same label) averaged over the pairs whose colour similarity is at least
    threshold, whose centre lies in the box and both of whose pixels lie on the image. logits, box_mask, valid
    [B, h, w]; similarity [B, 8, h, w] -> a scalar."""
    log_fg = F.logsigmoid(logits)[:, None]  # [B, 1, h, w]
    log_bg = F.logsigmoid(-logits)[:, None]
    same_fg = log_fg + neighbours(log_fg, dilation)[:, 0]  # [B, 8, h, w]
    same_bg = log_bg + neighbours(log_bg, dilation)[:, 0]
    loss = -torch.logaddexp(same_fg, same_bg)
    weight = (similarity >= threshold).to(logits.dtype) * candidate_pairs(box_mask, valid, dilation, logits.dtype)
    return (loss * weight).sum() / weight.sum().clamp(min=1.0)


def candidate_pairs(box_mask, valid, dilation, dtype=torch.float32):
    """The pairs the pairwise term may count: centre in the box, both cells on the image. box_mask, valid [B, h, w]
    -> 0/1 [B, 8, h, w]."""
    valid = valid.to(dtype)[:, None]
    return box_mask.to(dtype)[:, None] * valid * neighbours(valid, dilation)[:, 0]


def pair_counts(similarity, box_mask, valid, true_mask, dilation, thresholds):
    """What the pairwise term counts, by the true labels of each pair's two cells (for choosing its colour threshold
    on data with masks). similarity [B, 8, h, w]; box_mask, valid, true_mask [B, h, w] -> {kind: (candidate pairs,
    [those counted at each threshold])} for kind "object" (both cells on the object), "background" (both off it) and
    "across" (one of each: the pairs that should never count), among candidate_pairs."""
    candidate = candidate_pairs(box_mask, valid, dilation)
    true_mask = true_mask.float()[:, None]
    other = neighbours(true_mask, dilation)[:, 0]
    kinds = {"object": true_mask * other, "background": (1 - true_mask) * (1 - other),
             "across": true_mask * (1 - other) + (1 - true_mask) * other}
    return {kind: ((labels * candidate).sum().item(),
                   [((similarity >= t).float() * labels * candidate).sum().item() for t in thresholds])
            for kind, labels in kinds.items()}


def map_dice(logits, target, valid):
    """Dice of the map against a target on the image's cells, per sample: the filled box (SegVG's target, the
    box-fill term) or the true mask. logits, target, valid [B, h, w] -> [B]."""
    prob = logits.sigmoid() * valid
    return 1 - (2 * (prob * target).sum((1, 2)) + 1) / (prob.sum((1, 2)) + target.sum((1, 2)) + 1)


class FineMaskLoss(torch.nn.Module):
    """The fine head's terms, each divided by the batch size as the grid head's are: "loss_projection",
    "loss_pairwise" (warmed up linearly over the first `warmup` fraction of the run) and "loss_box_fill" from boxes, or
    "loss_mask_focal" and "loss_mask_dice" from true masks for the samples that have one (supervision "mask"; the
    others keep the box terms)."""

    def __init__(self, stride, supervision="box", weight_projection=1.0, weight_pairwise=1.0, weight_box_fill=1.0,
                 dilation=2, color_threshold=0.1, warmup=0.1, weight_focal=1.0, weight_dice=1.0, loss_stride=None):
        """stride: the head's; loss_stride: where the terms are computed (default: the head's), finer ones on the
        head's map upsampled bilinearly."""
        super().__init__()
        self.stride = stride
        self.loss_stride = loss_stride or stride
        self.supervision = supervision
        self.weight_projection = weight_projection
        self.weight_pairwise = weight_pairwise
        self.weight_box_fill = weight_box_fill
        self.dilation = dilation
        self.color_threshold = color_threshold
        self.warmup = warmup
        self.weight_focal = weight_focal
        self.weight_dice = weight_dice

    def forward(self, logits, pos_region, img, image_rect, gt_mask=None, has_mask=None, fraction=1.0, targeted=None,
                weight_no_target=0.0):
        """logits [B, S/stride, S/stride] (fp32); pos_region [B, S, S] the filled box; img [B, 3, S, S] the canvas;
        image_rect [B, 4]; gt_mask [B, S, S] and has_mask [B] with supervision "mask"; fraction: of the run done;
        targeted [B] bool: the samples whose phrase has a target (None: all); the others add only, where
        weight_no_target is not 0, "loss_no_target": focal toward an empty map over the image's cells."""
        batch, size = img.shape[0], img.shape[-1]
        stride = self.loss_stride
        if stride < self.stride:  # the map as eval.py uses it: upsampled bilinearly
            logits = F.interpolate(logits[:, None], scale_factor=self.stride // stride, mode="bilinear",
                                   align_corners=False)[:, 0]
        valid = region_at_stride(image_region(image_rect, size), stride).to(logits.dtype)
        box_mask = region_at_stride(pos_region, stride).to(logits.dtype)
        from_box = torch.ones(batch, dtype=torch.bool, device=logits.device)
        losses = {}
        if self.supervision == "mask":
            from_box = ~has_mask
            target = F.avg_pool2d(gt_mask[:, None].to(logits.dtype), stride)[:, 0] if stride > 1 \
                else gt_mask.to(logits.dtype)
            keep = has_mask.to(logits.dtype) if targeted is None else (has_mask & targeted).to(logits.dtype)
            # Focal averaged over the image's cells, dice on their sums: padding cells count in neither.
            cells = valid.sum((1, 2)).clamp(min=1)
            focal = (sigmoid_focal_loss(logits, target, reduction="none") * valid).sum((1, 2)) / cells
            dice = map_dice(logits, target, valid)
            losses["loss_mask_focal"] = self.weight_focal * (focal * keep).sum() / batch
            losses["loss_mask_dice"] = self.weight_dice * (dice * keep).sum() / batch
        boxed = from_box.to(logits.dtype) if targeted is None else (from_box & targeted).to(logits.dtype)
        projection = projection_loss(logits, box_mask, valid)
        losses["loss_projection"] = self.weight_projection * (projection * boxed).sum() / batch
        fill = map_dice(logits, box_mask, valid)
        losses["loss_box_fill"] = self.weight_box_fill * (fill * boxed).sum() / batch
        similarity = color_similarity(img, stride, self.dilation)
        warm = min(1.0, fraction / self.warmup) if self.warmup > 0 else 1.0
        pairwise = pairwise_loss(logits, similarity, box_mask * boxed[:, None, None], valid, self.dilation,
                                 self.color_threshold)
        losses["loss_pairwise"] = self.weight_pairwise * warm * pairwise
        if weight_no_target:  # on every batch of such a run (the ranks log the same terms), 0 where all have targets
            empty = (sigmoid_focal_loss(logits, torch.zeros_like(logits), reduction="none") * valid).sum((1, 2))
            untargeted = torch.zeros_like(empty) if targeted is None else (~targeted).to(logits.dtype)
            losses["loss_no_target"] = weight_no_target * (empty / valid.sum((1, 2)).clamp(min=1) * untargeted).sum() \
                / batch
        return losses


def build_fine_mask_loss(args):
    """None for the grid head, else the fine head's loss at its stride."""
    if args.mask_head != "fine":
        return None
    if mask_loss_stride(args) > mask_stride(args):
        raise ValueError(f"--mask_loss_stride {mask_loss_stride(args)} is coarser than the head's --mask_stride "
                         f"{mask_stride(args)}: the terms are computed on the head's map or a finer upsampling of it")
    return FineMaskLoss(mask_stride(args), args.mask_supervision, args.projection_loss_coef, args.pairwise_loss_coef,
                        args.box_fill_loss_coef, args.pairwise_dilation, args.pairwise_color_threshold,
                        args.pairwise_warmup, args.mask_focal_loss_coef, args.mask_dice_loss_coef,
                        mask_loss_stride(args))


def mask_loss_stride(args):
    """--mask_loss_stride, or half the head's stride (at least 1): the terms see the head's map upsampled as eval.py
    uses it, and the pairwise term cells that hold one colour, not the object's and the background's mixed."""
    return args.mask_loss_stride or max(1, mask_stride(args) // 2)
