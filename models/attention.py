"""Multi-head attention with the parameter layout of ``nn.MultiheadAttention``, run through SDPA."""
import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x, num_heads):
    """[B, N, C] -> [B, heads, N, C / heads]"""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def attention(q, k, v, num_heads, key_padding_mask=None, dropout=0.0, drop_key=0.0):
    """Scaled dot-product attention over [B, N, C] projections; returns [B, Nq, C].

    key_padding_mask: [B, Nk], True where a key must be ignored.
    drop_key: real DropKey (random keys masked before the softmax); 0 reproduces the original.
    """
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]  # [B, 1, 1, Nk], True = attend
        if torch.onnx.is_in_onnx_export():  # ONNX Runtime's Attention (opset 23) does not broadcast over queries
            mask = mask.expand(-1, -1, q.shape[2], -1)  # [B, 1, Nq, Nk]
    if drop_key > 0:
        keep = torch.rand(q.shape[:3] + k.shape[2:3], device=q.device) >= drop_key
        mask = keep if mask is None else keep & mask
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return out.transpose(1, 2).flatten(2)


class MultiheadAttention(nn.Module):
    """Batch-first MHA whose state_dict matches ``nn.MultiheadAttention`` (packed ``in_proj``).

    ``dropout`` is attention-weight dropout: the original applies it only in the decoder's
    self-attention (its custom attention ignores the argument), so it defaults to 0.
    """

    def __init__(self, dim, num_heads, dropout=0.0, drop_key=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.drop_key = drop_key
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, key_padding_mask=None):
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        out = attention(F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v),
                        self.num_heads, key_padding_mask,
                        dropout=self.dropout if self.training else 0.0,
                        drop_key=self.drop_key if self.training else 0.0)
        return self.out_proj(out)
