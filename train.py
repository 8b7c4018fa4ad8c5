"""Train SegVG. Flags keep the original repository's names; defaults are the paper configuration.

    python train.py --dataset unc --data_root ... --split_root ... --detr_model detr-r101-unc.pth
    torchrun --nproc_per_node 8 train.py ...     (see train.sh)
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from datasets import build_loaders, build_subset_loader, build_tokenizer, is_generalized
from datasets.mixed import dataset_names
from engine import (BEST, LATEST, NonFiniteLossError, TrainingRun, TrainState, evaluate, format_stats, fresh_progress,
                    selection_score, summarize_results, train_one_epoch)
from evaluation.generalized_results import generalized_scorer
from evaluation.presence import mask_statistic
from models import build_criterion, build_model
from models.checkpoint import (RUN_KEYS, CheckpointError, apply_pretrained_config, json_config, load_detr_weights,
                               load_weights, safe_load, tokenizer_from_checkpoint)
from models.pretrained import read_checkpoint
from utils.distributed import (all_gather_object, collective_timeout, destroy_process_group, get_rank, get_world_size,
                               init_distributed_mode, is_main_process)
from utils.files import FileWriteError, atomic_write
from utils.lr_scheduler import budget_spent
from utils.metric_logger import MetricLogger
from utils.options import build_training_parser, explicit_flags, model_flags
from utils.preemption import StopSignal
from utils.rng import seed_everything, set_rng_state
from utils.run_lock import OutputDirLock, RunLockError
from utils.runtime import compile_model, limit_opencv_threads, set_tf32


def get_args_parser():
    """The parser train.py parses with (flags in utils/options.py; `@file` reads flags from a file)."""
    return build_training_parser()


def build_optimizer(model, args):
    """The original's four parameter groups (docs/original.md, "Optimisation"), collected once from the
    parameters trainable at build time; each group keeps its initial lr for the schedule."""
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
    frozen, unlike the original's unfreeze (docs/differences.md, "Freezing")."""
    return [p for module in (model.visual, model.text) for p in module.parameters() if p.requires_grad]


def wrap_model(model, args, start_epoch):
    """One DistributedDataParallel wrap for the whole run; the frozen epochs leave the backbones without
    gradients, which needs the unused-parameter search. Gradients live in the communication buckets (no copy);
    the graph is declared static when no parameter is frozen or unfrozen during this run."""
    if not args.distributed:
        return model
    on_gpu = torch.device(args.device).type == "cuda"
    toggles = start_epoch < args.freeze_epochs
    return DistributedDataParallel(model, device_ids=[args.gpu] if on_gpu else None, find_unused_parameters=toggles,
                                   gradient_as_bucket_view=True, static_graph=not toggles)


def build_tensorboard(args):
    if not args.tensorboard or not is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(args.tensorboard)


def curve_validator(model, loader_val, run, args, device):
    """validate(progress, epoch) for --eval_every: the first --eval_subset validation samples, one val_curve.txt
    line (overall and per expression type)."""
    subset_loader = build_subset_loader(loader_val, args)

    def validate(progress, epoch):
        results = evaluate(model, subset_loader, device, args.amp, desc="Val subset")
        run.log_curve({"step": progress["step"], "train_seconds": progress["train_seconds"], "epoch": epoch,
                       **summarize_results(results, loader_val.dataset, {"args": args})})
    return validate


def has_no_target_phrases(dataset):
    return is_generalized(dataset) and bool((dataset.target_counts() == 0).any())


def warn_presence_without_negatives(args, no_target_phrases):
    """--presence_head learns "not here" only from phrases with no target: say so once when there are none."""
    if args.presence_head and not no_target_phrases:
        print(f"warning: --presence_head, but no training phrase of {args.dataset} has \"boxes\": [] (no target): "
              f"the head only ever sees phrases that are present and will not learn to say \"not found\" "
              f"(docs/generalized.md)")


def report_mix(args, dataset):
    """Several datasets: one line per dataset (kept, dropped), mixed_data.json in the output folder."""
    if len(dataset_names(args.dataset)) == 1:
        return
    if args.allow_test_images:
        print(f"warning: --allow_test_images: the training expressions of {args.dataset} are kept even where their "
              f"image is in an evaluation split; test figures of this run are not fair")
        report = {name: {"kept": len(part), "dropped": 0, "dropped_images": []}
                  for name, part in zip(dataset.names, dataset.datasets)}
    else:
        report = dataset.dropped
    for name, counts in report.items():
        images = len(counts["dropped_images"])
        print(f"{name}: {counts['kept']} training expressions kept, {counts['dropped']} dropped"
              + (f" (their {images} images are in evaluation splits)" if images else ""))
    if is_main_process():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        text = json.dumps({"allow_test_images": args.allow_test_images, "holdout_images": args.holdout_images,
                           "datasets": report}, indent=1)
        atomic_write(Path(args.output_dir) / "mixed_data.json", lambda f: f.write(text.encode()))


def lock_output_dir(args):
    """The output folder's lock, taken by rank 0 (the writer); every rank raises the same error when it is held."""
    lock, error = OutputDirLock(args.output_dir), None
    if is_main_process():
        try:
            lock.acquire()
        except RunLockError as err:
            error = str(err)
    error = all_gather_object(error)[0]
    if error:
        raise RunLockError(error)
    return lock


def checkpoint_step(path):
    """The step a checkpoint was written at, read without loading its tensors."""
    try:
        return safe_load(path, mmap=True).get("step", "?")
    except CheckpointError:  # a damaged file is still one the run would replace
        return "?"


def claim_output_dir(args):
    """A new run may not silently replace another: refuse a folder holding a checkpoint, or with --overwrite remove
    its checkpoints (rank 0) and say so."""
    folder = Path(args.output_dir)
    found = [p for p in (folder / LATEST, folder / BEST) if p.is_file()]
    if not found:
        return
    held = f"{found[0]} (step {checkpoint_step(found[0])})"
    if not args.overwrite:
        raise ValueError(f"{folder} holds {held}: continue that run with --auto_resume, or start over with "
                         f"--overwrite (which replaces it), or choose another --output_dir")
    print(f"--overwrite: starting over in {folder}; {held} and the run's other checkpoints are removed")
    if is_main_process():
        for path in [*found, *folder.glob("checkpoint_step*.pth")]:
            path.unlink()


def check_resumed_flags(args):
    """Resuming with other flags than the checkpoint's run: name them; refuse another model or dataset unless
    --allow_flag_changes (a longer schedule, another learning rate and the like go on)."""
    saved = safe_load(args.resume, mmap=True).get("args") or {}
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else saved
    now = json_config(args)
    ignored = RUN_KEYS | {"overwrite", "allow_flag_changes", "data_root", "split_root", "eval_every", "eval_subset",
                          "save_every", "keep_last"}
    changed = {k: (saved[k], now[k]) for k in sorted(now) if k in saved and k not in ignored and saved[k] != now[k]}
    if not changed:
        return
    listed = ", ".join(f"--{k} {old} -> {new}" for k, (old, new) in changed.items())
    identity = sorted(set(changed) & (model_flags() | {"dataset"}))
    if identity and not args.allow_flag_changes:
        raise ValueError(f"{args.resume} was trained with other model or dataset flags ({listed}): that is another "
                         f"run; give its flags, --allow_flag_changes to go on anyway, or --overwrite to start over")
    print(f"resuming {args.resume} with flags that differ from its run: {listed}")


def main(args, explicit=()):
    """Train. explicit: the flags given on the command line, which a --pretrained checkpoint's configuration does not
    override. Returns (status, stop): status "done", "budget" (--max_steps or --minutes spent) or "stopped" by the
    signal that stop.signum names (after saving the checkpoint)."""
    if not 0 <= args.cosine_hold < 1:
        raise ValueError(f"--cosine_hold must be in [0, 1), got {args.cosine_hold}")
    if args.keep_last < 1:
        raise ValueError(f"--keep_last must be at least 1, got {args.keep_last}")
    args.output_dir = args.output_dir or str(Path("outputs") / "+".join(dataset_names(args.dataset)))
    init_distributed_mode(args)
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restart:  # torchrun's own note of it is at its INFO level, which it does not print by default
        print(f"torchrun restarted the workers after a failure (restart {restart} of "
              f"{os.environ.get('TORCHELASTIC_MAX_RESTARTS', '?')}); continuing from the output folder's checkpoint")
    lock = lock_output_dir(args)
    try:
        with StopSignal() as stop:
            return train(args, stop, explicit), stop
    finally:
        lock.release()


def train(args, stop, explicit=()):
    limit_opencv_threads()
    if args.deterministic:
        # cuBLAS needs a fixed workspace for deterministic matrix products.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not args.deterministic
    if args.tf32:
        set_tf32(True)
    device = torch.device(args.device)
    rank, world = get_rank(), get_world_size()
    seed_everything(args.seed + rank)
    latest = Path(args.output_dir) / LATEST
    if args.auto_resume and not args.resume and latest.is_file():
        args.resume = str(latest)
    if not args.resume:
        claim_output_dir(args)

    pretrained = read_checkpoint(args.pretrained) if args.pretrained else None
    if pretrained is not None:
        # The configuration and vocabulary also when resuming: the run's model is the pretrained one's.
        official = apply_pretrained_config(args, pretrained, explicit)
        tokenizer = tokenizer_from_checkpoint(pretrained, args, explicit)
    else:
        tokenizer = build_tokenizer(args)
    if args.bert_init == "random":
        # A BERT trained from scratch gets exactly one embedding row per token of the vocabulary in use.
        args.bert_vocab_size = len(tokenizer)
    if args.resume:
        check_resumed_flags(args)
    loader_train, loader_val = build_loaders(args, tokenizer)
    report_mix(args, loader_train.dataset)
    model = build_model(args)
    if pretrained is not None and not args.resume:
        load_weights(model, pretrained, official, f"pretrained checkpoint {args.pretrained}", new_mask_head=True)
        fresh = model.mask_head is not None and not any(k.startswith("mask_head.") for k in pretrained.get("model", {}))
        print(f"every weight initialised from {'the official checkpoint ' if official else ''}{args.pretrained}"
              + (", but the fine mask head's, which starts fresh" if fresh else ""))
        del pretrained
    elif args.detr_model and not args.resume:
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
    no_target_phrases = has_no_target_phrases(loader_train.dataset)
    criterion = build_criterion(args, no_target_phrases)
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
    start_epoch = progress["epoch"]
    run.start(start_epoch, resumed=bool(args.resume))
    model_without_ddp = model
    if args.compile:
        compile_model(model, device)
    model = wrap_model(model, args, start_epoch)
    writer = build_tensorboard(args)
    if rng_states is not None:
        # Last, so that nothing above draws from the restored streams.
        if len(rng_states) == world:
            set_rng_state(rng_states[rank])
        else:
            print(f"checkpoint has RNG states for {len(rng_states)} processes, this run has {world}: "
                  f"keeping fresh seeds, so the run will not repeat the original exactly")

    state = TrainState(model, criterion, optimizer, scaler, device, args, progress, save_step=run.save_step, stop=stop,
                       writer=writer)
    if args.eval_every > 0:
        state.validate = curve_validator(model_without_ddp, loader_val, run, args, device)

    val_scorer = generalized_scorer(loader_val.dataset, args)
    warn_presence_without_negatives(args, no_target_phrases)
    print("Start training")
    start_time = time.time()
    status, ended = "done", ""
    for epoch in range(start_epoch, args.epochs):
        for param in backbone:
            param.requires_grad_(epoch >= args.freeze_epochs)
        loader_train.batch_sampler.sampler.set_epoch(epoch)
        loader_train.dataset.set_epoch(epoch)
        logger = MetricLogger()
        if epoch_metrics is not None:  # resumed mid-epoch: the averages so far
            logger.load_state_dict(epoch_metrics)
            epoch_metrics = None
        train_stats, status = train_one_epoch(state, loader_train, epoch, logger)
        if status == "stopped":
            # Every rank says where it stopped (they agree: the stop request is all-reduced with the loss).
            sys.stdout.write(f"rank {rank} stopped at epoch {epoch}, step {progress['step']}; checkpoint written "
                             f"to {latest} (continue with --auto_resume or --resume {latest})\n")
            sys.stdout.flush()
            break
        results = evaluate(model_without_ddp, loader_val, device, args.amp, desc="Val", mask_scorer=val_scorer)
        val_stats = summarize_results(results, loader_val.dataset, {"args": args})
        print(f"epoch {epoch} validation: {format_stats(val_stats)}")
        if "presence_by_source" in val_stats:  # kept in the checkpoint for --presence_threshold auto
            model_without_ddp.presence_thresholds = {
                source: dict(chosen, split=f"{args.dataset}:val",
                             **({"mask_statistic": mask_statistic()} if source != "head" else {}))
                for source, chosen in val_stats["presence_by_source"].items()}
        if status == "budget" or epoch + 1 == args.epochs:
            ended = end_of_training(args, status, progress)
        score = selection_score(val_stats, args.best_on)
        improved = score > progress["best_accu"]
        progress["best_accu"] = max(progress["best_accu"], score)
        log = {"epoch": epoch, "step": progress["step"], **{f"train_{k}": v for k, v in train_stats.items()},
               **{f"validation_{k}": v for k, v in val_stats.items()}, "n_parameters": n_parameters,
               "train_seconds": progress["train_seconds"], **({"end": ended} if ended else {})}
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
    picked_by, measure = "", "Acc@0.5"
    if len(dataset_names(args.dataset)) > 1:
        picked_by = f" ({args.best_on}'s val split)" if args.best_on else " (the mean over the datasets' val splits)"
    if is_generalized(loader_val.dataset):
        measure = {"accu": "one-target Acc@0.5", "giou": "gIoU"}.get(args.best_on, "score (mean of gIoU and "
                                                                                   "one-target Acc@0.5)")
    print(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}; "
          f"best validation {measure} {progress['best_accu']:.4f}{picked_by}")
    if ended:
        print(f"Training ended: {ended}")
    return status


def end_of_training(args, status, progress):
    """How the run ended, in words: step-bound (--max_steps reached), stopped by the --minutes cap (with the steps
    done), or all --epochs trained."""
    steps, minutes = progress["step"], progress["train_seconds"] / 60
    if status == "budget" and args.max_steps > 0 and steps >= args.max_steps:
        return f"step-bound, {steps} of {args.max_steps} steps in {minutes:.1f} minutes of training"
    if status == "budget":
        of = f" of {args.max_steps}" if args.max_steps > 0 else ""
        return (f"stopped by the {args.minutes:g}-minute cap (--minutes) after {steps}{of} steps; the lr schedule "
                f"followed the time, so the run is shorter than a step-bound one")
    return f"all {args.epochs} epochs, {steps} steps in {minutes:.1f} minutes of training"


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    code = 0
    try:
        status, stop = main(args, explicit_flags(parser, sys.argv[1:]))
        if status == "stopped":
            code = stop.exit_status()
    except (NonFiniteLossError, CheckpointError, FileWriteError, RunLockError, FileNotFoundError, ValueError) as err:
        if is_main_process():
            sys.stderr.write(f"error: {err}\n")
        code = 1
    except RuntimeError as err:  # a hung peer: every rank that waited says so (it may not be rank 0)
        line = collective_timeout(err, args.dist_timeout)
        if line is None:
            raise
        sys.stderr.write(f"error: {line}\n")
        code = 1
    finally:
        destroy_process_group()
    sys.exit(code)
