"""Visual branch: ResNet C5 -> 1x1 projection -> tokens, plus DETR encoder layers run one per stage."""
import copy

import torch.nn.functional as F
from torch import nn

from .backbone import build_backbone
from .position_encoding import build_position_encoding
from .transformer import EncoderLayer, xavier_init


class VisualEncoder(nn.Module):
    def __init__(self, backbone, position_embedding, hidden_dim, num_heads, dim_feedforward, dropout,
                 num_layers, normalize_before=False, drop_key=0.0, train_transformer=True):
        super().__init__()
        self.backbone = backbone
        self.position_embedding = position_embedding
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        layer = EncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, normalize_before, drop_key)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        xavier_init(self.layers)
        if not train_transformer:
            for module in (self.input_proj, self.layers):
                module.requires_grad_(False)

    def embed(self, img, img_mask):
        """img [B, 3, H, W], img_mask [B, H, W] (True = padding) -> tokens, padding, pos, finer maps.

        tokens, pos: [B, h*w, C]; padding: [B, h*w]; finer maps: the backbone's {stride: map} (empty unless it was
        built with feature_strides)
        """
        out = self.backbone(img)
        last, finer = out if isinstance(out, tuple) else (out, {})
        features = self.input_proj(last)
        mask = F.interpolate(img_mask[None].float(), size=features.shape[-2:])[0].bool()  # [B, h, w]
        pos = self.position_embedding(mask)
        return features.flatten(2).transpose(1, 2), mask.flatten(1), pos, finer


def build_visual_encoder(args, feature_strides=()):
    if args.imsize % args.backbone_stride:
        raise ValueError(f"--imsize must be a multiple of the backbone stride {args.backbone_stride}, "
                         f"got {args.imsize}")
    return VisualEncoder(build_backbone(args, feature_strides), build_position_encoding(args), args.hidden_dim, args.nheads,
                         args.dim_feedforward, args.dropout, args.enc_layers, args.pre_norm, args.drop_key,
                         train_transformer=args.lr_visu_tra > 0)
