"""Training epoch and evaluation loops (the original's engine.py), and the training run's state: what it writes
(checkpoints at the end of each epoch and every --save_every steps, the per-epoch log, --keep_last step history) and
how it continues from any of them, also mid-epoch."""
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from datasets import is_generalized
from datasets.samplers import ResumableBatchSampler
from evaluation.box_metrics import prediction_ious, summarize, summarize_by_group
from evaluation.generalized_metrics import format_generalized
from evaluation.generalized_results import summarize_generalized_results
from evaluation.mask_metrics import MAPS, summarize_mask_results
from evaluation.presence import MASK_PRESENCE_TOP, mask_presence, segmentation_maps
from evaluation.segmentation_map import canvas_probabilities, segmentation_confidence
from models.checkpoint import CheckpointError, json_config, load_state_dict_checked, safe_load, tokenizer_info
from utils.distributed import all_gather_object, get_world_size, is_main_process, reduce_mean
from utils.files import atomic_save, atomic_write
from utils.lr_scheduler import budget_spent, lr_factor, run_fraction, set_lr
from utils.metric_logger import MetricLogger
from utils.rng import get_rng_state

LATEST = "checkpoint_latest.pth"
BEST = "best_checkpoint.pth"
HISTORY = "checkpoint_step{:09d}.pth"
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss stopped being finite; raised before the update, so nothing (in memory or on disk) is touched."""


@dataclass
class TrainState:
    """What the training loop works with besides the data.

    progress: {"step": global iteration, "batch": batches of this epoch done, "train_seconds": training time so
    far, ...}, updated in place and the same on every rank. save_step(progress, logger) writes the mid-epoch
    checkpoint (every --save_every steps and when stopping); stop is a utils.preemption.StopSignal, whose request
    on any rank stops every rank after the same step; validate(progress, epoch) runs every --eval_every steps and
    its time does not count as training time.
    """
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    args: Any
    progress: dict
    save_step: Optional[Callable] = None
    stop: Any = None
    validate: Optional[Callable] = None
    writer: Any = None


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(device, amp):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def gradient_clipping_groups(model):
    """The parameters whose gradients are clipped together (--clip_max_norm): all of them, except that a head trained
    on detached inputs (a fine mask head under --mask_head_gradient head, a presence head under --presence_gradient
    head) is clipped on its own, so that its gradient does not scale the rest's: the rest of the model then trains
    exactly as without it."""
    network = getattr(model, "module", model)  # under DistributedDataParallel
    heads = [getattr(network, name, None) for name, detached in
             (("mask_head", "mask_head_detached"), ("presence_head", "presence_head_detached"))
             if getattr(network, detached, False)]
    heads = [list(head.parameters()) for head in heads if head is not None]
    in_heads = {id(p) for head in heads for p in head}
    return [[p for p in model.parameters() if id(p) not in in_heads]] + heads


def train_one_epoch(state, data_loader, epoch, logger=None):
    """One pass over data_loader from batch state.progress["batch"] (non-zero on a mid-epoch resume).

    logger: the epoch's running averages (restored on a resume). Returns (epoch averages, status): "done",
    "budget" (--max_steps or --minutes spent) or "stopped" (a signal).
    """
    model, criterion, optimizer, scaler = state.model, state.criterion, state.optimizer, state.scaler
    args, device, progress, writer = state.args, state.device, state.progress, state.writer
    model.train()
    criterion.train()
    logger = logger or MetricLogger()
    world = get_world_size()
    first = progress["batch"]
    if isinstance(getattr(data_loader, "batch_sampler", None), ResumableBatchSampler):
        data_loader.batch_sampler.start = first
    elif first:
        raise ValueError("starting an epoch mid-way needs a DataLoader with a ResumableBatchSampler")
    bar = tqdm(data_loader, desc=f"Epoch {epoch}", disable=not is_main_process(), dynamic_ncols=True,
               mininterval=1.0, initial=first, total=len(data_loader))
    start_seconds, start_count = progress["train_seconds"], logger.counts["loss"]
    epoch_start = last = time.perf_counter()
    paused = 0.0  # seconds spent validating inside the epoch, not training
    status = "done"
    clipping_groups = gradient_clipping_groups(model)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(bar, first):
        fraction = run_fraction(args, progress, len(data_loader))
        set_lr(optimizer, lr_factor(args, epoch, progress["step"], fraction))
        batch = to_device(batch, device)
        with autocast(device, args.amp):
            outputs = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"])
        losses = criterion(outputs, batch["target"], batch["pos_region"], batch, fraction)

        # One all_reduce gives every rank the same loss, clock and stop request, so all stop at the same step.
        local_seconds = start_seconds + time.perf_counter() - epoch_start - paused
        signalled = float(state.stop is not None and state.stop.requested)
        terms = sorted(losses)  # the same names on every rank
        *values, seconds, stopping = reduce_mean([losses[k].item() for k in terms] + [local_seconds, signalled],
                                                 device)
        reduced = dict(zip(terms, values))
        if not math.isfinite(reduced["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss at step {progress['step']} (epoch {epoch}, iteration {i}): "
                + ", ".join(f"{k} {v:.4g}" for k, v in reduced.items())
                + "; training stopped, the last checkpoint was kept")

        scaler.scale(losses["loss"]).backward()
        if args.clip_max_norm > 0:
            scaler.unscale_(optimizer)
            for group in clipping_groups:
                torch.nn.utils.clip_grad_norm_(group, args.clip_max_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        lr = optimizer.param_groups[0]["lr"]
        batch_size = batch["img"].shape[0]
        logger.update(n=batch_size, lr=lr, **reduced)
        if writer is not None:
            for k, v in reduced.items():
                writer.add_scalar(f"Loss/{k}", v, progress["step"])
            writer.add_scalar("lr", lr, progress["step"])
        now = time.perf_counter()
        bar.set_postfix(loss=f"{reduced['loss']:.3f}", lr=f"{lr:.2e}",
                        samples_per_s=f"{batch_size * world / (now - last):.0f}", refresh=False)
        last = now
        progress["step"] += 1
        progress["batch"] = i + 1
        progress["train_seconds"] = seconds
        if stopping > 0:
            status = "stopped"
        elif budget_spent(args, progress):
            status = "budget"
        periodic = args.save_every > 0 and progress["step"] % args.save_every == 0 and i + 1 < len(data_loader)
        if state.save_step is not None and (stopping > 0 or periodic):
            state.save_step(progress, logger)
        if status != "done":
            break
        if state.validate is not None and args.eval_every > 0 and progress["step"] % args.eval_every == 0:
            pause = time.perf_counter()
            state.validate(progress, epoch)
            model.train()
            paused += time.perf_counter() - pause
            last = time.perf_counter()
    bar.close()
    stats = logger.global_averages(device)
    samples = (logger.counts["loss"] - start_count) * world
    stats["samples_per_s"] = samples / max(progress["train_seconds"] - start_seconds, 1e-9)
    return stats, status


@torch.inference_mode()
def evaluate(model, data_loader, device, amp="off", desc="Eval", mask_scorer=None,
             mask_presence_top=MASK_PRESENCE_TOP):
    """Box IoU of every sample of data_loader.dataset, each counted exactly once whatever the world size.

    Each rank predicts its shard (datasets.build_eval_loader: by image, each image's CNN once for its expressions);
    the per-sample results are gathered by dataset index. Returns {index: (IoU, predicted box [cx, cy, w, h],
    segmentation confidence, mask terms, {"present": presence probability or None, "mask_present": the map's
    presence score (evaluation.presence), "boxes": the mask's component boxes or None})} on every rank; the mask
    terms and boxes are mask_scorer.score_sample(index, seg_logits, box)'s (evaluation.mask_metrics.MaskScorer), None
    without one.
    """
    model.eval()
    local = {}
    for batch in tqdm(data_loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True,
                      mininterval=1.0):
        batch = to_device(batch, device)
        with autocast(device, amp):
            outputs = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"], aux=False,
                            image_index=batch.get("image_index"))
        boxes = outputs["pred_boxes"].float()
        ious = prediction_ious(boxes, batch["target"])
        confidence = segmentation_confidence(canvas_probabilities(outputs["seg_logits"], batch["img"].shape[-1]))
        mask_present = mask_presence(segmentation_maps(outputs), batch["img"].shape[-1], mask_presence_top).tolist()
        seg_logits = outputs["seg_logits"].float().cpu() if mask_scorer is not None else None
        present = outputs.get("presence_logits")
        present = present.float().sigmoid().tolist() if present is not None else [None] * len(ious)
        for k, (index, iou, box, conf) in enumerate(zip(batch["index"].tolist(), ious.tolist(), boxes.tolist(),
                                                        confidence.tolist())):
            masks, components = (mask_scorer.score_sample(index, seg_logits[k], boxes[k].cpu())
                                 if mask_scorer is not None else (None, None))
            local[index] = (iou, box, conf, masks, {"present": present[k], "mask_present": mask_present[k],
                                                    "boxes": components})

    results = {}
    for part in all_gather_object(local):
        repeated = results.keys() & part.keys()
        if repeated:
            raise RuntimeError(f"samples evaluated on more than one rank: {sorted(repeated)[:10]}")
        results.update(part)
    dataset = data_loader.dataset
    expected = list(dataset.indices) if isinstance(dataset, Subset) else list(range(len(dataset)))
    if sorted(results) != sorted(expected):
        raise RuntimeError(f"evaluated {len(results)} distinct samples, the dataset has {len(expected)}")
    return results


def summarize_results(results, dataset, generalized=None):
    """Acc@0.5, Acc@0.75, mIoU and count, plus "by_type" when the dataset labels its expressions (the demo; "type"
    in JSONL datasets, where unlabelled ones count as "untyped"), "by_dataset" for a mix of datasets (--dataset A,B),
    plus the mask metrics of the three maps ("mask", "pred_box_mask", "gt_box_mask") when the results hold mask
    terms. On a dataset with phrases of no target or several (gRefCOCO-like) these count the one-target phrases
    only, and the GRES / GREC metrics of all phrases join them (evaluation.generalized_metrics; generalized: its
    options {"args", "presence_threshold", "grec_score_threshold", "grec_match"}, the defaults without)."""
    indices = sorted(results)
    generalized_stats = None
    if is_generalized(dataset):
        generalized_stats = summarize_generalized_results(results, dataset, generalized)
        indices = [i for i in indices if dataset.n_targets(i) == 1]
    ious = [results[i][0] for i in indices]
    stats = summarize(ious)
    types = None
    if hasattr(dataset, "sample_info"):
        infos = [dataset.sample_info(i) for i in indices]
        types = [info.get("expr_type") for info in infos]
        if any(t is not None for t in types):
            types = ["untyped" if t is None else t for t in types]
            stats["by_type"] = summarize_by_group(ious, types)
        else:
            types = None
        if "dataset" in infos[0]:
            stats["by_dataset"] = summarize_by_group(ious, [info["dataset"] for info in infos])
    masks = [results[i][3] for i in indices]
    if any(m is not None for m in masks):
        stats.update(summarize_mask_results(masks, types))
    if generalized_stats is not None:
        stats.update(generalized_stats)
    return stats


def selection_score(stats, best_on=""):
    """What the best checkpoint follows: Acc@0.5; for a mix, the mean of its datasets' (or best_on's alone); on a
    dataset with no-target or several-target phrases the mean of GRES gIoU and the one-target Acc@0.5 (best_on "accu"
    or "giou" picks one)."""
    if "giou" in stats or "grec_pr_f1" in stats:
        if best_on in ("accu", "giou"):
            return stats[best_on]
        return (stats.get("giou", stats.get("grec_pr_f1")) + stats["accu"]) / 2
    by_dataset = stats.get("by_dataset")
    if not by_dataset:
        return stats["accu"]
    if best_on:
        if best_on not in by_dataset:
            raise ValueError(f"--best_on {best_on}: not a dataset of this run ({', '.join(by_dataset)})")
        return by_dataset[best_on]["accu"]
    return sum(s["accu"] for s in by_dataset.values()) / len(by_dataset)


MAP_NAMES = {"mask": "model mask", "pred_box_mask": "predicted box", "gt_box_mask": "ground-truth box"}


def format_stats(stats):
    """One line for the overall numbers, then one per expression type; then the mask metrics, when there are."""
    one = " (one-target phrases)" if "by_kind" in stats else ""
    lines = [f"Acc@0.5 {stats['accu']:.4f} | Acc@0.75 {stats['accu@0.75']:.4f} | mIoU {stats['miou']:.4f} "
             f"| {stats['count']} samples{one}"]
    for name, s in [*stats.get("by_dataset", {}).items(), *stats.get("by_type", {}).items()]:
        lines.append(f"  {name:<10} Acc@0.5 {s['accu']:.4f} | Acc@0.75 {s['accu@0.75']:.4f} | mIoU {s['miou']:.4f} "
                     f"| {s['count']} samples")
    if "mask" in stats:
        lines.append(f"masks against the ground-truth masks ({stats['mask']['count']} samples that have one): "
                     f"mIoU | oIoU | Prec@0.5 0.6 0.7 0.8 0.9")
        refined = sorted(k for k in stats if k.endswith("_mask") and k not in MAPS)  # "<method>_mask"
        for key in (*MAPS, *refined):
            m = stats[key]
            precisions = " ".join(f"{m[f'prec@{t}']:.3f}" for t in (0.5, 0.6, 0.7, 0.8, 0.9))
            name = MAP_NAMES.get(key, f"{key[:-len('_mask')]} refined")
            lines.append(f"  {name:<17} {m['miou']:.4f} | {m['oiou']:.4f} | {precisions}")
    if "by_kind" in stats:
        lines += format_generalized(stats)
    return "\n".join(lines)


def fresh_progress():
    """Where a run stands: the epoch in progress and its batches done, the global step, training seconds."""
    return {"epoch": 0, "batch": 0, "step": 0, "train_seconds": 0.0, "best_accu": float("-inf")}


class TrainingRun:
    """Checkpoints and log of one run in --output_dir. Every rank calls save_*, which gathers the RNG states of all
    ranks; only rank 0 writes. A failed write raises CheckpointError after the log line is on disk."""

    def __init__(self, args, model, optimizer, scaler, tokenizer):
        self.args = args
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.vocabulary = tokenizer_info(tokenizer, args)  # constant for the run: built once, not at every save
        self.output_dir = Path(args.output_dir)
        self.resumed_step = 0

    def start(self, start_epoch, resumed):
        """config.json (atomically), and the logs: see _keep."""
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.output_dir / "config.json", lambda f: f.write(json.dumps(json_config(self.args),
                                                                                    indent=1).encode()))
        # A new run starts new logs; a resumed one keeps them up to where it resumes, so replayed epochs and curve
        # points are not logged twice.
        self._keep("log.txt", lambda entry: resumed and entry["epoch"] < start_epoch)
        if (self.output_dir / "val_curve.txt").is_file():
            self._keep("val_curve.txt", lambda entry: resumed and entry["step"] <= self.resumed_step)

    def _keep(self, name, keep):
        """Rewrite (or create) the JSON-lines file name with the entries that keep accepts."""
        path = self.output_dir / name
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line + "\n" for line in lines if line.strip() and keep(json.loads(line))]
        atomic_write(path, lambda f: f.write("".join(kept).encode()))

    def log_curve(self, entry):
        """One point of the --eval_every validation curve (val_curve.txt)."""
        if is_main_process():
            with (self.output_dir / "val_curve.txt").open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def checkpoint(self, progress, epoch_done, logger=None, val_stats=None):
        rng = all_gather_object(get_rng_state())
        if not is_main_process():
            return None
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "presence_thresholds": self.model.presence_thresholds,
                **progress, "epoch_done": epoch_done,
                "epoch_metrics": logger.state_dict() if logger is not None else None, "val_stats": val_stats,
                "args": json_config(self.args), "tokenizer": self.vocabulary, "rng": rng}

    def save_step(self, progress, logger):
        """Mid-epoch checkpoint (every --save_every steps, and on a stop signal)."""
        checkpoint = self.checkpoint(progress, False, logger)
        if checkpoint is not None:
            self._write_latest(checkpoint)

    def save_epoch(self, progress, log_entry, val_stats, improved):
        """End of an epoch: the log line first (durably), then the checkpoints."""
        checkpoint = self.checkpoint(progress, True, val_stats=val_stats)
        if checkpoint is None:
            return
        with (self.output_dir / "log.txt").open("a") as f:
            f.write(json.dumps(log_entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._write_latest(checkpoint)
        if improved:
            atomic_save(checkpoint, self.output_dir / BEST)

    def _write_latest(self, checkpoint):
        latest = self.output_dir / LATEST
        atomic_save(checkpoint, latest)
        if self.args.keep_last > 1:
            # History as hard links of the latest file: no second write, no extra space until it is replaced.
            keep = self.output_dir / HISTORY.format(checkpoint["step"])
            if not keep.exists():
                try:
                    os.link(latest, keep)
                except OSError:
                    atomic_save(checkpoint, keep)
            history = sorted(self.output_dir.glob(HISTORY.replace("{:09d}", "*")))
            for old in history[:-self.args.keep_last]:
                old.unlink()

    def resume(self, path):
        """Restore model, optimizer and scaler from path; returns (progress, epoch metrics or None, RNG states)."""
        checkpoint = safe_load(path)
        for key in ("model", "optimizer", "scaler", "epoch", "step", "rng"):
            if key not in checkpoint:
                raise CheckpointError(f"{path} is not a training checkpoint of this project (no '{key}'); "
                                      f"to start from official weights use eval.py, predict.py or "
                                      f"models.checkpoint.load_official_checkpoint")
        load_state_dict_checked(self.model, checkpoint["model"], f"checkpoint {path}")
        self.model.presence_thresholds = dict(checkpoint.get("presence_thresholds") or {})
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.resumed_step = checkpoint["step"]
        done = checkpoint.get("epoch_done", True)  # checkpoints written before mid-epoch saves: epoch ends only
        progress = {"epoch": checkpoint["epoch"] + 1 if done else checkpoint["epoch"],
                    "batch": 0 if done else checkpoint["batch"], "step": checkpoint["step"],
                    "train_seconds": checkpoint["train_seconds"], "best_accu": checkpoint["best_accu"]}
        return progress, None if done else checkpoint["epoch_metrics"], checkpoint["rng"]
