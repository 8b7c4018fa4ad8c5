"""Transformer blocks: DETR-style encoder layers, the vision-language encoder and the query decoder."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from .activation_checkpointing import run_layer
from .attention import MultiheadAttention


def xavier_init(module):
    """DETR's init: xavier_uniform on every parameter with more than one dimension."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def with_pos(x, pos):
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """Self-attention + FFN; post-norm (the DETR visual encoder) or pre-norm (the VL encoder)."""

    def __init__(self, dim, num_heads, dim_feedforward, dropout, normalize_before, drop_key=0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, drop_key=drop_key)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, x, key_padding_mask, pos):
        """x, pos: [B, N, C]; key_padding_mask: [B, N]"""
        if self.normalize_before:
            h = self.norm1(x)
            q = k = with_pos(h, pos)
            x = x + self.dropout1(self.self_attn(q, k, h, key_padding_mask))
            return x + self.dropout2(self.ffn(self.norm2(x)))
        q = k = with_pos(x, pos)
        x = self.norm1(x + self.dropout1(self.self_attn(q, k, x, key_padding_mask)))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class VisionLanguageEncoder(nn.Module):
    """Pre-norm encoder over [text; visual] tokens with a final LayerNorm."""

    def __init__(self, dim, num_heads, dim_feedforward, dropout, num_layers, drop_key=0.0):
        super().__init__()
        layer = EncoderLayer(dim, num_heads, dim_feedforward, dropout, True, drop_key)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.checkpoint_activations = False
        xavier_init(self)

    def forward(self, x, key_padding_mask, pos):
        for layer in self.layers:
            x = run_layer(layer, x, key_padding_mask, pos, enabled=self.checkpoint_activations)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention (with attention dropout), cross-attention, FFN."""

    def __init__(self, dim, num_heads, dim_feedforward, dropout, drop_key=0.0):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads, dropout=dropout)
        self.cross_attn = MultiheadAttention(dim, num_heads, drop_key=drop_key)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, memory_padding_mask, pos, query_pos):
        h = self.norm1(tgt)
        q = k = h + query_pos
        tgt = tgt + self.dropout1(self.self_attn(q, k, h))
        h = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.cross_attn(h + query_pos, memory + pos, memory, memory_padding_mask))
        h = self.norm3(tgt)
        return tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(h)))))


class QueryDecoder(nn.Module):
    """Decodes the query tokens against the VL memory; returns every layer's output."""

    def __init__(self, dim, num_heads, dim_feedforward, dropout, num_layers, drop_key=0.0):
        super().__init__()
        layer = DecoderLayer(dim, num_heads, dim_feedforward, dropout, drop_key)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.checkpoint_activations = False
        xavier_init(self)

    def forward(self, tgt, memory, memory_padding_mask, pos, query_pos):
        """tgt, query_pos: [B, Nq, C]; memory, pos: [B, N, C] -> [layers, B, Nq, C]"""
        outputs = []
        for layer in self.layers:
            tgt = run_layer(layer, tgt, memory, memory_padding_mask, pos, query_pos,
                            enabled=self.checkpoint_activations)
            # The shared norm only feeds the heads; the next layer gets the un-normalised tokens.
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


def build_vl_encoder(args):
    return VisionLanguageEncoder(args.vl_hidden_dim, args.vl_nheads, args.vl_dim_feedforward,
                                 args.vl_dropout, args.vl_enc_layers, args.drop_key)


def build_decoder(args):
    return QueryDecoder(args.vl_hidden_dim, args.vl_nheads, args.vl_dim_feedforward,
                        args.vl_dropout, args.vl_dec_layers, args.drop_key)
