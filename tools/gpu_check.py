"""The GPU acceptance run behind tools/gpu_check.sh (docs/gpu_check.md): environment, correctness on CUDA, parity,
speed and memory, and the real launcher, each part time-boxed, its failure recorded and the next part still run.

    bash tools/gpu_check.sh OUT_DIR                    # on a machine with an NVIDIA GPU, about 5 minutes
    bash tools/gpu_check.sh --dry_run OUT_DIR          # on the CPU, tiny sizes (CI)
    bash tools/gpu_check.sh --only parity,speed OUT_DIR

Writes OUT_DIR/gpu_check.log (every command and its output), OUT_DIR/gpu_check.json (each part's status, seconds,
figures) and prints a table; the exit status is 1 when a part failed.
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "parity", "correctness", "launcher", "speed")
BUDGET_S = {"env": 15, "parity": 45, "correctness": 60, "launcher": 75, "speed": 105}  # 300 s in all
# Speed figures in priority order (a time box cuts the last ones): (figure, variant).
SPEED = [("infer32", "bf16"), ("train8", "bf16"), ("infer1", "bf16"), ("infer32", "fp32"), ("train8", "fp32"),
         ("infer32", "tf32"), ("infer1", "fp32"), ("train8", "bf16+checkpoint"), ("infer32", "plain+bf16"),
         ("infer32", "bf16+compile")]
SPEED_DRY = [("infer1", "fp32"), ("train2", "fp32")]
GOALS = {"inference bf16 batch 32 (images/s)": (("infer32", "bf16"), "throughput", ">=", 120),
         "training bf16 batch 8 (samples/s)": (("train8", "bf16"), "throughput", ">=", 100),
         "peak training memory batch 8 (GiB)": (("train8", "bf16"), "peak_gib", "<=", 24)}
# The modules of requirements.txt the parts import (a bare machine may lack some: the env part names them).
REQUIRED = ("torch", "torchvision", "transformers", "numpy", "cv2", "PIL", "scipy", "pycocotools", "tqdm", "pytest",
            "xdist")
DEMO_FLAGS_DRY = ["--backbone", "resnet18", "--bert_layers", "2", "--enc_layers", "2", "--vl_enc_layers", "1",
                  "--vl_dec_layers", "2", "--batch_size", "8"]


class Runner:
    """Runs commands under a part's deadline, logging them; collects the parts' results."""

    def __init__(self, out_dir, dry_run):
        self.out_dir = out_dir
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.log = (out_dir / "gpu_check.log").open("a")
        self.deadline = None

    def remaining(self):
        return max(1.0, self.deadline - time.monotonic())

    def run(self, command, env=None, check=True):
        """command (list) with the part's remaining time; returns its output. Raises on failure or timeout."""
        self.log.write(f"\n$ {' '.join(map(str, command))}\n")
        self.log.flush()
        proc = subprocess.Popen([str(c) for c in command], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=self.remaining())
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            self.log.write(output)
            raise TimeoutError(f"time box reached during: {' '.join(map(str, command[:4]))} ...") from None
        self.log.write(output)
        self.log.flush()
        if check and proc.returncode:
            tail = output.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{' '.join(map(str, command[:4]))} ... exited {proc.returncode}: {tail[0][:300]}")
        return output


def part_env(runner):
    script = ("import json, platform, torch, transformers\n"
              "info = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
              "        'cudnn': torch.backends.cudnn.version() if torch.cuda.is_available() else None,\n"
              "        'transformers': transformers.__version__, 'cuda_available': torch.cuda.is_available(),\n"
              "        'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],\n"
              "        'bf16': torch.cuda.is_available() and torch.cuda.is_bf16_supported()}\n"
              "try:\n    import onnxruntime\n    info['onnxruntime'] = onnxruntime.__version__\n"
              "except ImportError:\n    info['onnxruntime'] = None\n"
              "import importlib.util\n"
              f"info['missing'] = [m for m in {list(REQUIRED)} if importlib.util.find_spec(m) is None]\n"
              "print(json.dumps(info))\n")
    figures = json.loads(runner.run([sys.executable, "-c", script]).strip().splitlines()[-1])
    if shutil.which("nvidia-smi"):
        smi = runner.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         check=False)
        figures["nvidia_smi"] = smi.strip().splitlines()
    if figures["missing"]:
        raise PartError(f"modules missing: {', '.join(figures['missing'])} (pip install -r requirements.txt)", figures)
    if not runner.dry_run and not figures["cuda_available"]:
        raise RuntimeError("no CUDA device visible to PyTorch")
    return figures


def part_parity(runner):
    output = runner.run([sys.executable, "tools/parity_check.py", "--case", "tests/data/case_A.pt", "--device",
                         runner.device, "--report_bf16"])
    figures = {}
    for line in output.splitlines():
        found = re.match(r"(ok|FAIL)\s+(.+?)\s+(abs|rel|rel to max) diff ([0-9.e+-]+)", line)
        if found:
            figures[found[2]] = float(found[4])
    return figures


def part_correctness(runner):
    # One test process (-n 0): the device tests share one GPU.
    output = runner.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "device", "--device", runner.device,
                         "tests"])
    summary = output.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    if not counts.get("passed"):
        raise RuntimeError(f"no test ran: {summary}")
    return counts


def part_launcher(runner):
    """The demo through torchrun (NCCL on GPUs, gloo on the CPU), a SIGTERM mid-run and its resume, then test.sh."""
    work = runner.out_dir / "launcher"
    if work.exists():
        shutil.rmtree(work)
    data = work / "data"
    sizes = ["--train", "300", "--val", "50", "--test", "50"] if runner.dry_run else \
        ["--train", "2000", "--val", "200", "--test", "300"]
    runner.run([sys.executable, "-m", "datasets.demo", "--out", data, "--seed", "0", *sizes])
    steps, stop_at = (30, 10) if runner.dry_run else (200, 60)
    extra = (DEMO_FLAGS_DRY + ["--device", "cpu"]) if runner.dry_run else []
    env = {"TORCHRUN": "1", "DATA_ROOT": str(data), "OUTPUT_DIR": str(work / "run"), "DEMO_MINUTES": "10",
           "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    command = ["bash", "train.sh", "--max_steps", steps, "--eval_every", steps // 2, "--save_every", 5, *extra]
    figures = {"steps": steps}

    # 1. SIGTERM once the run has passed stop_at steps: it must save and exit with 143; the rerun resumes.
    progress_file = work / "sigterm_run.txt"
    runner.log.write(f"\n$ {' '.join(map(str, command))}  (SIGTERM after step {stop_at})\n")
    with progress_file.open("w") as sink:
        proc = subprocess.Popen([str(c) for c in command], cwd=ROOT, env={**os.environ, **env}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None and runner.remaining() > 30:
            time.sleep(0.5)
            # tqdm's "Epoch E:  40%|...| n/N [" lines: the global step is E * N + n.
            done = [int(e) * int(total) + int(n) for e, n, total in
                    re.findall(r"Epoch (\d+): .*?\| *(\d+)/(\d+) \[", progress_file.read_text(errors="replace"))]
            if done and max(done) >= stop_at:
                os.kill(proc.pid, signal.SIGTERM)  # the bash running train.sh; it forwards it to torchrun's workers
                break
        try:
            proc.wait(timeout=runner.remaining())
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError("time box reached during the SIGTERM run") from None
    runner.log.write(progress_file.read_text(errors="replace"))
    figures["sigterm_exit_status"] = proc.returncode
    if proc.returncode != 143:
        raise RuntimeError(f"after SIGTERM train.sh exited {proc.returncode}, expected 143 (saved and stopped)")
    latest = work / "run" / "checkpoint_latest.pth"
    if not latest.is_file():
        raise RuntimeError(f"after SIGTERM there is no {latest}")

    output = runner.run(command, env=env)
    resumed = re.search(r"resumed from .* step (\d+)", output)
    figures["resumed_at_step"] = int(resumed[1]) if resumed else None
    if not resumed or int(resumed[1]) < stop_at:
        raise RuntimeError("the rerun did not resume from the SIGTERM checkpoint")
    output = runner.run(["bash", "test.sh"], env={**env, "CHECKPOINT": str(work / "run" / "best_checkpoint.pth")})
    accuracy = re.search(r"Acc@0\.5 ([0-9.]+)", output)
    figures["test_acc@0.5"] = float(accuracy[1]) if accuracy else None
    figures["backend"] = "gloo" if runner.dry_run else "nccl"
    return figures


def part_speed(runner):
    figures, failed = {}, []
    model = ["--small"] if runner.dry_run else []
    for figure, variant in SPEED_DRY if runner.dry_run else SPEED:
        json_file = runner.out_dir / "speed_tmp.json"
        try:
            runner.run([sys.executable, "-m", "benchmarks.bench_model", "--device", runner.device, "--figures", figure,
                        "--variants", variant, "--rounds", "1", "--repeats", "1" if runner.dry_run else "5",
                        "--json", json_file, *model])
        except TimeoutError:
            figures[f"{figure} {variant}"] = {"error": "time box reached"}
            failed.append(f"{figure} {variant} (time box)")
            break
        record = json.loads(json_file.read_text())[0]["ours"]
        json_file.unlink()
        if "error" in record or "na" in record:
            failed.append(f"{figure} {variant}: {record.get('error') or record.get('na')}")
            figures[f"{figure} {variant}"] = record
            continue
        batch = int(figure[5:])
        median = statistics.median(record["total"])
        figures[f"{figure} {variant}"] = {"median_s": median, "throughput": batch / median,
                                          "peak_gib": record["peak_bytes"] / 2 ** 30,
                                          **({"compile_s": record["compile_s"]} if "compile_s" in record else {})}
    goals = {}
    for name, ((figure, variant), key, op, bound) in GOALS.items():
        value = figures.get(f"{figure} {variant}", {}).get(key)
        goals[name] = {"value": value, "goal": f"{op} {bound}",
                       "met": None if value is None else (value >= bound if op == ">=" else value <= bound)}
    figures["goals"] = goals
    if failed:
        raise PartError("; ".join(failed), figures)
    return figures


class PartError(RuntimeError):
    """A part that failed after measuring something: the figures it has are kept."""

    def __init__(self, message, figures):
        super().__init__(message)
        self.figures = figures


def run_parts(runner, parts):
    results = {}
    for name in parts:
        runner.deadline = time.monotonic() + BUDGET_S[name] * (4 if runner.dry_run else 1)
        start = time.monotonic()
        print(f"[{name}] ...", flush=True)
        try:
            figures = globals()[f"part_{name}"](runner)
            status, message = "passed", ""
        except (TimeoutError, RuntimeError, OSError, ValueError) as err:
            figures = getattr(err, "figures", {})
            status, message = ("timeout" if isinstance(err, TimeoutError) else "failed"), str(err)
        results[name] = {"status": status, "seconds": round(time.monotonic() - start, 1), "message": message,
                         "figures": figures}
        print(f"[{name}] {status} in {results[name]['seconds']} s{': ' + message if message else ''}", flush=True)
    return results


def table(results):
    lines = ["| part | status | seconds | figures |", "|---|---|---|---|"]
    for name, result in results.items():
        figures = result["figures"]
        if name == "speed":
            text = "; ".join(f"{k}: {v['median_s']:.3f} s, {v['throughput']:.1f}/s, {v['peak_gib']:.2f} GiB"
                             for k, v in figures.items() if isinstance(v, dict) and "median_s" in v)
        else:
            text = ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {result['status']} | {result['seconds']} | {text[:400]} |")
    for goal, value in results.get("speed", {}).get("figures", {}).get("goals", {}).items():
        verdict = {True: "met", False: "not met", None: "n/a"}[value["met"]]
        measured = "n/a" if value["value"] is None else round(value["value"], 2)
        lines.append(f"| goal: {goal} {value['goal']} | {verdict} | | {measured} |")
    return "\n".join(lines)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="bash tools/gpu_check.sh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.log and gpu_check.json")
    parser.add_argument("--dry_run", action="store_true",
                        help="on the CPU with tiny sizes (seconds to minutes), so that the script itself is tested")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {', '.join(PARTS)}")
    return parser


def main(argv=None):
    parser = get_args_parser()
    opts = parser.parse_args(argv)
    parts = [p.strip() for p in opts.only.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--only: unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(opts.out_dir, opts.dry_run)
    start = time.monotonic()
    results = run_parts(runner, parts)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": opts.dry_run, "device": runner.device,
              "seconds": round(time.monotonic() - start, 1), "parts": results,
              "passed": all(r["status"] == "passed" for r in results.values())}
    (opts.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(table(results))
    print(f"{'all parts passed' if report['passed'] else 'FAILED'} in {report['seconds']} s; "
          f"{opts.out_dir / 'gpu_check.json'}, {opts.out_dir / 'gpu_check.log'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
