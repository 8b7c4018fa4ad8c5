"""The segmentation map read as probabilities on the canvas: its upsampling, the paper's confidence score and the
threshold that cuts a mask out of it."""
import torch.nn.functional as F

# The paper's segmentation-derived confidence: mean upsampled mask probability over pixels >= 0.35.
CONFIDENCE_THRESHOLD = 0.35
# Where a mask is cut out of the segmentation map (eval.py, predict.py, SegVGPredictor): docs/evaluation.md says how
# it was chosen.
MASK_THRESHOLD = 0.5


def canvas_probabilities(seg_logits, size):
    """[B, g, g] logits of the evaluation mask -> [B, size, size] probabilities, upsampled bilinearly."""
    return F.interpolate(seg_logits.float().sigmoid()[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]


def segmentation_confidence(prob):
    """prob: [..., S, S] probabilities on the canvas -> mean of those >= 0.35 (0 where none is)."""
    keep = prob >= CONFIDENCE_THRESHOLD
    return (prob * keep).sum((-2, -1)) / keep.sum((-2, -1)).clamp(min=1)
