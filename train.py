"""Train SegVG. Flags keep the original repository's names; defaults are the paper configuration.

    python train.py --dataset unc --data_root ... --split_root ... --detr_model detr-r101-unc.pth
    torchrun --nproc_per_node 8 train.py ...     (see train.sh)
"""
import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

import utils.misc as utils
from datasets import build_loaders, build_subset_loader, build_tokenizer
from engine import AMP_DTYPES, NonFiniteLossError, evaluate, format_stats, summarize_results, train_one_epoch
from models import build_model
from utils.checkpoint import CheckpointError, load_detr_weights
from utils.losses import build_criterion
from utils.lr_scheduler import SCHEDULERS, budget_spent
from utils.preemption import StopSignal
from utils.training_state import LATEST, TrainingRun, fresh_progress


def get_args_parser():
    parser = argparse.ArgumentParser("SegVG training", add_help=False)

    # Optimisation (SPEC §5, §7.2)
    parser.add_argument("--lr", default=1e-4, type=float, help="lr of the new modules")
    parser.add_argument("--lr_bert", default=1e-5, type=float)
    parser.add_argument("--lr_visu_cnn", default=1e-5, type=float)
    parser.add_argument("--lr_visu_tra", default=1e-5, type=float)
    parser.add_argument("--batch_size", default=8, type=int, help="per process")
    parser.add_argument("--weight_decay", default=1e-4, type=float)
    parser.add_argument("--epochs", default=90, type=int)
    parser.add_argument("--lr_power", default=0.9, type=float, help="exponent of the poly schedule")
    parser.add_argument("--clip_max_norm", default=0.1, type=float, help="0 disables clipping")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "rmsprop", "sgd"])
    parser.add_argument("--lr_scheduler", default="step", choices=SCHEDULERS,
                        help="per-epoch step/poly/halfdecay/cosine as the original, or per-iteration cosine_iter "
                             "over the whole run (--epochs, or --max_steps / --minutes when set)")
    parser.add_argument("--warmup_steps", default=0, type=int, help="linear lr warmup over the first iterations")
    parser.add_argument("--cosine_hold", default=0.0, type=float,
                        help="cosine_iter: fraction of the run at the peak lr before the cosine decay starts")
    parser.add_argument("--eval_every", default=0, type=int,
                        help="also validate every N steps on the first --eval_subset validation samples "
                             "(val_curve.txt)")
    parser.add_argument("--eval_subset", default=500, type=int, help="samples of the --eval_every validation")
    parser.add_argument("--max_steps", default=0, type=int,
                        help="training budget in optimizer steps: stop after this many (0: run all --epochs)")
    parser.add_argument("--minutes", default=0.0, type=float,
                        help="training time budget: stop when it is spent (0: run all --epochs); with --max_steps, "
                             "whichever runs out first ends the run and sets the pace of the lr schedule")
    parser.add_argument("--lr_drop", default=60, type=int)
    parser.add_argument("--freeze_epochs", default=10, type=int,
                        help="epochs during which the visual and text backbones are frozen")

    # Augmentation (SPEC §4.5)
    parser.add_argument("--aug_blur", action="store_true")
    parser.add_argument("--aug_crop", action="store_true")
    parser.add_argument("--aug_scale", action="store_true")
    parser.add_argument("--aug_translate", action="store_true")
    parser.add_argument("--color_jitter", default=0.4, type=float,
                        help="brightness, contrast and saturation jitter strength (the original's 0.4; 0 disables)")
    parser.add_argument("--flip_text", default="word", choices=["word", "legacy"],
                        help="left/right swap on flip: whole words, or the original substring swap")
    parser.add_argument("--mask_padding", action="store_true",
                        help="mark canvas padding in the image mask (the original marks none)")
    parser.add_argument("--float_boxes", action="store_true",
                        help="keep ground-truth boxes as floats (the original truncates them to int)")

    # Visual branch (SPEC §2.2)
    parser.add_argument("--backbone", default="resnet101",
                        choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    parser.add_argument("--backbone_norm", default="frozen", choices=["frozen", "batch", "group"],
                        help="ResNet normalisation: frozen statistics (pretrained) or trainable (from scratch)")
    parser.add_argument("--backbone_stride", default=32, type=int, choices=[32, 16, 8],
                        help="16 / 8: stop the ResNet after layer3 / layer2 (finer grid, cheaper; for small images "
                             "trained from scratch)")
    parser.add_argument("--train_stem", action="store_true",
                        help="also train the ResNet stem and layer1 (frozen in the original)")
    parser.add_argument("--position_embedding", default="sine", choices=["sine", "learned"])
    parser.add_argument("--enc_layers", default=6, type=int,
                        help="DETR encoder layers = number of Triple Alignment stages")
    parser.add_argument("--dim_feedforward", default=2048, type=int)
    parser.add_argument("--hidden_dim", default=256, type=int)
    parser.add_argument("--dropout", default=0.1, type=float)
    parser.add_argument("--nheads", default=8, type=int)
    parser.add_argument("--pre_norm", action="store_true")
    parser.add_argument("--imsize", default=640, type=int)

    # Text branch (SPEC §2.3)
    parser.add_argument("--bert_model", default="bert-base-uncased",
                        help="Hugging Face hub name or local folder (weights, config and vocabulary)")
    parser.add_argument("--bert_init", default="pretrained", choices=["pretrained", "random"],
                        help="random: build BERT from the --bert_* sizes below without any download")
    parser.add_argument("--bert_layers", default=12, type=int)
    parser.add_argument("--bert_hidden_dim", default=768, type=int)
    parser.add_argument("--bert_heads", default=12, type=int)
    parser.add_argument("--bert_ffn", default=3072, type=int)
    parser.add_argument("--bert_vocab_size", default=30522, type=int)
    parser.add_argument("--bert_dropout", default=0.1, type=float,
                        help="dropout of a random BERT (a pretrained one keeps its config's)")
    parser.add_argument("--vocab_file", default="",
                        help="WordPiece vocab.txt to tokenize with instead of --bert_model's")
    parser.add_argument("--max_query_len", default=40, type=int)

    # Vision-language encoder, decoder, heads (SPEC §2.4-§2.7)
    parser.add_argument("--vl_dropout", default=0.1, type=float)
    parser.add_argument("--vl_nheads", default=8, type=int)
    parser.add_argument("--vl_hidden_dim", default=256, type=int)
    parser.add_argument("--vl_dim_feedforward", default=2048, type=int)
    parser.add_argument("--vl_enc_layers", default=6, type=int)
    parser.add_argument("--vl_dec_layers", default=6, type=int)
    parser.add_argument("--num_seg_queries", default=5, type=int)
    parser.add_argument("--drop_key", default=0.0, type=float,
                        help="real DropKey rate in the custom attentions (training only; the original's is a no-op)")

    # Loss (SPEC §3)
    parser.add_argument("--detach_pos_factor", action="store_true",
                        help="stop the box losses' gradient from flowing into the segmentation head")
    parser.add_argument("--seg_loss", default="on", choices=["on", "off"],
                        help="off: the paper's baseline without segmentation supervision (no focal and dice terms, "
                             "box losses unweighted); the architecture is unchanged")
    parser.add_argument("--mask_loss_coef", default=1.0, type=float,
                        help="weight of the focal term (the original: 1); the box losses' mask-fit factor is unchanged")
    parser.add_argument("--dice_loss_coef", default=1.0, type=float, help="weight of the dice term (the original: 1)")

    # Data
    parser.add_argument("--data_root", default="./data/images")
    parser.add_argument("--split_root", default="./data/split")
    parser.add_argument("--dataset", default="unc",
                        choices=["unc", "unc+", "gref", "gref_umd", "referit", "flickr", "demo"])
    parser.add_argument("--num_workers", default=4, type=int)
    parser.add_argument("--cache_data", action="store_true",
                        help="keep decoded images and tokenized expressions in memory after their first use, in "
                             "each loader process: for --num_workers 0 and data that fit in memory (demo: ~0.2 GB)")

    # Run
    parser.add_argument("--output_dir", default="./outputs")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    parser.add_argument("--amp", default="off", choices=sorted(AMP_DTYPES),
                        help="autocast precision; fp16 also uses a gradient scaler")
    parser.add_argument("--channels_last", action="store_true",
                        help="channels-last memory format for the CNN (much faster on CPU)")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (slower)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (needs a C++ compiler on CPU, Triton on GPU; falls back to "
                             "the uncompiled model with a warning); the first steps pay the compile time")
    parser.add_argument("--tf32", action="store_true",
                        help="TF32 matrix products on Ampere+ GPUs (convolutions use TF32 there by default, as in "
                             "the original); faster, ~1e-3 relative precision")
    parser.add_argument("--checkpoint_activations", action="store_true",
                        help="recompute each ResNet stage and transformer layer in backward instead of keeping its "
                             "activations: less memory, ~30%% more compute, the same gradients")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--resume", default="", help="checkpoint to continue from (also one written mid-epoch)")
    parser.add_argument("--auto_resume", action="store_true",
                        help="resume from <output_dir>/checkpoint_latest.pth when it exists, else start fresh")
    parser.add_argument("--save_every", default=1000, type=int,
                        help="also write checkpoint_latest.pth every N optimizer steps (0: at epoch ends only); "
                             "1000 steps are ~8 minutes at the paper's settings, a save ~1%% of that")
    parser.add_argument("--keep_last", default=1, type=int,
                        help="keep the last K step checkpoints as checkpoint_step<N>.pth too (1: the latest only)")
    parser.add_argument("--detr_model", default="", help="DETR checkpoint that initialises the visual branch")
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--dist_url", default="env://")
    parser.add_argument("--tensorboard", default="", help="TensorBoard log folder (needs the tensorboard package)")
    return parser


def build_optimizer(model, args):
    """The original's four parameter groups (SPEC §5.1), collected once from the parameters trainable at build
    time; each group keeps its initial lr for the schedule."""
    lrs = {"rest": args.lr, "visual_cnn": args.lr_visu_cnn, "visual_transformer": args.lr_visu_tra,
           "text": args.lr_bert}
    groups = [{"params": params, "lr": lrs[name], "initial_lr": lrs[name], "name": name}
              for name, params in model.parameter_groups().items() if params]
    # fused: one kernel for all parameters instead of a Python loop (the step is ~10% of a small CPU model's time).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=args.weight_decay, fused=fused)
    if args.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=args.weight_decay, fused=fused)
    if args.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, weight_decay=args.weight_decay)
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=args.weight_decay)
    raise ValueError(f"unknown --optimizer {args.optimizer!r}")


def backbone_parameters(model):
    """Visual and text parameters trainable at build time: the set that --freeze_epochs toggles. Parameters
    frozen at build (ResNet stem and layer1 unless --train_stem, BERT's pooler, branches with lr <= 0) stay
    frozen, unlike the original's unfreeze (SPEC §5.3)."""
    return [p for module in (model.visual, model.text) for p in module.parameters() if p.requires_grad]


def wrap_model(model, args):
    """One DistributedDataParallel wrap for the whole run; the frozen epochs leave the backbones without
    gradients, which needs the unused-parameter search. Gradients live in the communication buckets (no copy);
    the graph is declared static when no parameter is frozen or unfrozen during this run."""
    if not args.distributed:
        return model
    on_gpu = torch.device(args.device).type == "cuda"
    toggles = args.start_epoch < args.freeze_epochs
    return DistributedDataParallel(model, device_ids=[args.gpu] if on_gpu else None, find_unused_parameters=toggles,
                                   gradient_as_bucket_view=True, static_graph=not toggles)


def build_tensorboard(args):
    if not args.tensorboard or not utils.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(args.tensorboard)


def main(args):
    """Train. Returns (status, stop): status "done", "budget" (--max_steps or --minutes spent) or "stopped" by the
    signal that stop.signum names (after saving the checkpoint)."""
    if not 0 <= args.cosine_hold < 1:
        raise ValueError(f"--cosine_hold must be in [0, 1), got {args.cosine_hold}")
    if args.keep_last < 1:
        raise ValueError(f"--keep_last must be at least 1, got {args.keep_last}")
    with StopSignal() as stop:
        return train(args, stop), stop


def train(args, stop):
    utils.init_distributed_mode(args)
    utils.limit_opencv_threads()
    if args.deterministic:
        # cuBLAS needs a fixed workspace for deterministic matrix products.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.tf32:
        utils.enable_tf32()
    device = torch.device(args.device)
    rank, world = utils.get_rank(), utils.get_world_size()
    utils.seed_everything(args.seed + rank)
    latest = Path(args.output_dir) / LATEST
    if args.auto_resume and not args.resume and latest.is_file():
        args.resume = str(latest)

    tokenizer = build_tokenizer(args)
    if args.bert_init == "random":
        # A BERT trained from scratch gets exactly one embedding row per token of the vocabulary in use.
        args.bert_vocab_size = len(tokenizer)
    loader_train, loader_val = build_loaders(args, tokenizer)
    model = build_model(args)
    if args.detr_model and not args.resume:
        used, ignored = load_detr_weights(model, args.detr_model)
        print(f"DETR weights from {args.detr_model}: {len(used)} tensors used, {len(ignored)} ignored "
              f"({', '.join(sorted({k.split('.')[0] for k in ignored}))})")
    model.to(device)
    if args.channels_last:
        model.visual.backbone.set_channels_last()
    if args.distributed and args.backbone_norm == "batch" and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    backbone = backbone_parameters(model)
    optimizer = build_optimizer(model, args)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    criterion = build_criterion(args)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{n_parameters:,} trainable parameters; {len(loader_train)} steps per epoch of "
          f"{args.batch_size} x {world} samples")

    run = TrainingRun(args, model, optimizer, scaler, tokenizer)
    progress, epoch_metrics, rng_states = fresh_progress(), None, None
    if args.resume:
        progress, epoch_metrics, rng_states = run.resume(args.resume)
        print(f"resumed from {args.resume} at epoch {progress['epoch']}, batch {progress['batch']}, "
              f"step {progress['step']}")
        if progress["epoch"] >= args.epochs or budget_spent(args, progress):
            print(f"nothing left to train: {args.resume} has finished its {args.epochs} epochs, its "
                  f"{args.max_steps} steps or its {args.minutes}-minute budget (raise --epochs / --max_steps / "
                  f"--minutes to continue, or use a new --output_dir to start over)")
            return "done"
    args.start_epoch = progress["epoch"]
    run.start(resumed=bool(args.resume))
    model_without_ddp = model
    if args.compile:
        utils.compile_model(model, device)
    model = wrap_model(model, args)
    writer = build_tensorboard(args)
    if rng_states is not None:
        # Last, so that nothing above draws from the restored streams.
        if len(rng_states) == world:
            utils.set_rng_state(rng_states[rank])
        else:
            print(f"checkpoint has RNG states for {len(rng_states)} processes, this run has {world}: "
                  f"keeping fresh seeds, so the run will not repeat the original exactly")

    subset_loader = build_subset_loader(loader_val, args) if args.eval_every > 0 else None

    def validate_subset():
        results = evaluate(model_without_ddp, subset_loader, device, args, desc="Val subset")
        run.log_curve({"step": progress["step"], "train_seconds": progress["train_seconds"], "epoch": epoch,
                       **summarize_results(results, loader_val.dataset)})

    print("Start training")
    start_time = time.time()
    status = "done"
    for epoch in range(args.start_epoch, args.epochs):
        for param in backbone:
            param.requires_grad_(epoch >= args.freeze_epochs)
        loader_train.batch_sampler.sampler.set_epoch(epoch)
        loader_train.dataset.set_epoch(epoch)
        logger = utils.MetricLogger()
        if epoch_metrics is not None:  # resumed mid-epoch: the averages so far
            logger.load_state_dict(epoch_metrics)
            epoch_metrics = None
        train_stats, status = train_one_epoch(model, criterion, loader_train, optimizer, scaler, device, epoch, args,
                                              progress, writer, logger, lambda lg: run.save_step(progress, lg), stop,
                                              validate_subset if subset_loader is not None else None)
        if status == "stopped":
            # Every rank says where it stopped (they agree: the stop request is all-reduced with the loss).
            sys.stdout.write(f"rank {rank} stopped at epoch {epoch}, step {progress['step']}; checkpoint written "
                             f"to {latest} (continue with --auto_resume or --resume {latest})\n")
            sys.stdout.flush()
            break
        val_stats = summarize_results(evaluate(model_without_ddp, loader_val, device, args, desc="Val"),
                                      loader_val.dataset)
        print(f"epoch {epoch} validation: {format_stats(val_stats)}")
        improved = val_stats["accu"] > progress["best_accu"]
        progress["best_accu"] = max(progress["best_accu"], val_stats["accu"])
        log = {"epoch": epoch, "step": progress["step"], **{f"train_{k}": v for k, v in train_stats.items()},
               **{f"validation_{k}": v for k, v in val_stats.items()}, "n_parameters": n_parameters,
               "train_seconds": progress["train_seconds"]}
        run.save_epoch(progress, log, val_stats, improved)
        if writer is not None:
            writer.add_scalar("eval_acc", val_stats["accu"], epoch)
        progress.update(epoch=epoch + 1, batch=0)
        if status == "budget":
            print(f"training budget (--max_steps {args.max_steps}, --minutes {args.minutes}) spent after epoch "
                  f"{epoch}, step {progress['step']}")
            break

    if writer is not None:
        writer.close()
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}; "
          f"best validation Acc@0.5 {progress['best_accu']:.4f}")
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser("SegVG training", parents=[get_args_parser()])
    args = parser.parse_args()
    code = 0
    try:
        status, stop = main(args)
        if status == "stopped":
            code = stop.exit_status()
    except (NonFiniteLossError, CheckpointError, FileNotFoundError, ValueError) as err:
        if utils.is_main_process():
            sys.stderr.write(f"error: {err}\n")
        code = 1
    finally:
        if utils.is_dist_avail_and_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)
