"""Write a checkpoint's weights in the Hugging Face Hub's layout, and optionally upload them (docs/weights.md).

    python tools/export_pretrained.py --checkpoint outputs/unc/best_checkpoint.pth --output_dir hub/segvg-unc
    python tools/export_pretrained.py --checkpoint CKPT --output_dir DIR --push_to_hub ORG/NAME [--private]

DIR receives model.safetensors (the network's weights only, under this code's names: an official checkpoint is
converted), config.json (the model configuration, the tokenizer settings, the presence thresholds chosen on
validation), vocab.txt and README.md, a model card with the figures of the eval_<dataset>_<split>.json files eval.py
wrote beside the checkpoint. The folder, or the Hub id once pushed, then goes wherever a checkpoint goes (eval.py,
predict.py, app.py, tools/export_onnx.py, train.py --pretrained, SegVGPredictor.from_pretrained).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.checkpoint import CheckpointError, tokenizer_overrides  # noqa: E402
from models.model_card import build_card, read_eval_results  # noqa: E402
from models.pretrained import CARD, is_hub_id, load_from_checkpoint, parameter_count, write_layout  # noqa: E402
from utils.files import FileWriteError, atomic_write  # noqa: E402
from utils.options import add_tokenizer_flags  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/export_pretrained.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or an official SegVG one (.pth)")
    parser.add_argument("--output_dir", required=True, help="folder to write the layout into")
    parser.add_argument("--name", default="", help="the model's name on its card [default: the output folder's]")
    parser.add_argument("--license", default="apache-2.0",
                        help="the card's licence (an official checkpoint's is its authors' to grant: check it first)")
    parser.add_argument("--push_to_hub", default="", metavar="ORG/NAME",
                        help="also upload the folder to this Hub repository (created if need be), with "
                             "huggingface_hub's usual token (`hf auth login` or HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create the repository private")
    add_tokenizer_flags(parser)
    return parser


def push(folder, repo_id, private):
    """Upload folder to the Hub repository repo_id; one-line errors without a token or a connection."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="SegVG weights")
    except LocalTokenNotFoundError:
        raise CheckpointError(f"cannot push to {repo_id}: no Hub token; log in with `hf auth login` or set HF_TOKEN "
                              f"(the folder {folder} is written)") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot push to {repo_id}: {str(err).splitlines()[0]} (the folder {folder} is "
                              f"written; push it later with `hf upload {repo_id} {folder}`)") from None
    return getattr(info, "commit_url", repo_id)


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.push_to_hub and not is_hub_id(opts.push_to_hub):
        raise ValueError(f"--push_to_hub {opts.push_to_hub!r}: give a Hub repository id ORG/NAME")
    overrides = tokenizer_overrides(opts.bert_model, opts.vocab_file)
    model, tokenizer, args, official = load_from_checkpoint(opts.checkpoint, overrides)
    folder = Path(opts.output_dir)
    config = write_layout(model, args, tokenizer, folder)
    results = read_eval_results(Path(opts.checkpoint).parent) if Path(opts.checkpoint).is_file() else []
    card = build_card(opts.name or folder.resolve().name, config["model_config"], results, opts.license,
                      opts.push_to_hub or None, official)
    atomic_write(folder / CARD, lambda f: f.write(str(card).encode()))
    print(f"{'official' if official else 'our'} checkpoint {opts.checkpoint}: {parameter_count(model.state_dict()):,} "
          f"parameters, {len(results)} eval.py result(s) on the card -> {folder} (model.safetensors, config.json, "
          f"vocab.txt, README.md)")
    if opts.push_to_hub:
        print(f"pushed to {push(folder, opts.push_to_hub, opts.private)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (CheckpointError, FileWriteError, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
