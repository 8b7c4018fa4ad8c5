"""The model card (README.md) of exported weights (docs/weights.md): the front matter the Hub reads (licence, library,
tags, pipeline, datasets and eval.py's figures as model-index results) and a page saying what the model is, how well it
did and how to use it."""
import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# dataset -> (name on the card, its type in model-index)
DATASETS = {"unc": ("RefCOCO", "refcoco"), "unc+": ("RefCOCO+", "refcoco+"), "gref": ("RefCOCOg (Google)", "refcocog"),
            "gref_umd": ("RefCOCOg (UMD)", "refcocog"), "referit": ("ReferItGame", "referitgame"),
            "flickr": ("Flickr30k Entities", "flickr30k-entities"), "grefcoco": ("gRefCOCO", "grefcoco"),
            "vg": ("Visual Genome", "visual-genome"), "demo": ("SegVG's synthetic demo", "segvg-demo"),
            "demo_gref": ("SegVG's synthetic demo, gref level", "segvg-demo-gref")}
TAGS = ["visual-grounding", "referring-expression-comprehension", "referring-expression-segmentation", "segvg",
        "pytorch"]
# (key of eval.py's figures, task type, metric type, metric name)
METRICS = [("accu", "referring-expression-comprehension", "accuracy", "Acc@0.5"),
           ("mask.miou", "referring-expression-segmentation", "mean_iou", "mask mIoU"),
           ("giou", "generalized-referring-expression-segmentation", "giou", "gIoU (GRES)"),
           ("ciou", "generalized-referring-expression-segmentation", "ciou", "cIoU (GRES)"),
           ("n_acc", "generalized-referring-expression-segmentation", "n_acc", "N-acc"),
           ("grec_pr_f1", "generalized-referring-expression-comprehension", "precision", "Pr@(F1=1, IoU>=0.5) (GREC)")]


def read_eval_results(folder):
    """[(dataset, split, figures)] of the eval_<dataset>_<split>.json files eval.py wrote in folder."""
    results = []
    for path in sorted(Path(folder).glob("eval_*.json")):
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        if "dataset" in report and "eval_set" in report and "accu" in report:
            results.append((report["dataset"], report["eval_set"], report))
    return results


def figure(report, key):
    value = report
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def eval_results(results):
    """model-index entries of every figure eval.py reported."""
    entries = []
    for dataset, split, report in results:
        name, kind = DATASETS.get(dataset, (dataset, dataset))
        for key, task, metric, metric_name in METRICS:
            value = figure(report, key)
            if isinstance(value, (int, float)):
                entries.append(EvalResult(task_type=task, dataset_type=kind, dataset_name=name, dataset_split=split,
                                          metric_type=metric, metric_name=metric_name, metric_value=round(value, 4)))
    return entries


def build_card(name, config, results, license="apache-2.0", repo_id=None, official=False):
    """A ModelCard for weights of configuration config (config.json's "model_config") and eval.py's results."""
    datasets = [d.strip() for d in str(config.get("dataset", "")).split(",") if d.strip()]
    data = ModelCardData(license=license, library_name="pytorch", tags=TAGS, pipeline_tag="zero-shot-object-detection",
                         datasets=[DATASETS.get(d, (d, d))[1] for d in datasets], model_name=name,
                         eval_results=eval_results(results) or None)
    source = repo_id or "PATH/TO/THIS/FOLDER"
    trained = ", ".join(DATASETS.get(d, (d,))[0] for d in datasets) or "unknown data"
    rows = [f"| {DATASETS.get(d, (d,))[0]} | {split} | {report['accu']:.4f} | "
            + (f"{report['mask']['miou']:.4f}" if isinstance(report.get("mask"), dict) else "-") + " |"
            for d, split, report in results]
    table = ("| dataset | split | Acc@0.5 | mask mIoU |\n|---|---|---|---|\n" + "\n".join(rows)) if rows else \
        "No eval.py figures were found beside the checkpoint when these weights were exported."
    heads = ", ".join(part for part in (f"{config.get('mask_head', 'grid')} mask head",
                                        "presence head" if config.get("presence_head") else "") if part)
    origin = "These are the authors' weights, converted" if official else "These weights were trained"
    body = f"""
# {name}

SegVG (Kang et al., ECCV 2024) grounds a referring expression in an image: it returns the box of the object the phrase
refers to and a segmentation map of it learned from boxes alone. {origin} on {trained}
({config.get("backbone", "resnet101")}, {config.get("imsize", 640)} px, {heads}), with the SegVG implementation whose
code reads them (`models/pretrained.py`: `model.safetensors`, `config.json`, `vocab.txt`).

## Results

{table}

## Use

```python
from inference import SegVGPredictor          # the SegVG implementation's repository on PYTHONPATH
predictor = SegVGPredictor.from_pretrained("{source}")
result = predictor("photo.jpg", "the man on the left")
result["box"], result["mask"]                 # [x1, y1, x2, y2] in the image's pixels; the map at its size
```

```bash
python predict.py --checkpoint {source} --image photo.jpg --phrase "the man on the left" --out vis.png
python eval.py --checkpoint {source} --dataset {datasets[0] if datasets else "unc"} --eval_set val
```

The weights are downloaded once into huggingface_hub's cache and read from it afterwards, also offline
(`HF_HUB_OFFLINE=1`).

## Citation

```bibtex
@inproceedings{{kang2024segvg,
  title     = {{SegVG: Transferring Object Bounding Box to Segmentation for Visual Grounding}},
  author    = {{Kang, Weitai and Liu, Gaowen and Shah, Mubarak and Yan, Yan}},
  booktitle = {{European Conference on Computer Vision (ECCV)}},
  year      = {{2024}}
}}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
