"""Shared by the tests: tiny SegVG configurations (no download: random BERT, resnet18), synthetic batches, small
demo datasets and gloo process groups on CPU."""
import os
import socket

import torch
import torch.distributed as dist

from train import get_args_parser

TINY = ["--bert_init", "random", "--bert_layers", "4", "--bert_hidden_dim", "32", "--bert_heads", "2",
        "--bert_ffn", "64", "--bert_vocab_size", "50", "--backbone", "resnet18", "--imsize", "64",
        "--enc_layers", "2", "--hidden_dim", "32", "--vl_hidden_dim", "32", "--dim_feedforward", "64",
        "--vl_dim_feedforward", "64", "--vl_enc_layers", "2", "--vl_dec_layers", "3", "--nheads", "4",
        "--vl_nheads", "4", "--max_query_len", "8", "--device", "cpu"]
TINY_TRAIN = TINY + ["--dropout", "0", "--vl_dropout", "0", "--num_workers", "0", "--batch_size", "4"]


def tiny_args(*extra):
    return get_args_parser().parse_args(TINY + [str(e) for e in extra])


def tiny_train_args(*extra):
    args = get_args_parser().parse_args(TINY_TRAIN + [str(e) for e in extra])
    args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
    return args


def synthetic_batch(args, batch=3, seed=0):
    """A collated batch like datasets.collate_fn's: random images, token ids and boxes; sample 0's text is padded
    and sample 1's box is the whole canvas."""
    g = torch.Generator().manual_seed(seed)
    s, length = args.imsize, args.max_query_len
    lengths = torch.randint(3, length + 1, (batch, 1), generator=g)
    lengths[0] = min(int(lengths[0]), length - 2)
    text_mask = (torch.arange(length) < lengths).long()
    ids = torch.randint(5, args.bert_vocab_size, (batch, length), generator=g) * text_mask
    xy = torch.randint(0, s // 2, (batch, 2), generator=g)
    wh = torch.randint(8, s // 2, (batch, 2), generator=g)
    boxes = torch.cat([xy, xy + wh], 1)
    if batch > 1:
        boxes[1] = torch.tensor([0, 0, s, s])
    pos_region = torch.zeros(batch, s, s, dtype=torch.bool)
    for b, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        pos_region[b, y1:y2, x1:x2] = True
    boxes = boxes.float()
    target = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1) / s
    return {"img": torch.randn(batch, 3, s, s, generator=g), "img_mask": torch.zeros(batch, s, s, dtype=torch.bool),
            "image_rect": torch.tensor([[0, 0, s, s]] * batch), "text_ids": ids, "text_mask": text_mask, "target": target, "pos_region": pos_region,
            "index": torch.arange(batch)}


def trained_weights(args, batches, seed=0):
    """The state dict of a model built from seed and trained one epoch over batches, as train.py's loop does."""
    from engine import TrainState, train_one_epoch
    from models import build_criterion, build_model
    from train import build_optimizer

    torch.manual_seed(seed)
    model = build_model(args)
    state = TrainState(model, build_criterion(args), build_optimizer(model, args),
                       torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), args,
                       {"step": 0, "batch": 0, "train_seconds": 0.0})
    train_one_epoch(state, batches, 0)
    return model.state_dict()


def without_dropout(model):
    """Dropout off (in place; returns model): runs to be compared must see the same network."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def model_inputs(batch):
    return batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_in_process_group(rank, world_size, port, fn, *fn_args):
    """torch.multiprocessing.spawn target: torchrun's environment, then fn(rank, world_size, *fn_args)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        fn(rank, world_size, *fn_args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world_size, *fn_args):
    torch.multiprocessing.spawn(run_in_process_group, args=(world_size, free_port(), fn, *fn_args),
                                nprocs=world_size, join=True)


def make_demo(tmp_path_factory, seed, train, holdout):
    """A small demo dataset (datasets.demo) in a fresh temporary folder: train / holdout / holdout expressions."""
    from datasets import demo
    out = tmp_path_factory.mktemp("demo")
    demo.main(["--output_dir", str(out), "--seed", str(seed), "--train", str(train), "--val", str(holdout),
               "--test", str(holdout)])
    return out


def write_tiny_checkpoint(path, seed=0, extra=()):
    """A checkpoint of a randomly initialised tiny model for the demo's vocabulary, as train.py writes it; extra:
    more model flags (e.g. ("--mask_head", "fine"))."""
    from datasets import build_tokenizer
    from models import build_model
    from models.checkpoint import json_config, tokenizer_info
    from utils.files import atomic_save

    args = tiny_args("--dataset", "demo", *extra)
    tokenizer = build_tokenizer(args)
    args.bert_vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    model = build_model(args)
    atomic_save({"model": model.state_dict(), "args": json_config(args), "tokenizer": tokenizer_info(tokenizer, args),
                 "epoch": 0}, path)
    return path


def noise_image(path, width=150, height=90, seed=0):
    """A random RGB image file (its format from the suffix)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def oriented_copies(upright, folder, suffix=".jpg", tags=range(1, 9)):
    """{tag: file} whose pixels are stored turned so that applying EXIF orientation tag `tag` shows `upright`
    (uint8 [H, W, 3]), and "upright": the image itself without EXIF; JPEG at quality 100 without chroma subsampling,
    HEIC lossless (pillow-heif), AVIF at quality 100."""
    from PIL import Image

    from datasets.images import ORIENTATION_TAG, orient

    options = {".jpg": {"quality": 100, "subsampling": 0}, ".heic": {"quality": -1}, ".avif": {"quality": 100}}[suffix]
    if suffix == ".heic":
        import pillow_heif
        pillow_heif.register_heif_opener()
    files = {"upright": folder / f"upright{suffix}"}
    Image.fromarray(upright).save(files["upright"], **options)
    for tag in tags:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = tag
        files[tag] = folder / f"orientation_{tag}{suffix}"
        stored = orient(upright, {6: 8, 8: 6}.get(tag, tag))  # 6 and 8 undo each other; the others undo themselves
        Image.fromarray(stored).save(files[tag], exif=exif.tobytes(), **options)
    return files
