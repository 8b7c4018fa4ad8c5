"""Check this implementation against a parity case computed by the original SegVG code.

    python tools/parity_check.py --case tests/data/case_A.pt

Regenerates the case's weights and inputs from its recipe (verified by checksums), loads the weights
through the official-checkpoint path, runs the evaluation forward and the dropout-free training branch
with losses and backward, and compares. Exit status 0 only when every output is within tolerance.
"""
import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.fast_path import prepare_for_inference  # noqa: E402
from models import build_model  # noqa: E402
from models.checkpoint import load_official_checkpoint, ours_to_official, safe_load  # noqa: E402
from models.criterion import build_criterion  # noqa: E402
from tools.parity_recipe import checksums, make_batch, official_state_dict  # noqa: E402
from utils.options import build_training_parser  # noqa: E402
from utils.runtime import set_tf32  # noqa: E402

TOL_BOX = 1e-4  # absolute: boxes and segmentation probabilities
TOL_SEG_LOGITS = 1e-3  # absolute
TOL_LOSS = 1e-4  # relative
TOL_GRAD = 1e-3  # relative
TOL_CHECKSUM = 1e-6  # relative
# BERT's attention key bias adds the same constant to every logit of a query, which the softmax cancels:
# its true gradient is zero and both implementations only hold float32 round-off there. Such norms are
# checked to be zero at float32 precision (relative to the largest gradient norm), not relative to noise.
ZERO_GRAD_SUFFIX = "attention.self.key.bias"
LOSS_NAMES = {"BCEloss": "loss_focal", "DICEloss": "loss_dice", "loss_bbox": "loss_bbox",
              "loss_giou": "loss_giou", "total": "loss"}


def rel_diff(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def verify_checksums(name, ours, reference):
    if set(ours) != set(reference):
        missing, extra = sorted(set(reference) - set(ours)), sorted(set(ours) - set(reference))
        raise SystemExit(f"{name}: regenerated tensors differ from the case's: missing {missing[:5]}, "
                         f"extra {extra[:5]}")
    bad = [k for k, (s, q) in ours.items()
           if rel_diff(s, reference[k][0]) > TOL_CHECKSUM and abs(s - reference[k][0]) > 1e-6
           or rel_diff(q, reference[k][1]) > TOL_CHECKSUM]
    if bad:
        raise SystemExit(f"{name}: regeneration does not match the case's checksums for {bad[:5]}")
    print(f"{name}: {len(ours)} tensors regenerated, checksums match")


def to_original_layout(name, out):
    """Our batch-first tensors -> the original's layout for each recorded intermediate."""
    if name.startswith("textmodel.") or name == "text_proj.call0":
        return out[0] if isinstance(out, tuple) else out
    if name.startswith("deepfuse."):
        queries, text, visual = out
        index = int(name.rsplit(".", 1)[1])
        return (visual, text, queries)[index].transpose(0, 1)
    if name == "visumodel.call0.0":
        return out.flatten(2).permute(2, 0, 1)
    if name == "vl_decoder.call0":
        return out.permute(0, 2, 1, 3)
    if name == "bbox_embed.call0":
        return out
    return out.transpose(0, 1)


def record_intermediates(model):
    """Forward hooks storing every intermediate the parity cases describe, under the case's names."""
    store, handles = {}, []

    def hook(*names):
        def fn(_module, _inputs, output):
            for name in names:
                store[name] = to_original_layout(name, output).detach().cpu()
        return fn

    stages = len(model.triple_alignment)
    named = {model.visual.input_proj: ["visumodel.call0.0"],
             model.visual.position_embedding: [f"visumodel.call{k}.2" for k in range(stages + 1)],
             model.text.bert.embeddings: ["textmodel.call0.0"],
             model.visual_proj: ["visu_proj.call0"], model.text_proj: ["text_proj.call0"],
             model.query_proj: ["object_proj.call0"], model.vl_encoder: ["vl_transformer.call0"],
             model.decoder: ["vl_decoder.call0"], model.box_head: ["bbox_embed.call0"]}
    for k, layer in enumerate(model.visual.layers):
        named[layer] = [f"visumodel.call{k + 1}.0"]
    for k, layer in enumerate(model.text.bert.encoder.layer):
        named[layer] = [f"textmodel.call{k + 1}"]
    for s, layer in enumerate(model.triple_alignment):
        named[layer] = [f"deepfuse.call{s}.{i}" for i in range(3)]
    for module, names in named.items():
        handles.append(module.register_forward_hook(hook(*names)))
    return store, handles


def first_divergence(store, reference):
    """Intermediates in forward order; the first whose sampled values differ beyond 1e-3 of its scale."""
    lines, first = [], None
    for name, ref in reference.items():
        if name not in store:
            lines.append(f"  {name}: not recorded")
            continue
        ours = store[name]
        if list(ours.shape) != list(ref["shape"]):
            diff, note = float("inf"), f"shape {list(ours.shape)} vs {list(ref['shape'])}"
        else:
            diff = (ours.flatten()[ref["index"]] - ref["values"]).abs().max().item()
            note = f"max |diff| {diff:.2e} (std {ref['std']:.3f})"
        bad = diff > 1e-3 * max(1.0, ref["std"])
        if bad and first is None:
            first = name
        lines.append(f"  {'DIVERGES ' if bad else ''}{name}: {note}")
    return first, lines


def build_parity_model(recipe):
    args = build_training_parser().parse_args(["--bert_init", "random", "--imsize", str(recipe["imsize"]),
                                               "--max_query_len", str(recipe["max_query_len"])])
    return build_model(args), build_criterion(args)


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/parity_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="parity case file (e.g. tests/data/case_A.pt)")
    parser.add_argument("--verbose", action="store_true", help="print every intermediate's difference")
    parser.add_argument("--device", default="cpu",
                        help="where the model runs (cpu, cuda, cuda:N); on CUDA in full fp32, TF32 off")
    parser.add_argument("--report_bf16", action="store_true",
                        help="also print how far the fast path under bf16 autocast is from the case (no tolerance)")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    with torch.no_grad():
        return run(opts.case, opts.verbose, opts.report_bf16, torch.device(opts.device))


def on_cpu(out):
    return {k: v.float().cpu() for k, v in out.items()}


def run(case_path, verbose=False, report_bf16=False, device=torch.device("cpu")):
    """Compare this implementation with one case; returns the exit status (0: within every tolerance)."""
    if device.type == "cuda":  # the case is fp32: no TF32 in convolutions (cuDNN's default) or matrix products
        set_tf32(False)
    case = safe_load(case_path)
    recipe = case["recipe"]
    model, criterion = build_parity_model(recipe)

    layout = {ours_to_official(k): v.shape for k, v in model.state_dict().items()}
    weights = official_state_dict(recipe["weight_seed"], layout)
    verify_checksums("weights", checksums(weights), case["weight_checksums"])
    load_official_checkpoint(model, {"model": weights})
    batch = make_batch(recipe["batch_seed"], recipe["text_lengths"], recipe["boxes_xyxy"], recipe["imsize"],
                       tuple(recipe["content_hw"]), recipe["max_query_len"])
    verify_checksums("inputs", checksums(batch), case["input_checksums"])
    batch = {k: v.to(device) for k, v in batch.items()}
    model.to(device)
    inputs = (batch["img"], batch["img_mask"].bool(), batch["text_ids"], batch["text_mask"])

    failures, report = [], []

    def check(name, diff, tol, kind="abs"):
        ok = diff <= tol
        report.append(f"{'ok  ' if ok else 'FAIL'} {name:<34} {kind} diff {diff:.3e} (tol {tol:g})")
        if not ok:
            failures.append(name)

    model.eval()
    store, handles = record_intermediates(model)
    out = on_cpu(model(*inputs, aux=False))
    for handle in handles:
        handle.remove()
    ref = case["eval"]
    check("eval pred_boxes [6,B,4]", (out["aux_boxes"] - ref["pred_boxes"]).abs().max().item(), TOL_BOX)
    check("eval seg_prob [B,400]", (out["seg_logits"].flatten(1).sigmoid() - ref["seg_prob"]).abs().max().item(),
          TOL_BOX)
    # The inference fast path of eval.py and predict.py: BatchNorm folded, channels-last CNN.
    fast = prepare_for_inference(copy.deepcopy(model))
    with torch.inference_mode():
        out = on_cpu(fast(*inputs, aux=False))
    check("fast path pred_boxes [6,B,4]", (out["aux_boxes"] - ref["pred_boxes"]).abs().max().item(), TOL_BOX)
    check("fast path seg_prob [B,400]",
          (out["seg_logits"].flatten(1).sigmoid() - ref["seg_prob"]).abs().max().item(), TOL_BOX)
    if report_bf16:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            out = on_cpu(fast(*inputs, aux=False))
        report.append(f"info fast path under bf16 autocast: boxes max abs diff "
                      f"{(out['aux_boxes'].float() - ref['pred_boxes']).abs().max().item():.3e}, last layer "
                      f"{(out['pred_boxes'].float() - ref['pred_boxes'][-1]).abs().max().item():.3e}, seg_prob "
                      f"{(out['seg_logits'].float().flatten(1).sigmoid() - ref['seg_prob']).abs().max().item():.3e}")
    del fast

    # The original's training branch with every dropout off: eval-mode modules, auxiliary outputs, grads.
    ref = case["train_branch_no_dropout"]
    with torch.enable_grad():
        out = model(*inputs, aux=True)
        losses = criterion(out, batch["target"], batch["pos_region"])
        losses["loss"].backward()
    out = on_cpu({k: v.detach() for k, v in out.items()})
    check("train pred_boxes [6,B,4]", (out["aux_boxes"] - ref["pred_boxes"]).abs().max().item(), TOL_BOX)
    seg = out["aux_seg_logits"].flatten(-2)
    check("train seg_logits [6,5,B,400]", (seg - ref["seg_logits"]).abs().max().item(), TOL_SEG_LOGITS)
    for theirs, ours in LOSS_NAMES.items():
        check(f"loss {theirs}", rel_diff(losses[ours].item(), ref["losses"][theirs]), TOL_LOSS, "rel")
    grads = {ours_to_official(n): p.grad for n, p in model.named_parameters()}
    missing = [k for k in ref["grad_norms"] if grads.get(k) is None]
    if missing:
        report.append(f"FAIL no gradient for {len(missing)} parameters, e.g. {missing[:3]}")
        failures.append("grad presence")
    norms = {k: (grads[k].norm().item(), v) for k, v in ref["grad_norms"].items() if k not in missing}
    zero = {k: n for k, n in norms.items() if k.endswith(ZERO_GRAD_SUFFIX)}
    diffs = {k: rel_diff(ours, theirs) for k, (ours, theirs) in norms.items() if k not in zero}
    worst = max(diffs, key=diffs.get)
    check(f"grad norms ({len(diffs)}, worst {worst})", diffs[worst], TOL_GRAD, "rel")
    if zero:
        scale = max(theirs for _, theirs in norms.values())
        largest = max(max(pair) for pair in zero.values()) / scale
        check(f"zero grad norms ({len(zero)} key biases)", largest, torch.finfo(torch.float32).eps, "rel to max")

    print("\n".join(report))
    first, lines = first_divergence(store, case["intermediates"])
    if verbose or failures:
        print("intermediates (evaluation forward, sampled values):")
        print("\n".join(lines))
    if failures:
        print(f"PARITY FAILED: {', '.join(failures)}" + (f"; first diverging intermediate: {first}" if first else ""))
        return 1
    print(f"PARITY OK ({case.get('name', case_path)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
