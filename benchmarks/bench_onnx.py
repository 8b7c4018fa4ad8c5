"""ONNX Runtime vs the PyTorch fast path: parity and latency of the full-size model, optionally its int8
quantisations and the demo's test accuracy through each backend (docs/onnx.md).

    python -m benchmarks.bench_onnx                       # full size (ResNet-101, BERT-base, 640, L = 40)
    python -m benchmarks.bench_onnx --int8 static dynamic --demo_checkpoint outputs/demo/best_checkpoint.pth
    python -m benchmarks.bench_onnx --small               # a small model: a smoke run

The full-size model has parity case A's weights (tools/parity_recipe.py, deterministic, official layout). Each
(backend, batch) latency runs in a fresh process: load, 2 warm-up calls, --repeats timed calls of the network alone on
a generated batch (preprocessing and tokenization are the same for both backends); --rounds rounds alternate the
backends, and the table gives the median (min-max) over all rounds.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.checkpoints import ROOT, write_checkpoint
from inference.onnx_export import DEFAULT_OPSET

SMALL = ["--backbone", "resnet18", "--imsize", "256", "--bert_layers", "4", "--enc_layers", "2",
         "--vl_enc_layers", "2", "--vl_dec_layers", "2", "--max_query_len", "20"]


def worker(opts):
    """One (backend, batch) latency in this process; prints a JSON line."""
    import torch

    from inference.fast_path import prepare_for_inference
    from inference.onnx_export import example_inputs, parity_phrases
    from inference.onnx_runtime import OnnxRuntimeModel
    from models.pretrained import load_from_checkpoint

    model, tokenizer, args, _ = load_from_checkpoint(opts.checkpoint)
    phrases = parity_phrases(args)[1:]
    inputs = example_inputs(args, tokenizer, [phrases[k % 2] for k in range(opts.batch)])
    network = OnnxRuntimeModel(opts.onnx) if opts.backend != "pytorch" else prepare_for_inference(model)

    def call():
        with torch.inference_mode():
            return network(*inputs[:4], aux=False, image_index=inputs[4])

    for _ in range(2):
        call()
    times = []
    for _ in range(opts.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    print(json.dumps({"times": times}))


def arithmetic_floor(checkpoint):
    """The least time any fp32 run of one sample can take on this CPU: the call's floating-point operations
    (convolutions and matrix products, counted by torch.utils.flop_counter; the attention maps are not counted, so
    this is a lower bound) over the best rate of a 2048^3 fp32 matrix product; a batch of B takes B times as long.
    -> (GFLOP, GFLOP/s, seconds)"""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from inference.fast_path import prepare_for_inference
    from inference.onnx_export import example_inputs, parity_phrases
    from models.pretrained import load_from_checkpoint

    model, tokenizer, args, _ = load_from_checkpoint(checkpoint)
    model = prepare_for_inference(model)
    inputs = example_inputs(args, tokenizer, parity_phrases(args)[1:2])
    with FlopCounterMode(display=False) as counter:  # it needs autograd on (its module tracker), not no_grad
        model(*inputs[:4], aux=False, image_index=inputs[4])
    del model
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    gflop, rate = counter.get_total_flops() / 1e9, 2 * 2048 ** 3 / min(times[2:]) / 1e9
    return gflop, rate, gflop / rate


def run_worker(opts, backend, batch, onnx_path):
    command = [sys.executable, "-m", "benchmarks.bench_onnx", "--worker", "--backend", backend, "--batch", str(batch),
               "--checkpoint", str(opts.work_dir / "model.pth"), "--onnx", str(onnx_path), "--repeats",
               str(opts.repeats)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{backend} batch {batch} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return json.loads(lines[-1])["times"]


def run_tool(command):
    """A script of the project as a subprocess; its output echoed; returns it."""
    proc = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT, check=False)
    print(proc.stdout.strip())
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def quantize_generated(opts, onnx_path, method):
    """The benchmark model's int8 version; static calibration on generated inputs (latency does not depend on them)."""
    from datasets import build_tokenizer
    from inference.onnx_export import example_inputs, parity_phrases
    from inference.onnx_quantize import quantize_dynamic_int8, quantize_static_int8
    from inference.onnx_runtime import INPUT_NAMES
    from models.pretrained import load_from_checkpoint

    out = onnx_path.with_suffix(f".{method}.onnx")
    if method == "dynamic":
        return quantize_dynamic_int8(onnx_path, out)
    _, _, args, _ = load_from_checkpoint(opts.work_dir / "model.pth")
    tokenizer, phrases = build_tokenizer(args), parity_phrases(args)
    feeds = [dict(zip(INPUT_NAMES, (t.numpy() for t in example_inputs(args, tokenizer, [phrase], seed))))
             for seed, phrase in enumerate(phrases * 3)]
    return quantize_static_int8(onnx_path, out, feeds)


def demo_accuracy(opts, backends):
    """The demo test split evaluated through each backend with eval.py (the int8 models made by
    tools/quantize_onnx.py, static ones calibrated on the demo's train split).
    -> {backend: "Acc@0.5 / Acc@0.75 / mIoU"}"""
    onnx_path = opts.work_dir / "demo.onnx"
    run_tool(["tools/export_onnx.py", "--checkpoint", opts.demo_checkpoint, "--out", str(onnx_path), "--opset",
              str(opts.opset)])
    paths = {"onnxruntime": onnx_path}
    for method in opts.int8:
        paths[f"onnxruntime int8 {method}"] = onnx_path.with_suffix(f".{method}.onnx")
        run_tool(["tools/quantize_onnx.py", "--onnx", str(onnx_path), "--checkpoint", opts.demo_checkpoint, "--out",
                  str(paths[f"onnxruntime int8 {method}"]), "--method", method])
    accuracy = {}
    for backend in backends:
        out_dir = opts.work_dir / f"eval_{backend.replace(' ', '_')}"
        command = ["eval.py", "--checkpoint", opts.demo_checkpoint, "--eval_set", "test", "--output_dir", str(out_dir),
                   "--no_mask_metrics", "--num_workers", "0"]
        if backend != "pytorch":
            command += ["--backend", "onnxruntime", "--onnx", str(paths[backend])]
        run_tool(command)
        report = json.loads((out_dir / "eval_demo_test.json").read_text())
        accuracy[backend] = f"{report['accu']:.4f} / {report['accu@0.75']:.4f} / {report['miou']:.4f}"
    return accuracy


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_onnx", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per process, after 2 warm-up calls")
    parser.add_argument("--rounds", type=int, default=2, help="processes per (backend, batch), alternating backends")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="ONNX opset of the exports (23: ONNX's Attention operator, docs/onnx.md)")
    parser.add_argument("--int8", nargs="+", default=[], choices=["static", "dynamic"],
                        help="also these int8 quantisations of the export (tools/quantize_onnx.py)")
    parser.add_argument("--demo_checkpoint", default="",
                        help="also the demo test split's Acc@0.5, Acc@0.75 and mIoU through each backend (eval.py)")
    parser.add_argument("--small", action="store_true", help="a small model (smoke run), not the paper's")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/bench_onnx"),
                        help="folder for the checkpoint, the exports and the evaluations")
    parser.add_argument("--worker", action="store_true", help="(internal) time one backend in this process")
    parser.add_argument("--backend", help="(internal) the worker's backend")
    parser.add_argument("--batch", type=int, help="(internal) the worker's batch size")
    parser.add_argument("--checkpoint", help="(internal) the worker's checkpoint")
    parser.add_argument("--onnx", help="(internal) the worker's ONNX file")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.worker:
        return worker(opts)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, onnx_path = opts.work_dir / "model.pth", opts.work_dir / "model.onnx"
    write_checkpoint(checkpoint, SMALL if opts.small else [])
    start = time.perf_counter()
    run_tool(["tools/export_onnx.py", "--checkpoint", str(checkpoint), "--out", str(onnx_path), "--opset",
              str(opts.opset)])
    print(f"export and check: {time.perf_counter() - start:.0f} s")
    paths = {"pytorch": onnx_path, "onnxruntime": onnx_path}
    for method in opts.int8:
        paths[f"onnxruntime int8 {method}"] = quantize_generated(opts, onnx_path, method)
    times = {(backend, batch): [] for backend in paths for batch in opts.batches}
    for round_ in range(opts.rounds):
        order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
        for batch in opts.batches:
            for backend in order:
                times[backend, batch] += run_worker(opts, backend, batch, paths[backend])
    print(f"\nLatency of the network call, seconds: median (min-max) of {opts.rounds} x {opts.repeats} calls")
    print("| backend | " + " | ".join(f"batch {b}" for b in opts.batches) + " | ratio to PyTorch |")
    print("|---|" + "---|" * (len(opts.batches) + 1))
    for backend in paths:
        cells = [f"{statistics.median(times[backend, b]):.3f} ({min(times[backend, b]):.3f}-"
                 f"{max(times[backend, b]):.3f})" for b in opts.batches]
        ratios = " / ".join(f"{statistics.median(times[backend, b]) / statistics.median(times['pytorch', b]):.2f}"
                            for b in opts.batches)
        print(f"| {backend} | " + " | ".join(cells) + f" | {ratios} |")
    gflop, rate, floor = arithmetic_floor(checkpoint)
    cells = " | ".join(f"{floor * b:.3f}" for b in opts.batches)
    ratios = " / ".join(f"{floor * b / statistics.median(times['pytorch', b]):.2f}" for b in opts.batches)
    print(f"| fp32 arithmetic floor | {cells} | {ratios} |")
    print(f"(floor: {gflop:.1f} GFLOP per sample at {rate:.0f} GFLOP/s, this CPU's best fp32 matrix product; no fp32 "
          f"backend can be faster)")
    if opts.demo_checkpoint:
        accuracy = demo_accuracy(opts, list(paths))
        print("\nDemo test Acc@0.5 / Acc@0.75 / mIoU: " + ", ".join(f"{k} {v}" for k, v in accuracy.items()))


if __name__ == "__main__":
    main()
