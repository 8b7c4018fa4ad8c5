"""Inference fast path (eval.py, predict.py, SegVGPredictor): BatchNorm folded into the convolutions before it,
channels-last CNN. The outputs are the model's up to float rounding; the model is changed in place, so fold a
copy of a model that is still to be trained or saved."""
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import FrozenBatchNorm2d

# ResNet names each convolution's BatchNorm after it; a downsample is Sequential(conv, BatchNorm).
CONV_BN_NAMES = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


def fold_batchnorm(module):
    """Replace every (convolution, frozen or eval-mode BatchNorm) pair of a ResNet by one convolution with a
    bias and an identity. Returns how many were folded."""
    folded = 0
    for parent in list(module.modules()):
        for conv_name, bn_name in CONV_BN_NAMES:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(model, channels_last=True):
    """model.eval(), BatchNorm folded, optionally a channels-last CNN; returns the model (changed in place)."""
    model.eval()
    backbone = model.visual.backbone
    fold_batchnorm(backbone)
    if channels_last:
        backbone.set_channels_last()
    return model
