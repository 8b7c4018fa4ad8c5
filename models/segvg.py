"""SegVG: interleaved visual/text backbones with Triple Alignment, VL encoder, query decoder, box and mask heads."""
import torch
import torch.nn.functional as F
from torch import nn

from .activation_checkpointing import run_layer
from .mask_head import backbone_feature_strides, build_mask_head
from .text_encoder import build_text_encoder
from .transformer import build_decoder, build_vl_encoder
from .triple_alignment import build_triple_alignment
from .visual_encoder import build_visual_encoder


class MLP(nn.Module):
    """Feed-forward network with ReLU between layers (DETR's MLP)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class SegmentationHead(MLP):
    """MLP on [query ‖ pixel]. The first layer is split into a query part and a pixel part that are
    broadcast-added: the same numbers as concatenating, without a [queries, pixels, 2C] tensor."""

    def forward(self, queries, pixels):
        """queries [..., B, Q, C], pixels [B, P, C] -> logits [..., B, Q, P]"""
        first = self.layers[0]
        w_query, w_pixel = first.weight.split(queries.shape[-1], dim=1)
        x = F.relu((queries @ w_query.T)[..., None, :] + (pixels @ w_pixel.T + first.bias)[:, None])
        for i, layer in enumerate(self.layers[1:], 1):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x.squeeze(-1)


class SegVG(nn.Module):
    def __init__(self, visual, text, triple_alignment, vl_encoder, decoder, hidden_dim, max_query_len,
                 grid_size, num_seg_queries, bert_layers_per_stage):
        super().__init__()
        self.visual = visual
        self.text = text
        self.triple_alignment = triple_alignment
        self.bert_layers_per_stage = bert_layers_per_stage
        self.grid_size = grid_size
        num_queries = 1 + num_seg_queries  # one regression query, then the segmentation queries
        self.query_content = nn.Embedding(num_queries, hidden_dim)
        self.query_pos = nn.Embedding(num_queries, hidden_dim)
        self.visual_proj = nn.Linear(visual.input_proj.out_channels, hidden_dim)
        self.text_proj = nn.Linear(text.dim, hidden_dim)
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)
        self.vl_pos_embed = nn.Embedding(max_query_len + grid_size ** 2, hidden_dim)
        self.vl_encoder = vl_encoder
        self.decoder = decoder
        self.box_head = MLP(hidden_dim, hidden_dim, 4, 3)
        self.seg_head = SegmentationHead(2 * hidden_dim, hidden_dim, 1, 3)
        self.mask_head = None  # set by build_segvg (--mask_head fine); None: the grid head's map is the mask
        self.mask_head_detached = False  # set by build_segvg (--mask_head_gradient head)
        self.mask_head_samples = 0  # set by build_segvg (--mask_head_samples; 0: all)
        self.presence_head = None  # set by build_segvg (--presence_head): MLP on the regression token -> logit
        # {source: {"threshold", ...}}: the presence thresholds chosen on the validation split during training
        # (evaluation.presence), kept in the checkpoint beside the weights.
        self.presence_thresholds = {}
        self.presence_head_detached = False  # --presence_gradient head: its loss leaves the rest of the model alone
        self.checkpoint_activations = False

    def set_activation_checkpointing(self, enabled):
        """Checkpoint the ResNet stages (unless its BatchNorm trains), every transformer and BERT layer and every
        Triple Alignment stage (--checkpoint_activations)."""
        self.checkpoint_activations = enabled
        self.vl_encoder.checkpoint_activations = enabled
        self.decoder.checkpoint_activations = enabled
        backbone = self.visual.backbone
        backbone.checkpoint_activations = enabled and backbone.can_checkpoint

    def forward(self, img, img_mask, text_ids, text_mask, aux=None, image_index=None):
        """img [B, 3, S, S], img_mask [B, S, S] (True = padding), text_ids/text_mask [B, L] (mask 1 = token).
        image_index [B] (inference): img and img_mask hold I distinct images [I, 3, S, S], expression b is about image
        image_index[b]; the ResNet then runs once per image, whatever the number of its expressions.

        Returns ``pred_boxes`` [B, 4] (sigmoid cx, cy, w, h on the canvas, last decoder layer),
        ``aux_boxes`` [layers, B, 4], with --presence_head ``presence_logits`` [B] (the phrase's object is in the
        image), ``seg_logits`` (the model's mask, last layer, first segmentation query:
        [B, g, g] from the grid head, [B, S/mask_stride, S/mask_stride] from the fine head, in training with
        --mask_head_samples N of the first N samples only), with the fine head ``grid_seg_logits`` [B, g, g] (the
        grid head's map it refines, which mask presence reads too) and, when ``aux``
        (default: in training), ``aux_seg_logits`` [layers, seg queries, B, g, g] (the grid head's).
        """
        aux = self.training if aux is None else aux
        batch = text_ids.shape[0]
        visual, visual_padding, visual_pos, finer = self.visual.embed(img, img_mask)
        if image_index is not None:  # the text-independent part, once per image, handed to each expression
            visual, visual_padding, visual_pos = (t[image_index] for t in (visual, visual_padding, visual_pos))
        text = self.text.embed(text_ids)
        text_padding = text_mask == 0
        text_bias = self.text.attention_bias(text_mask, text.dtype)
        queries = self.query_content.weight.expand(batch, -1, -1)
        query_pos = self.query_pos.weight.expand(batch, -1, -1)

        ckpt = self.checkpoint_activations
        for stage, alignment in enumerate(self.triple_alignment):
            visual = run_layer(self.visual.layers[stage], visual, visual_padding, visual_pos, enabled=ckpt)
            for i in range(stage * self.bert_layers_per_stage, (stage + 1) * self.bert_layers_per_stage):
                text = run_layer(self.text.layer, i, text, text_bias, enabled=ckpt)
            queries, text, visual = run_layer(alignment, queries, text, visual, query_pos, visual_pos,
                                              text_padding, visual_padding, enabled=ckpt)

        tokens = torch.cat([self.text_proj(text), self.visual_proj(visual)], dim=1)  # [B, L + V, C]
        padding = torch.cat([text_padding, visual_padding], dim=1)
        vl_pos = self.vl_pos_embed.weight.expand(batch, -1, -1)
        memory = self.vl_encoder(tokens, padding, vl_pos)
        hs = self.decoder(self.query_proj(queries), memory, padding, vl_pos, query_pos)  # [layers, B, Nq, C]

        boxes = self.box_head(hs[:, :, 0]).sigmoid()  # [layers, B, 4]
        pixels = memory[:, text.shape[1]:]  # [B, V, C]
        grid = (self.grid_size, self.grid_size)
        seg_logits = self.seg_head(hs[-1, :, 1:2], pixels)[:, 0].unflatten(-1, grid)  # [B, g, g]
        out = {"pred_boxes": boxes[-1], "aux_boxes": boxes, "seg_logits": seg_logits}
        if self.mask_head is not None:
            # In training with --mask_head_samples the head runs on the batch's first samples only; detached, its
            # terms train the head alone.
            subset = self.training and 0 < self.mask_head_samples < batch

            def take(t):
                t = t[:self.mask_head_samples] if subset else t
                return t.detach() if self.mask_head_detached else t

            features = {s: take(f) for s, f in {**finer, 1: img}.items()}
            out["grid_seg_logits"] = seg_logits
            out["seg_logits"] = self.mask_head(take(hs[-1, :, 1]), take(pixels), take(seg_logits), features,
                                               image_index=image_index)
        if self.presence_head is not None:
            token = hs[-1, :, 0].detach() if self.presence_head_detached else hs[-1, :, 0]
            out["presence_logits"] = self.presence_head(token)[:, 0]  # [B]
        if aux:
            seg = self.seg_head(hs[:, :, 1:], pixels)  # [layers, B, seg queries, V]
            out["aux_seg_logits"] = seg.transpose(1, 2).unflatten(-1, grid)
        return out

    def parameter_groups(self):
        """Trainable parameters in the original's four learning-rate groups (docs/original.md, "Optimisation")."""
        groups = {"rest": [], "visual_cnn": [], "visual_transformer": [], "text": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("visual.backbone."):
                groups["visual_cnn"].append(param)
            elif name.startswith("visual."):
                groups["visual_transformer"].append(param)
            elif name.startswith("text."):
                groups["text"].append(param)
            else:
                groups["rest"].append(param)
        return groups


def build_segvg(args):
    text = build_text_encoder(args)
    if text.num_layers % args.enc_layers:
        raise ValueError(f"BERT has {text.num_layers} layers, which cannot be split evenly over "
                         f"{args.enc_layers} stages (--enc_layers)")
    grid_size = args.imsize // args.backbone_stride
    visual = build_visual_encoder(args, backbone_feature_strides(args))
    model = SegVG(visual, text, build_triple_alignment(args, text.dim), build_vl_encoder(args),
                  build_decoder(args), args.vl_hidden_dim, args.max_query_len, grid_size, args.num_seg_queries,
                  text.num_layers // args.enc_layers)
    # Built last and from random numbers of its own: the rest of the model then starts from the weights a grid-head
    # model of the same seed has, and the run draws the same dropout and augmentation.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(torch.initial_seed() + 1)
        model.mask_head = build_mask_head(args, visual.backbone.feature_channels)
        if args.presence_head:
            model.presence_head = MLP(args.vl_hidden_dim, args.vl_hidden_dim, 1, 2)
    model.mask_head_detached = args.mask_head_gradient == "head"
    model.presence_head_detached = args.presence_gradient == "head"
    model.mask_head_samples = args.mask_head_samples
    model.set_activation_checkpointing(args.checkpoint_activations)
    return model
