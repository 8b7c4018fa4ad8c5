"""Every script's command line: a get_args_parser() whose usage names the script, a help string on every flag
(subcommands included), and flags files (`@file`) for train.py."""
import argparse
import importlib
from pathlib import Path

import pytest

import train

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"tests", ".venv", ".git"}


def scripts():
    """Every Python file of the project that runs as a program (python file.py or python -m package.module)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in SKIP or "__main__" not in path.read_text():
            continue
        found.append(relative)
    return found


def all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_the_scripts_are_found():
    names = {str(p) for p in scripts()}
    assert {"train.py", "eval.py", "predict.py", "tools/parity_check.py", "datasets/build_index.py",
            "benchmarks/bench_model.py"} <= names


@pytest.mark.parametrize("script", scripts(), ids=str)
def test_every_flag_has_help_and_the_usage_names_the_script(script):
    module = importlib.import_module(".".join(script.with_suffix("").parts))
    parser = module.get_args_parser()
    name = script.name if script.parent == Path(".") else script.stem
    assert name in parser.format_usage(), parser.format_usage()
    missing = [f"{sub.prog}: {'/'.join(a.option_strings) or a.dest}" for sub in all_parsers(parser)
               for a in sub._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing


def test_training_parser_reads_flags_files(tmp_path):
    args = train.get_args_parser().parse_args(["@tools/demo_flags.txt", "--seed", "3"])
    assert (args.dataset, args.imsize, args.max_steps, args.cache_data, args.seed) == ("demo", 48, 1100, True, 3)
    assert (args.mask_head, args.mask_head_samples, args.zero_init_residual) == ("fine", 16, True)
    assert (args.backbone, args.hidden_dim, args.vl_hidden_dim, args.bert_hidden_dim) == ("resnet18", 96, 96, 96)
    flags = tmp_path / "flags.txt"
    flags.write_text("# a comment line\n--imsize 96 --max_query_len 10\n\n   # indented comment\n--lr 3e-4\n")
    later = train.get_args_parser().parse_args([f"@{flags}", "--imsize", "128"])
    assert (later.imsize, later.max_query_len, later.lr) == (128, 10, 3e-4)  # the command line after the file wins
