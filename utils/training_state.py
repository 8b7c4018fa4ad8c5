"""What a training run writes and how it continues: checkpoints at the end of each epoch and every --save_every
steps (mid-epoch), the per-epoch log, --keep_last step history, and resuming (also mid-epoch) from any of them."""
import json
import os
from pathlib import Path

from datasets.files import atomic_save, atomic_write
from utils.checkpoint import CheckpointError, load_state_dict_checked, safe_load
from utils.distributed import all_gather_object, is_main_process
from utils.rng import get_rng_state

LATEST = "checkpoint_latest.pth"
BEST = "best_checkpoint.pth"
HISTORY = "checkpoint_step{:09d}.pth"


def json_config(args):
    """vars(args) with only JSON types, so the checkpoint loads with weights_only=True."""
    return json.loads(json.dumps(vars(args), default=str))


def tokenizer_info(tokenizer, args):
    """The vocabulary itself (ordered by id), so a checkpoint rebuilds its tokenizer with no hub or file."""
    vocab = tokenizer.get_vocab()
    return {"vocab": sorted(vocab, key=vocab.get), "do_lower_case": True,
            "source": args.vocab_file or (args.bert_model if args.dataset != "demo" else "datasets/demo_vocab.txt")}


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
                "scaler": self.scaler.state_dict(), **progress, "epoch_done": epoch_done,
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
                                      f"utils.checkpoint.load_official_checkpoint")
        load_state_dict_checked(self.model, checkpoint["model"], f"checkpoint {path}")
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.resumed_step = checkpoint["step"]
        done = checkpoint.get("epoch_done", True)  # checkpoints written before mid-epoch saves: epoch ends only
        progress = {"epoch": checkpoint["epoch"] + 1 if done else checkpoint["epoch"],
                    "batch": 0 if done else checkpoint["batch"], "step": checkpoint["step"],
                    "train_seconds": checkpoint["train_seconds"], "best_accu": checkpoint["best_accu"]}
        return progress, None if done else checkpoint["epoch_metrics"], checkpoint["rng"]
