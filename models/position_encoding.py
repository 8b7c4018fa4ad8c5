"""DETR position embeddings for the visual grid (sine by default, learned as an option)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR's normalised sine embedding: y then x features, ``dim / 2`` each."""

    def __init__(self, dim, temperature=10000):
        super().__init__()
        self.num_pos_feats = dim // 2
        self.temperature = temperature

    def forward(self, mask):
        """mask: [B, H, W] (True = padding) -> [B, H*W, dim]"""
        not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        eps, scale = 1e-6, 2 * math.pi
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)


class PositionEmbeddingLearned(nn.Module):
    """DETR's learned row/column tables (50 entries each)."""

    def __init__(self, dim, num_embeddings=50):
        super().__init__()
        self.row_embed = nn.Embedding(num_embeddings, dim // 2)
        self.col_embed = nn.Embedding(num_embeddings, dim // 2)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask):
        """mask: [B, H, W] -> [B, H*W, dim]"""
        b, h, w = mask.shape
        if max(h, w) > self.row_embed.num_embeddings:
            raise ValueError(f"learned position embedding covers 50x50 cells, the grid is {h}x{w}")
        x_emb = self.col_embed(torch.arange(w, device=mask.device))
        y_emb = self.row_embed(torch.arange(h, device=mask.device))
        pos = torch.cat([x_emb[None].expand(h, -1, -1), y_emb[:, None].expand(-1, w, -1)], dim=-1)
        return pos.flatten(0, 1)[None].expand(b, -1, -1)


def build_position_encoding(args):
    if args.position_embedding == "sine":
        return PositionEmbeddingSine(args.hidden_dim)
    if args.position_embedding == "learned":
        return PositionEmbeddingLearned(args.hidden_dim)
    raise ValueError(f"unknown --position_embedding {args.position_embedding!r} (sine or learned)")
