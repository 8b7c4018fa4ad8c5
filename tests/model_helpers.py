"""Tiny SegVG configurations for CPU tests (no download: random BERT, resnet18)."""
import torch

from train import get_args_parser

TINY = ["--bert_init", "random", "--bert_layers", "4", "--bert_hidden_dim", "32", "--bert_heads", "2",
        "--bert_ffn", "64", "--bert_vocab_size", "50", "--backbone", "resnet18", "--imsize", "64",
        "--enc_layers", "2", "--hidden_dim", "32", "--vl_hidden_dim", "32", "--dim_feedforward", "64",
        "--vl_dim_feedforward", "64", "--vl_enc_layers", "2", "--vl_dec_layers", "3", "--nheads", "4",
        "--vl_nheads", "4", "--max_query_len", "8", "--device", "cpu"]


def tiny_args(*extra):
    return get_args_parser().parse_args(TINY + list(extra))


def tiny_batch(args, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, length = args.imsize, args.max_query_len
    text_mask = torch.ones(batch, length, dtype=torch.long)
    text_mask[0, 4:] = 0
    text_mask[1, 6:] = 0
    ids = torch.randint(1, args.bert_vocab_size, (batch, length), generator=g) * text_mask
    boxes = torch.tensor([[10, 12, 40, 50], [0, 0, 64, 64], [30, 5, 60, 20]][:batch])
    pos_region = torch.zeros(batch, s, s, dtype=torch.bool)
    for b, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        pos_region[b, y1:y2, x1:x2] = True
    boxes = boxes.float()
    target = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                          boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1) / s
    return {"img": torch.randn(batch, 3, s, s, generator=g), "img_mask": torch.zeros(batch, s, s, dtype=torch.bool),
            "text_ids": ids, "text_mask": text_mask, "target": target, "pos_region": pos_region}


def model_inputs(batch):
    return batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"]
