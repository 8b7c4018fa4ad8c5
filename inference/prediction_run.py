"""Prediction over many inputs, sharded over processes and resumable (predict.py --output_dir).

Each process takes its share of the images (image k of the inputs to rank k % world size, all its phrases with it)
and appends what it predicts to <output_dir>/parts/part_<rank>.jsonl, one line per input, flushed and synced per
batch: the prediction record with "index" (the input's position), or {"index", "image", "phrase", "skipped"} for an
input whose image could not be read. A killed run leaves at most a torn last line, which the next run drops, and
its masks are rewritten under the same names. At the end rank 0 merges everything into predictions.jsonl in input
order (records only) and removes the parts. A shard run by hand (--shard K/N: one task of a SLURM array, say) writes
its part and leaves the merge to a later run of the same command without --shard, which finds nothing left to predict.
"""
import json
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch.distributed as dist

from datasets.records import write_jsonl
from datasets.samplers import ImageBatchSampler, world_and_rank
from evaluation.mask_metrics import save_png
from evaluation.overlays import draw_overlay
from evaluation.predictions import prediction_record
from utils.files import FileWriteError, fsync_folder


PARTS = "parts"
MERGED = "predictions.jsonl"


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def read_lines(path):
    """The JSON lines of a file that end in a newline: a killed writer's torn last line is left out, even when what
    it wrote happens to parse."""
    entries = []
    with open(path, "rb") as f:
        for line in f.read().split(b"\n")[:-1]:
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def keep_complete_lines(path):
    """Cut a file back to its last newline: what a writer killed mid-line left after it goes."""
    size = path.stat().st_size
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < size:
            f.truncate(keep)
            os.fsync(f.fileno())


class PredictionRun:
    """The outputs of one predict.py --output_dir run: what is already done, this rank's part file, the merge."""

    def __init__(self, output_dir, total, shard=None):
        """shard: (K, N), this run is shard K of N (0-based) without a process group; None: the process group's."""
        self.output_dir = Path(output_dir)
        self.parts = self.output_dir / PARTS
        self.total = total
        self.shard = shard
        self.world, self.rank = world_and_rank() if shard is None else (shard[1], shard[0])
        self.part = None

    def existing(self):
        """Output files an earlier run left here."""
        names = [MERGED, PARTS]
        return [self.output_dir / name for name in names if (self.output_dir / name).exists()]

    def clear(self):
        """--overwrite: forget an earlier run (its mask files are replaced as the new run writes them)."""
        if self.rank == 0:
            (self.output_dir / MERGED).unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        barrier()

    def entries(self):
        """{index: entry} of everything written so far (merged file and parts); a later entry of an index wins."""
        done = {}
        files = [self.output_dir / MERGED] + sorted(self.parts.glob("part_*.jsonl"))
        for path in files:
            if path.is_file():
                for entry in read_lines(path):
                    if isinstance(entry, dict) and isinstance(entry.get("index"), int) and 0 <= entry["index"] < self.total:
                        done[entry["index"]] = entry
        return done

    def open(self):
        """This rank's part file, for appending after its last complete line. Every rank reads what is done first."""
        done = set(self.entries())
        barrier()  # nobody cuts a file while another rank reads it
        self.parts.mkdir(parents=True, exist_ok=True)
        path = self.parts / f"part_{self.rank}.jsonl"
        if path.exists():
            keep_complete_lines(path)
        try:
            self.part = open(path, "ab")
        except OSError as err:
            raise FileWriteError(f"cannot write {path}: {err.strerror or err}") from None
        return done

    def batches(self, pairs, done, batch_size):
        """This rank's batches of input positions: the pairs of its images (fixed by the inputs alone, so that shards
        run apart agree) not done yet, an image's together."""
        images = {}
        for k, (image, _) in enumerate(pairs):
            images.setdefault(str(image), len(images))
        todo = [k for k, (image, _) in enumerate(pairs)
                if images[str(image)] % self.world == self.rank and k not in done]
        sampler = ImageBatchSampler([str(pairs[k][0]) for k in todo], batch_size)
        return [[todo[i] for i in batch] for batch in sampler]

    def append(self, entries):
        """One batch's entries, on disk before the call returns."""
        data = "".join(json.dumps(entry) + "\n" for entry in entries).encode()
        try:
            self.part.write(data)
            self.part.flush()
            os.fsync(self.part.fileno())
        except OSError as err:
            raise FileWriteError(f"cannot write {self.part.name}: {err.strerror or err}") from None

    def finish(self):
        """Close the part, wait for every rank; rank 0 writes predictions.jsonl (records in input order) and removes
        the parts. -> (records, skipped entries), on rank 0 (empty lists elsewhere)."""
        if self.part is not None:
            self.part.close()
        barrier()
        if self.rank != 0 or self.shard is not None:
            return [], []
        entries = [entry for _, entry in sorted(self.entries().items())]
        records = [entry for entry in entries if "skipped" not in entry]
        write_jsonl(self.output_dir / MERGED, records)
        shutil.rmtree(self.parts, ignore_errors=True)
        fsync_folder(self.output_dir)
        return records, [entry for entry in entries if "skipped" in entry]


def predict_batches(predictor, pairs, batches, progress=None):
    """Yields (pair index, rgb, result) for each pair of each batch (lists of pair indices), each image read and
    encoded once per batch; an image that cannot be read gives (pair index, None, why) and a warning."""
    for batch in batches:
        loaded = {}
        for k in batch:
            image = pairs[k][0]
            if image not in loaded:
                try:
                    loaded[image] = predictor.load(image)
                except (FileNotFoundError, ValueError) as err:
                    loaded[image] = str(err)
                    sys.stderr.write(f"warning: skipped {image}: {err}\n")  # every rank reports its own
        good = [k for k in batch if not isinstance(loaded[pairs[k][0]], str)]
        results = predictor.predict([loaded[pairs[k][0]] for k in good], [pairs[k][1] for k in good]) if good else []
        by_pair = {k: {**result, **loaded[pairs[k][0]][1]} for k, result in zip(good, results)}  # + orientation note
        for k in batch:
            image = loaded[pairs[k][0]]
            yield (k, image[0], by_pair[k]) if k in by_pair else (k, None, image)
        if progress is not None:
            progress.update(len(loaded))


def save_prediction(pairs, k, rgb, result, output_dir=None, save_masks=False, save_probabilities=False,
                    mask_refine="none", overlay=None):
    """Masks (under output_dir) and overlay of pair k -> its prediction record, naming them."""
    image, phrase = pairs[k]
    extra = {"image_size": result["image_size"],
             **{key: result[key] for key in ("present", "found", "presence_from", "boxes", "exif_orientation", "exif")
                if key in result}}
    if save_masks and output_dir is not None:
        output_dir = Path(output_dir)
        name = f"{k:05d}_{Path(image).stem}.png"
        extra["mask"] = str(output_dir / "masks" / name)
        save_png(result["binary_mask"].astype(np.uint8) * 255, output_dir / "masks" / name)
        if save_probabilities:
            extra["probability"] = str(output_dir / "probabilities" / name)
            save_png(np.round(result["mask"] * 255).astype(np.uint8), output_dir / "probabilities" / name)
        if "refined_mask" in result:
            folder = output_dir / f"masks_{mask_refine}"
            extra[f"{mask_refine}_mask"] = str(folder / name)
            save_png(result["refined_mask"].astype(np.uint8) * 255, folder / name)
    if overlay is not None:
        overlay.parent.mkdir(parents=True, exist_ok=True)
        shown = result["refined_mask"].astype(np.float32) if "refined_mask" in result else result["mask"]
        box, (width, height) = result["box"], result["image_size"]
        if rgb.shape[:2] != (height, width):  # a JPEG decoded at a reduced scale: drawn at that scale
            box = [v * rgb.shape[1] / width if i % 2 == 0 else v * rgb.shape[0] / height for i, v in enumerate(box)]
            shown = cv2.resize(shown, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
        draw_overlay(rgb, box, shown, phrase, result["score"]).save(overlay)
        extra["overlay"] = str(overlay)
    return prediction_record(image, phrase, result["box"], result["score"], **extra)
