"""The parity cases' recipe (docs/parity.md): deterministic official-layout weights and
inputs. The key layout comes from our own model through the official key map, so regenerating the
weights also proves the map covers every tensor."""
import math
import zlib

import torch
import torch.nn.functional as F

CLS_ID, SEP_ID = 101, 102


def _tensor(key, shape, g):
    randn = lambda: torch.randn(shape, generator=g)  # noqa: E731 -- the recipe draws lazily, in this order
    leaf = key.rsplit(".", 1)[-1]
    is_bn = key.startswith("visumodel.backbone.") and len(shape) == 1
    if leaf == "running_var":
        return 1.0 + 0.2 * torch.rand(shape, generator=g)
    if leaf == "running_mean":
        return 0.1 * randn()
    if is_bn and leaf == "weight":
        return (0.3 if ".bn3." in key or ".downsample.1." in key else 1.0) + 0.05 * randn()
    if is_bn and leaf == "bias":
        return 0.05 * randn()
    if "norm" in key.lower() and len(shape) == 1:
        return (1.0 + 0.1 * randn()) if leaf == "weight" else 0.05 * randn()
    if key.startswith("textmodel.embeddings.") and key.endswith("_embeddings.weight"):
        return 0.02 * randn()
    if key in ("reg_seg_src.weight", "reg_seg_pos.weight", "vl_pos_embed.weight"):
        return randn()
    if len(shape) == 4:
        return randn() * math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    if len(shape) == 2:
        return randn() * math.sqrt(1.0 / shape[1])
    return 0.02 * randn()


def official_state_dict(seed, layout):
    """layout: {official key: shape}. Each tensor has its own generator, so order does not matter."""
    return {key: _tensor(key, tuple(shape), torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode())))
            for key, shape in layout.items()}


def make_batch(seed, text_lengths, boxes_xyxy, imsize=640, content_hw=(480, 640), max_query_len=40):
    """A collated batch in the original layout (noise image centred on a zero canvas, random token ids)."""
    g = torch.Generator().manual_seed(seed)
    batch = len(text_lengths)
    h, w = content_hw
    top, left = (imsize - h) // 2, (imsize - w) // 2
    low = torch.randn(batch, 3, 40, 40, generator=g)
    img = torch.zeros(batch, 3, imsize, imsize)
    img[:, :, top:top + h, left:left + w] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    ids = torch.zeros(batch, max_query_len, dtype=torch.long)
    mask = torch.zeros(batch, max_query_len, dtype=torch.long)
    for b, n in enumerate(text_lengths):
        ids[b, 0], ids[b, n - 1] = CLS_ID, SEP_ID
        ids[b, 1:n - 1] = torch.randint(1996, 29000, (n - 2,), generator=g)
        mask[b, :n] = 1
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32)
    pos_region = torch.zeros(batch, imsize, imsize, dtype=torch.int32)
    for b, (x1, y1, x2, y2) in enumerate(boxes_xyxy):
        pos_region[b, y1:y2, x1:x2] = 1
    cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                          boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1) / imsize
    return {"img": img, "img_mask": torch.zeros(batch, imsize, imsize, dtype=torch.int32), "text_ids": ids,
            "text_mask": mask, "target": cxcywh, "pos_region": pos_region}


def checksums(tensors):
    """{name: (sum, sum of squares)} in float64."""
    return {k: (v.double().sum().item(), v.double().pow(2).sum().item()) for k, v in tensors.items()}
