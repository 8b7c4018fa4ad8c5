"""The fine mask head (--mask_head fine): the segmentation query's evidence on the token grid, fused top-down with the
ResNet's finer maps up to --mask_stride of the canvas, after DETR's MaskHeadSmallConv (docs/model.md, "Mask heads")."""
import torch
import torch.nn.functional as F
from torch import nn

MIN_WIDTH = 16  # the narrowest block: GroupNorm's 8 groups of at least 2 channels


def conv_block(in_channels, out_channels):
    """3x3 convolution, GroupNorm (8 groups), ReLU: DETR's mask-head block."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.GroupNorm(8, out_channels),
                         nn.ReLU(inplace=True))


def default_mask_stride(imsize):
    """Stride 4 of the canvas (DETR's finest map) where the canvas is large; 2 on small canvases, where a stride-4
    cell is a large part of an object (the demo's 48-px canvas; stride 1 there costs 1.7x the grid head's step
    against 1.3x, docs/model.md)."""
    return 4 if imsize >= 320 else 2


class FineMaskHead(nn.Module):
    """Inputs on the g x g token grid: the vision-language memory's visual tokens, the same modulated by the query
    (channel-wise product) and the grid head's logits; then one block per halving of the stride, each adding a 1x1
    adapter of the backbone's map at that stride (the image itself at stride 1) to the nearest-upsampled input.
    Its output is added to the grid logits upsampled bilinearly, so the head starts as the grid head and learns the
    detail."""

    def __init__(self, hidden_dim, grid_stride, mask_stride, feature_channels):
        """feature_channels: {stride: channels} of the backbone maps finer than grid_stride (the image: 3)."""
        super().__init__()
        self.strides = [s for s in (16, 8, 4, 2, 1) if mask_stride <= s < grid_stride]
        missing = [s for s in self.strides if s not in feature_channels]
        if missing:
            raise ValueError(f"the fine mask head needs backbone maps at strides {missing}")
        widths = [hidden_dim] + [max(hidden_dim >> k, MIN_WIDTH) for k in range(1, len(self.strides) + 2)]
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)
        self.input_blocks = nn.Sequential(conv_block(2 * hidden_dim + 1, widths[0]), conv_block(widths[0], widths[1]))
        self.adapters = nn.ModuleList(nn.Conv2d(feature_channels[s], widths[k + 1], 1)
                                      for k, s in enumerate(self.strides))
        self.blocks = nn.ModuleList(conv_block(widths[k + 1], widths[k + 2]) for k in range(len(self.strides)))
        self.out = nn.Conv2d(widths[len(self.strides) + 1], 1, 3, padding=1)
        for module in self.modules():  # DETR's initialisation of its mask head
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, query, pixels, grid_logits, features, image_index=None):
        """query [B, C], pixels [B, g*g, C], grid_logits [B, g, g], features {stride: [I, C_s, S/s, S/s]}
        -> logits [B, S/mask_stride, S/mask_stride]. image_index [B]: expression b's image is features[:, image_index[b]]
        (None: I = B, one image per expression)."""
        grid = grid_logits.shape[-2:]
        pixels = pixels.transpose(1, 2).unflatten(-1, grid)  # [B, C, g, g]
        modulated = pixels * self.query_proj(query)[:, :, None, None]
        x = self.input_blocks(torch.cat([pixels, modulated, grid_logits[:, None]], dim=1))
        for stride, adapter, block in zip(self.strides, self.adapters, self.blocks):
            fpn = adapter(features[stride])  # per image: the 1x1 adapter narrows the map before it is repeated
            if image_index is not None:
                fpn = fpn[image_index]  # [B, C', S/s, S/s]
            x = block(fpn + F.interpolate(x, size=fpn.shape[-2:], mode="nearest"))
        out = self.out(x)  # [B, 1, S/mask_stride, S/mask_stride]
        base = F.interpolate(grid_logits[:, None], size=out.shape[-2:], mode="bilinear", align_corners=False)
        return (out + base)[:, 0]


def backbone_feature_strides(args):
    """The backbone strides the fine head reads (the image itself, stride 1, is not the backbone's)."""
    if args.mask_head != "fine":
        return ()
    return tuple(s for s in (16, 8, 4, 2) if mask_stride(args) <= s < args.backbone_stride)


def mask_stride(args):
    """--mask_stride, or the default for the canvas (0)."""
    return args.mask_stride or default_mask_stride(args.imsize)


def build_mask_head(args, feature_channels):
    """None for the original's grid head, else the fine head over the backbone's {stride: channels}."""
    if args.mask_head == "grid":
        return None
    stride = mask_stride(args)
    if args.imsize % stride or stride >= args.backbone_stride:
        raise ValueError(f"--mask_stride {stride} must divide --imsize {args.imsize} and be finer than the backbone "
                         f"stride {args.backbone_stride}")
    return FineMaskHead(args.vl_hidden_dim, args.backbone_stride, stride, {**feature_channels, 1: 3})
