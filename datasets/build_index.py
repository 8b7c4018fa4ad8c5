"""Build a dataset's index files from its public release (the converters are in datasets/sources/):

    python -m datasets.build_index refer   --dataset unc|unc+|gref|gref_umd --refer_root DIR --split_root OUT
    python -m datasets.build_index referit --referit_dir DIR --split_root OUT
    python -m datasets.build_index flickr  --flickr_dir DIR --split_root OUT
    python -m datasets.build_index mdetr   --dataset unc|unc+|gref_umd --mdetr_dir DIR --split_root OUT
    python -m datasets.build_index exclude --refer_root DIR --out FILE
    python -m datasets.build_index csv     --csv FILE --dataset NAME --split SPLIT --split_root OUT [--data_root R]
    python -m datasets.build_index odvg    --odvg FILE --dataset NAME --split SPLIT --split_root OUT [--data_root R]
    python -m datasets.build_index jsonl   --dataset unc --split_root DIR --out_dataset NAME [--data_root R]
    python -m datasets.build_index grefcoco --grefcoco_dir DIR --split_root OUT [--data_root R]
    python -m datasets.build_index vg      --vg_dir DIR --split_root OUT [--image_prefix P] [--data_root R]

refer, referit, flickr and mdetr write the TransVG/SegVG index files (<split_root>/<dataset>/<dataset>_<split>.pth) by
the rules of the generators the published files descend from (docs/data.md); exclude lists the COCO ids of their
evaluation images; csv, odvg, jsonl, grefcoco and vg write the JSON-lines format of your own datasets
(docs/custom_data.md). Each split is written atomically; afterwards the entries per split are printed next to the
published sizes and the files are checked with datasets.validate.
"""
import argparse
import sys

from .sources.common import ConvertError
from .sources.custom import CONVERTERS, add_commands
from .sources.flickr import add_flickr_command, build_flickr
from .sources.grefcoco import add_grefcoco_command, build_grefcoco
from .sources.refer import add_refer_commands, build_exclude, build_mdetr, build_refer
from .sources.referit import add_referit_command, build_referit
from .sources.vg import add_vg_command, build_vg

BUILDERS = {"refer": build_refer, "referit": build_referit, "flickr": build_flickr, "mdetr": build_mdetr,
            "exclude": build_exclude, "grefcoco": build_grefcoco, "vg": build_vg, **CONVERTERS}


def get_args_parser():
    parser = argparse.ArgumentParser(prog="python -m datasets.build_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_refer_commands(commands)
    add_referit_command(commands)
    add_flickr_command(commands)
    add_commands(commands)
    add_grefcoco_command(commands)
    add_vg_command(commands)
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    if opts.command == "refer" and opts.with_masks:
        opts.out_dataset = opts.out_dataset or f"{opts.dataset.replace('+', 'plus')}_masks"
    try:
        problems = BUILDERS[opts.command](opts)
    except ConvertError as err:
        sys.exit(f"error: {err}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
