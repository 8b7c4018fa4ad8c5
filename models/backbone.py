"""ResNet body returning the stride-32 C5 map (DETR's backbone without the joiner), or an earlier, finer one, and on
request the finer maps it computes on the way (the fine mask head's inputs)."""
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from .activation_checkpointing import run_layer


class FrozenBatchNorm2d(torchvision.ops.FrozenBatchNorm2d):
    """torchvision's frozen BatchNorm (same buffers, same fp32 numbers) applied in the activations' dtype: under
    bf16 autocast its fp32 scale and shift would otherwise turn every activation to fp32 and back."""

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[:, None, None] + shift.to(x.dtype)[:, None, None]


NORM_LAYERS = {
    "frozen": FrozenBatchNorm2d,
    "batch": nn.BatchNorm2d,
    "group": partial(nn.GroupNorm, 32),
}
# Output stride -> last ResNet stage run. 16 and 8 stop after layer3 / layer2: a finer grid at a fraction of the
# cost, for small canvases trained from scratch (at 64 px the C5 grid is 2x2); the original always uses C5.
LAST_LAYER = {32: "layer4", 16: "layer3", 8: "layer2"}
# Output stride -> the module of torchvision's ResNet whose output has it ("relu": the stem before its max pool).
STRIDE_LAYER = {2: "relu", 4: "layer1", 8: "layer2", 16: "layer3", 32: "layer4"}


class Backbone(nn.Module):
    def __init__(self, name, norm="frozen", train_backbone=True, train_stem=False, stride=32, feature_strides=(),
                 zero_init_residual=False):
        """feature_strides: the finer strides (2, 4, ... below `stride`) whose maps forward also returns;
        zero_init_residual: torchvision's, each block's last norm scale zero (BatchNorm only)."""
        super().__init__()
        if norm not in NORM_LAYERS:
            raise ValueError(f"unknown backbone norm {norm!r}; choose from {sorted(NORM_LAYERS)}")
        if stride not in LAST_LAYER:
            raise ValueError(f"unsupported backbone stride {stride}; choose from {sorted(LAST_LAYER)}")
        if zero_init_residual and norm != "batch":
            raise ValueError("--zero_init_residual needs a trainable BatchNorm (--backbone_norm batch)")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=NORM_LAYERS[norm],
                                                   zero_init_residual=zero_init_residual)
        for param_name, param in resnet.named_parameters():
            # The stem and layer1 stay frozen as in DETR unless training from scratch.
            in_stem = not param_name.startswith(("layer2", "layer3", "layer4"))
            if not train_backbone or (in_stem and not train_stem):
                param.requires_grad_(False)
        if any(s not in STRIDE_LAYER or s >= stride for s in feature_strides):
            raise ValueError(f"feature strides {sorted(feature_strides)} must be finer than the output stride {stride} "
                             f"and among {sorted(STRIDE_LAYER)}")
        # IntermediateLayerGetter drops every stage after the returned one.
        self.feature_strides = tuple(sorted(feature_strides, reverse=True))
        return_layers = {STRIDE_LAYER[s]: str(s) for s in self.feature_strides}
        return_layers[LAST_LAYER[stride]] = "0"
        self.body = IntermediateLayerGetter(resnet, return_layers=return_layers)
        c5 = 512 if name in ("resnet18", "resnet34") else 2048
        self.num_channels = c5 * stride // 32
        # layer1 keeps the stem's width (64) in ResNet-18/34 and widens it 4x in the bottleneck ResNets.
        self.feature_channels = {s: 64 if s == 2 else c5 * s // 32 for s in self.feature_strides}
        # Re-running a trainable BatchNorm in backward would update its running statistics twice, so its stages
        # are never checkpointed (the transformer layers still are).
        self.can_checkpoint = norm != "batch"
        self.checkpoint_activations = False
        self.channels_last = False

    def set_channels_last(self, enabled=True):
        """Channels-last weights and inputs: much faster convolutions on CPU (oneDNN) and with AMP on GPUs."""
        self.channels_last = enabled
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def forward(self, x):
        """[B, 3, H, W] -> [B, channels, H/stride, W/stride], and with feature_strides also
        {stride: [B, feature_channels[stride], H/stride, W/stride]}."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.checkpoint_activations:
            out = self.body(x)
        else:
            out = {}
            for name, module in self.body.items():  # the stem, then layer1 ... the returned stage
                if name.startswith("layer"):  # block by block: a stage's recomputation never holds all its blocks
                    for block in module:
                        x = run_layer(block, x, enabled=True)
                else:
                    x = module(x)
                if name in self.body.return_layers:
                    out[self.body.return_layers[name]] = x
        if not self.feature_strides:
            return out["0"]
        return out["0"], {s: out[str(s)] for s in self.feature_strides}


def build_backbone(args, feature_strides=()):
    return Backbone(args.backbone, args.backbone_norm, train_backbone=args.lr_visu_cnn > 0,
                    train_stem=args.train_stem, stride=args.backbone_stride, feature_strides=feature_strides,
                    zero_init_residual=args.zero_init_residual)
