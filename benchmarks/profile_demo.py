"""Where the demo's training time goes: one process trains the demo configuration for a few steps and reports the
time per phase (data, forward, loss, backward, optimizer, plus the periodic validation spread over its steps), the
forward time per top-level module, and the operators that take the most time (torch.profiler).

    python -m benchmarks.profile_demo                                  # tools/demo_flags.txt (the fine head)
    python -m benchmarks.profile_demo --steps 60 -- --mask_head grid   # flags after -- override the demo's

Needs the demo data (`bash train.sh` writes it, or `python -m datasets.demo --output_dir data/demo --level easy`).
Times are medians over the measured steps after --warmup steps; compare variants in the same session, alternating.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

import train
from datasets import build_loaders, build_subset_loader, build_tokenizer
from engine import evaluate, to_device
from models import build_model
from models.criterion import build_criterion
from utils.rng import seed_everything

PHASES = ("data", "forward", "loss", "backward", "optimizer")


def module_timers(model, totals):
    """Forward pre/post hooks on the model's top-level children that add their forward time to totals[name]."""
    handles = []
    for name, module in model.named_children():
        if name == "visual":  # its ResNet apart from its transformer layers
            children = [(f"visual.{n}", m) for n, m in module.named_children()]
        else:
            children = [(name, module)]
        for label, child in children:
            starts = []
            handles.append(child.register_forward_pre_hook(lambda *_, s=starts: s.append(time.perf_counter())))
            handles.append(child.register_forward_hook(
                lambda *_, s=starts, n=label: totals.__setitem__(n, totals[n] + time.perf_counter() - s.pop())))
    return handles


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="measured training steps")
    parser.add_argument("--warmup", type=int, default=5, help="steps before measuring (allocator, oneDNN caches)")
    parser.add_argument("--flags", default="@tools/demo_flags.txt", help="the configuration's flags file")
    parser.add_argument("--data_root", default="data/demo", help="the demo data (datasets.demo's --output_dir)")
    parser.add_argument("--top", type=int, default=15, help="operators listed from torch.profiler")
    parser.add_argument("--no_profiler", action="store_true", help="phases and modules only (no operator table)")
    parser.add_argument("train_flags", nargs="*", help="after --: train.py flags that override the file's")
    return parser


def main():
    opts = get_args_parser().parse_args()
    args = train.get_args_parser().parse_args(
        [opts.flags, "--device", "cpu", "--data_root", opts.data_root, "--split_root", f"{opts.data_root}/split",
         *opts.train_flags])
    seed_everything(args.seed)
    tokenizer = build_tokenizer(args)
    args.bert_vocab_size = len(tokenizer)
    loader_train, loader_val = build_loaders(args, tokenizer)
    loader_train.batch_sampler.sampler.set_epoch(0)
    loader_train.dataset.set_epoch(0)
    model = build_model(args)
    if args.channels_last:
        model.visual.backbone.set_channels_last()
    optimizer = train.build_optimizer(model, args)
    criterion = build_criterion(args)
    device = torch.device("cpu")
    model.train()

    needed = opts.warmup + opts.steps + 5  # the profiler's 5 steps too
    if needed > len(loader_train):
        raise SystemExit(f"--warmup + --steps + 5 = {needed} steps, more than one epoch of the training split "
                         f"({len(loader_train)} batches)")
    phases = defaultdict(list)
    modules = defaultdict(float)
    batches = iter(loader_train)

    def step(record):
        t0 = time.perf_counter()
        batch = to_device(next(batches), device)
        t1 = time.perf_counter()
        outputs = model(batch["img"], batch["img_mask"], batch["text_ids"], batch["text_mask"])
        t2 = time.perf_counter()
        losses = criterion(outputs, batch["target"], batch["pos_region"], batch, 0.5)
        t3 = time.perf_counter()
        losses["loss"].backward()
        t4 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if record:
            for name, value in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                phases[name].append(value)

    for _ in range(opts.warmup):
        step(False)
    handles = module_timers(model, modules)
    for _ in range(opts.steps):
        step(True)
    for handle in handles:
        handle.remove()

    subset = build_subset_loader(loader_val, args)
    evaluate(model, subset, device, desc="warm-up")
    t0 = time.perf_counter()
    evaluate(model, subset, device, desc="Val subset")
    validation = time.perf_counter() - t0
    model.train()

    medians = {name: statistics.median(values) for name, values in phases.items()}
    step_time = sum(medians.values())
    per_step_validation = validation / args.eval_every if args.eval_every > 0 else 0.0
    total = step_time + per_step_validation
    print(f"{args.batch_size} samples a step, {torch.get_num_threads()} threads, head {args.mask_head}; "
          f"median of {opts.steps} steps:")
    for name in PHASES:
        print(f"  {name:<22} {1000 * medians[name]:7.1f} ms  {100 * medians[name] / total:5.1f} %")
    print(f"  {'validation (per step)':<22} {1000 * per_step_validation:7.1f} ms  "
          f"{100 * per_step_validation / total:5.1f} %   ({validation:.2f} s per validation of "
          f"{len(subset.dataset)} samples, every {args.eval_every} steps)")
    print(f"  {'total':<22} {1000 * total:7.1f} ms  -> {args.batch_size / total:.0f} samples/s "
          f"({args.batch_size / step_time:.0f} without validation)")
    forward = sum(modules.values())
    print("forward by module (mean per step):")
    for name, seconds in sorted(modules.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<30} {1000 * seconds / opts.steps:7.1f} ms  {100 * seconds / forward:5.1f} %")

    if not opts.no_profiler:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step(False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=opts.top))


if __name__ == "__main__":
    main()
