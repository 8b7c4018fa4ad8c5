"""Triple Alignment (docs/original.md, "Triple Alignment"): queries, text and visual tokens updated by one joint
attention."""
import torch
from torch import nn

from .attention import attention


class ModalityProjection(nn.Module):
    """Pre-norm and q/k/v projections of one modality into the shared width, and its output projection."""

    def __init__(self, dim, shared_dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, shared_dim)
        self.to_k = nn.Linear(dim, shared_dim)
        self.to_v = nn.Linear(dim, shared_dim)
        self.out = nn.Linear(shared_dim, dim)

    def qkv(self, x, pos=None):
        h = self.norm(x)
        qk = h if pos is None else h + pos
        return self.to_q(qk), self.to_k(qk), self.to_v(h)


class TripleAlignmentLayer(nn.Module):
    """Joint attention over [queries; text; visual], per-modality residual; no FFN, no post-norm."""

    def __init__(self, query_dim, text_dim, visual_dim, shared_dim, num_heads, dropout, drop_key=0.0):
        super().__init__()
        if shared_dim % num_heads:
            raise ValueError(f"width {shared_dim} is not divisible by {num_heads} heads")
        self.queries = ModalityProjection(query_dim, shared_dim)
        self.text = ModalityProjection(text_dim, shared_dim)
        self.visual = ModalityProjection(visual_dim, shared_dim)
        self.dropout = nn.Dropout(dropout)
        self.num_heads = num_heads
        self.drop_key = drop_key

    def forward(self, queries, text, visual, query_pos, visual_pos, text_padding, visual_padding):
        """queries [B, Nq, Cq], text [B, L, Ct], visual [B, V, Cv]; paddings [B, L], [B, V]."""
        parts = (self.queries.qkv(queries, query_pos), self.text.qkv(text), self.visual.qkv(visual, visual_pos))
        q, k, v = (torch.cat(t, dim=1) for t in zip(*parts))  # [B, Nq + L + V, shared]
        query_padding = text_padding.new_zeros(queries.shape[:2])
        padding = torch.cat([query_padding, text_padding, visual_padding], dim=1)
        out = attention(q, k, v, self.num_heads, padding, drop_key=self.drop_key if self.training else 0.0)
        out_q, out_t, out_v = out.split([queries.shape[1], text.shape[1], visual.shape[1]], dim=1)
        return (queries + self.dropout(self.queries.out(out_q)),
                text + self.dropout(self.text.out(out_t)),
                visual + self.dropout(self.visual.out(out_v)))


def build_triple_alignment(args, text_dim):
    """One layer per stage; the stage count is the DETR encoder depth."""
    return nn.ModuleList(
        TripleAlignmentLayer(args.vl_hidden_dim, text_dim, args.hidden_dim, args.vl_hidden_dim, args.vl_nheads,
                             args.vl_dropout, args.drop_key)
        for _ in range(args.enc_layers))
