"""Speed and memory of the full SegVG model: inference, one training step split by phase, the loss alone.

    python -m benchmarks.bench_model                                  # full size, every figure, fp32 and bf16
    python -m benchmarks.bench_model --compare ../segvg-main          # the same figures on another checkout,
                                                                      # interleaved, with ratios ours / theirs
    python -m benchmarks.bench_model --figures train2 loss2 --variants fp32 checkpoint --repeats 5
    python -m benchmarks.bench_model --small                          # resnet18, 4-layer BERT, 256 px: a smoke run

Every (figure, variant, checkout) runs in a fresh process with random weights (frozen BatchNorm statistics taken
from one forward pass, see calibrate_frozen_batchnorm), so its peak memory is its own
(VmHWM on CPU, torch.cuda.max_memory_allocated on GPU); times are the median, min and max of --repeats
measurements after warm-up, pooled over --rounds rounds that alternate the checkouts. Figures:
  infer1, infer8   evaluation forward (inference mode) at batch 1 / 8, the checkout's inference path (any inferN)
  train2           one training step at batch 2: forward, loss, backward (+ clip 0.1), AdamW step (any trainN)
  loss2            the loss alone, forward + backward at batch 2 (memory: above the inputs)
Variants: fp32 (on CUDA with TF32 off, also in cuDNN), bf16 (autocast), tf32 (CUDA), channels_last (CNN),
checkpoint (--checkpoint_activations, training only), compile (model.compile(); the first call's time is reported
as compile time), plain (inference without the fast path), fine (--mask_head fine with its default stride and box
losses); several join with + (bf16+compile). A variant a checkout
does not support is reported as n/a. --allocator runs the workers under glibc's defaults, glibc tunables that keep
freed memory (glibc_tuned) or return every freed block (glibc_release), or jemalloc (LD_PRELOAD), to measure what
the allocator gives.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("infer1", "infer8", "train2", "loss2")
VARIANTS = ("fp32", "bf16", "tf32", "channels_last", "checkpoint", "compile", "plain", "fine")
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
ALLOCATORS = {
    "glibc": {},
    # Every block from the heap (glibc refuses an mmap threshold above 32 MiB, so mmap is switched off instead) and
    # the heap never trimmed: freed tensors stay mapped and are not faulted in again by the next allocation.
    "glibc_tuned": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"},
    # The opposite: every block over 128 KiB mapped and unmapped on free, so resident memory is live memory.
    "glibc_release": {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    "jemalloc": {"LD_PRELOAD": JEMALLOC,
                 "MALLOC_CONF": "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"},
}
SMALL = ["--backbone", "resnet18", "--imsize", "256", "--bert_layers", "4", "--enc_layers", "2",
         "--vl_enc_layers", "2", "--vl_dec_layers", "2", "--max_query_len", "20"]


# ----------------------------------------------------------------------------------------------------------------
# Worker: one figure of one variant on one checkout, in its own process.

def rss_bytes(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak():
    """Reset VmHWM to the current RSS (Linux clear_refs 5), so the next peak is this phase's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(opts):
    sys.path.insert(0, opts.root)
    import torch

    import train
    from models import build_model
    from models.criterion import build_criterion

    torch.manual_seed(0)
    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    args = train.get_args_parser().parse_args(["--bert_init", "random", "--device", opts.device] + opts.model_args)
    parts = set(opts.variant.split("+"))
    if device.type == "cuda":  # fp32 means fp32: cuDNN would otherwise run convolutions in TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = "tf32" in parts
    if "fine" in parts:
        if not hasattr(args, "mask_head"):
            return {"na": "no --mask_head in this checkout"}
        args.mask_head = "fine"
    if "checkpoint" in parts:
        if not hasattr(args, "checkpoint_activations"):
            return {"na": "no --checkpoint_activations in this checkout"}
        args.checkpoint_activations = True
    batch = figure_batch(opts.figure)
    inputs = make_inputs(torch, args, batch, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in parts)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def peak():
        return torch.cuda.max_memory_allocated() if cuda else rss_bytes("VmHWM")

    def start_phase():
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        return time.perf_counter()

    result = {}
    if opts.figure == "loss2":
        criterion = build_criterion(args)
        layers, queries, grid = args.vl_dec_layers, args.num_seg_queries, args.imsize // 32
        gen = torch.Generator().manual_seed(1)
        seg = (torch.randn(layers, queries, batch, grid, grid, generator=gen) * 2).to(device).requires_grad_()
        boxes = (torch.rand(layers, batch, 4, generator=gen) * 0.4 + 0.3).to(device).requires_grad_()
        times, above = [], []
        for k in range(opts.repeats + 1):
            seg.grad = boxes.grad = None
            base = torch.cuda.memory_allocated() if cuda else rss_bytes("VmRSS")
            reset_peak()
            t0 = start_phase()
            criterion({"aux_boxes": boxes, "aux_seg_logits": seg}, inputs["target"], inputs["pos_region"])[
                "loss"].backward()
            sync()
            if k:
                times.append(time.perf_counter() - t0)
                above.append(peak() - base)
        return {"total": times, "above_inputs_bytes": max(above)}

    model = build_model(args).to(device)
    calibrate_frozen_batchnorm(torch, model, inputs)
    if opts.figure.startswith("infer"):
        fast = "plain" not in parts and prepare_fast_path(model)
        if "plain" in parts and not hasattr(model.visual.backbone, "set_channels_last"):
            return {"na": "this checkout has no fast path: its default is the plain model"}
        model.eval()
        if "channels_last" in parts and not fast:
            use_channels_last(torch, model, inputs)
        compile_seconds = maybe_compile(torch, model, opts, lambda: model(*model_args(inputs), aux=False), sync)
        times = []
        for k in range(opts.repeats + 1):
            with torch.inference_mode(), amp:
                t0 = start_phase()
                model(*model_args(inputs), aux=False)
                sync()
            if k:
                times.append(time.perf_counter() - t0)
        result = {"total": times, "fast_path": bool(fast)}
    else:
        model.train()
        if "channels_last" in parts:
            use_channels_last(torch, model, inputs)
        criterion = build_criterion(args)
        optimizer = train.build_optimizer(model, args)
        phases = {"fwd": [], "loss": [], "bwd": [], "opt": [], "total": []}

        def step(record):
            t0 = start_phase()
            with amp:
                out = model(*model_args(inputs))
            t1 = start_phase()
            # Only a fine head's loss reads the batch (older checkouts take three arguments).
            extra = (inputs,) if getattr(args, "mask_head", "grid") == "fine" else ()
            losses = criterion(out, inputs["target"], inputs["pos_region"], *extra)
            t2 = start_phase()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            t3 = start_phase()
            optimizer.step()
            # As the engine does: gradients released right after the step, so the next forward never holds them.
            optimizer.zero_grad(set_to_none=True)
            sync()
            t4 = time.perf_counter()
            if record:
                for name, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    phases[name].append(value)

        compile_seconds = maybe_compile(torch, model, opts, lambda: step(False), sync)
        step(False)  # the optimizer's state is allocated in its first step
        for _ in range(opts.repeats):
            step(True)
        result = phases
    result["peak_bytes"] = peak()
    if compile_seconds is not None:
        result["compile_s"] = compile_seconds
    return result


def make_inputs(torch, args, batch, device):
    gen = torch.Generator().manual_seed(0)
    size, length = args.imsize, args.max_query_len
    lengths = torch.randint(4, length + 1, (batch, 1), generator=gen)
    text_mask = (torch.arange(length) < lengths).long()
    xy = torch.randint(0, size // 2, (batch, 2), generator=gen)
    wh = torch.randint(size // 8, size // 2, (batch, 2), generator=gen)
    pos_region = torch.zeros(batch, size, size, dtype=torch.bool)
    for b, (x, y, w, h) in enumerate(torch.cat([xy, wh], 1).tolist()):
        pos_region[b, y:y + h, x:x + w] = True
    target = torch.cat([xy + wh / 2, wh], 1).float() / size
    inputs = {"img": torch.randn(batch, 3, size, size, generator=gen),
              "img_mask": torch.zeros(batch, size, size, dtype=torch.bool),
              "image_rect": torch.tensor([[0, 0, size, size]] * batch),
              "text_ids": torch.randint(1, 1000, (batch, length), generator=gen) * text_mask,
              "text_mask": text_mask, "target": target, "pos_region": pos_region}
    return {k: v.to(device) for k, v in inputs.items()}


def calibrate_frozen_batchnorm(torch, model, inputs):
    """Give every frozen BatchNorm the statistics of what reaches it (one forward pass, in order). At their default
    statistics (mean 0, var 1) a random ResNet-101 normalises nothing: its activations grow until the attention
    overflows and the gradients are NaN, which is neither what a real run computes nor how fast it computes."""
    from torchvision.ops import FrozenBatchNorm2d

    def set_statistics(module, args):
        x = args[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    handles = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    with torch.no_grad():
        model.visual.backbone(inputs["img"])
    for handle in handles:
        handle.remove()


def model_args(inputs):
    return inputs["img"], inputs["img_mask"], inputs["text_ids"], inputs["text_mask"]


def prepare_fast_path(model):
    """The checkout's inference fast path if it has one (inference.fast_path); False otherwise."""
    try:
        from inference.fast_path import prepare_for_inference
    except ImportError:
        return False
    prepare_for_inference(model)
    return True


def use_channels_last(torch, model, inputs):
    backbone = model.visual.backbone
    if hasattr(backbone, "set_channels_last"):
        backbone.set_channels_last()
    else:  # older checkouts: weights here, inputs converted by the caller
        model.to(memory_format=torch.channels_last)
        inputs["img"] = inputs["img"].contiguous(memory_format=torch.channels_last)


def maybe_compile(torch, model, opts, first_call, sync):
    """model.compile() and the time of its first (compiling) call, for the compile variant."""
    if "compile" not in opts.variant.split("+"):
        return None
    model.compile()
    t0 = time.perf_counter()
    with torch.inference_mode(opts.figure.startswith("infer")):
        first_call()
    sync()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
# Parent: schedule the workers, pool the rounds, print the table.

def run_worker(root, figure, variant, opts, allocator):
    env = {**os.environ, **ALLOCATORS[allocator]}
    env["OMP_NUM_THREADS"] = str(opts.threads) if opts.threads else env.get("OMP_NUM_THREADS", "")
    if not env["OMP_NUM_THREADS"]:
        del env["OMP_NUM_THREADS"]
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--figure", figure,
               "--variant", variant, "--repeats", str(opts.repeats), "--device", opts.device, "--"]
    command += (SMALL if opts.small else []) + opts.model_args
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0][:200]}
    return json.loads(lines[-1])


def pool(results):
    """Results of several rounds -> one: times pooled, the largest peak."""
    if not results or any("na" in r or "error" in r for r in results):
        bad = next((r for r in results if "na" in r or "error" in r), {"na": "not run"})
        return bad
    merged = {}
    for key in results[0]:
        values = [r[key] for r in results]
        if isinstance(values[0], list):
            merged[key] = [v for vs in values for v in vs]
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            merged[key] = max(values)
        else:
            merged[key] = values[0]
    return merged


def fmt_time(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def describe(result, figure):
    if "na" in result:
        return "n/a", ""
    if "error" in result:
        return "error: " + result["error"], ""
    text = fmt_time(result["total"]) + " s"
    if figure.startswith("train"):
        text += " = " + " / ".join(f"{statistics.median(result[k]):.2f}" for k in ("fwd", "loss", "bwd", "opt"))
    if "compile_s" in result:
        text += f", compile {result['compile_s']:.0f} s"
    memory = (f"+{result['above_inputs_bytes'] / 2 ** 20:.0f} MiB" if figure == "loss2"
              else f"{result['peak_bytes'] / 2 ** 30:.2f} GiB")
    return text, memory


def ratio(ours, theirs, key):
    if any(k in r for r in (ours, theirs) for k in ("na", "error")):
        return ""
    if key == "total":
        return f"{statistics.median(ours['total']) / statistics.median(theirs['total']):.2f}"
    mem = "above_inputs_bytes" if "above_inputs_bytes" in ours else "peak_bytes"
    return f"{ours[mem] / max(theirs[mem], 1):.2f}"


def figure_batch(figure):
    return 2 if figure == "loss2" else int(figure.removeprefix("infer").removeprefix("train"))


def figure_name(text):
    if text != "loss2" and not (text[:5] in ("infer", "train") and text[5:].isdigit() and int(text[5:]) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected inferN, trainN (N a batch size) or loss2")
    return text


def variant_name(text):
    unknown = set(text.split("+")) - set(VARIANTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown {', '.join(sorted(unknown))}; known: {', '.join(VARIANTS)}")
    return text


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__.splitlines()[0])
    parser.add_argument("--figures", nargs="+", default=list(FIGURES), type=figure_name,
                        help="what to measure: inferN (inference at batch N), trainN (a training step at batch N), "
                             "loss2 (the loss alone)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], type=variant_name,
                        help=f"precision and speed options measured for each figure, one of {', '.join(VARIANTS)} or "
                             f"several joined by + (bf16+compile)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per process, after warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="processes per figure and checkout, interleaved")
    parser.add_argument("--compare", default="", help="another checkout of this project to run the same figures on")
    parser.add_argument("--allocator", nargs="+", default=["glibc"], choices=sorted(ALLOCATORS),
                        help="CPU allocator settings of the worker processes (docs/performance.md)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the workers (0: unchanged)")
    parser.add_argument("--small", action="store_true", help="a small model (smoke run), not the paper's")
    parser.add_argument("--json", default="", help="also write every measurement to this JSON file")
    parser.add_argument("--worker", action="store_true", help="(internal) measure one figure in this process")
    parser.add_argument("--root", default=str(ROOT), help="(internal) checkout whose code the worker measures")
    parser.add_argument("--figure", help="(internal) the worker's figure")
    parser.add_argument("--variant", help="(internal) the worker's variant")
    parser.add_argument("model_args", nargs="*", help="train.py model flags after --, e.g. -- --imsize 512")
    return parser


def main(argv=None):
    parser = get_args_parser()
    opts = parser.parse_args(argv)
    if opts.worker:
        print(json.dumps(worker(opts)))
        return
    if "jemalloc" in opts.allocator and not Path(JEMALLOC).exists():
        parser.error(f"--allocator jemalloc needs {JEMALLOC} (Debian/Ubuntu: apt-get install libjemalloc2)")
    checkouts = {"ours": ROOT}
    if opts.compare:
        if not (Path(opts.compare) / "models").is_dir():
            parser.error(f"--compare {opts.compare}: not a checkout of this project (no models/ folder)")
        checkouts["theirs"] = Path(opts.compare).resolve()

    print(f"torch threads {opts.threads or os.environ.get('OMP_NUM_THREADS', 'default')}, device {opts.device}, "
          f"{'small model' if opts.small else 'full model (ResNet-101, BERT-base, 640 px, L 40)'}, "
          f"{opts.rounds} rounds x {opts.repeats} repeats", flush=True)
    records = []
    for allocator in opts.allocator:
        for figure in opts.figures:
            for variant in opts.variants:
                parts = set(variant.split("+"))
                if "checkpoint" in parts and not figure.startswith("train") or "plain" in parts and not \
                        figure.startswith("infer") or variant != "fp32" and figure == "loss2":  # the loss is fp32
                    continue
                runs = {name: [] for name in checkouts}
                for r in range(opts.rounds):
                    order = list(checkouts) if r % 2 == 0 else list(checkouts)[::-1]
                    for name in order:
                        runs[name].append(run_worker(checkouts[name], figure, variant, opts, allocator))
                pooled = {name: pool(results) for name, results in runs.items()}
                records.append({"allocator": allocator, "figure": figure, "variant": variant, **pooled})
                line = f"{allocator:<11} {figure:<6} {variant:<13}"
                for name in checkouts:
                    text, memory = describe(pooled[name], figure)
                    line += f" | {name}: {text}, {memory}"
                if "theirs" in pooled:
                    line += (f" | ratio time {ratio(pooled['ours'], pooled['theirs'], 'total')}, "
                             f"memory {ratio(pooled['ours'], pooled['theirs'], 'memory')}")
                print(line, flush=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
