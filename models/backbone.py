"""ResNet body returning the stride-32 C5 map (DETR's backbone without the joiner), or an earlier, finer one."""
from functools import partial

import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FrozenBatchNorm2d

NORM_LAYERS = {
    "frozen": FrozenBatchNorm2d,
    "batch": nn.BatchNorm2d,
    "group": partial(nn.GroupNorm, 32),
}
# Output stride -> last ResNet stage run. 16 and 8 stop after layer3 / layer2: a finer grid at a fraction of the
# cost, for small canvases trained from scratch (at 64 px the C5 grid is 2x2); the original always uses C5.
LAST_LAYER = {32: "layer4", 16: "layer3", 8: "layer2"}


class Backbone(nn.Module):
    def __init__(self, name, norm="frozen", train_backbone=True, train_stem=False, stride=32):
        super().__init__()
        if norm not in NORM_LAYERS:
            raise ValueError(f"unknown backbone norm {norm!r}; choose from {sorted(NORM_LAYERS)}")
        if stride not in LAST_LAYER:
            raise ValueError(f"unsupported backbone stride {stride}; choose from {sorted(LAST_LAYER)}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=NORM_LAYERS[norm])
        for param_name, param in resnet.named_parameters():
            # The stem and layer1 stay frozen as in DETR unless training from scratch.
            in_stem = not param_name.startswith(("layer2", "layer3", "layer4"))
            if not train_backbone or (in_stem and not train_stem):
                param.requires_grad_(False)
        # IntermediateLayerGetter drops every stage after the returned one.
        self.body = IntermediateLayerGetter(resnet, return_layers={LAST_LAYER[stride]: "0"})
        c5 = 512 if name in ("resnet18", "resnet34") else 2048
        self.num_channels = c5 * stride // 32

    def forward(self, x):
        """[B, 3, H, W] -> [B, channels, H/stride, W/stride]"""
        return self.body(x)["0"]


def build_backbone(args):
    return Backbone(args.backbone, args.backbone_norm, train_backbone=args.lr_visu_cnn > 0,
                    train_stem=args.train_stem, stride=args.backbone_stride)
