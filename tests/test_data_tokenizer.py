"""Tokenizer: the fast tokenizer splits like the original slow WordPiece one; [CLS]/[SEP] encoding (SPEC §4.4)."""
import pytest

from datasets import build_tokenizer, encode_text
from datasets.tokenizer import DEMO_VOCAB
from train import get_args_parser

try:  # transformers 5.x keeps the pure-Python tokenizer under this name
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as SlowBertTokenizer
except ImportError:  # transformers 4.x
    from transformers import BertTokenizer as SlowBertTokenizer

WORDS = ("the a man woman on left right of in red shirt blue guy 's , . - ! ? ( ) 2 3 cafe "
         "##s ##ing ##est ##er ##most ##ed ##ly ##ish").split()
PHRASES = [
    "The man on the LEFT",
    "guy in red shirt, 2nd from right!",
    "leftmost woman's blue shirt",
    "café   au\tlait (right)",
    "lefter righter reddish bluest",
    "zebra \u4e2d left",
    "left-most man?",
    "",
]


@pytest.fixture
def vocab_file(tmp_path):
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[c for c in letters if c not in WORDS],
              *["##" + c for c in letters]]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(tokens)) + "\n")
    return path


def args_for(*flags):
    return get_args_parser().parse_args(list(flags))


def test_fast_tokenizer_matches_slow_wordpiece(vocab_file):
    fast = build_tokenizer(args_for("--vocab_file", str(vocab_file)))
    slow = SlowBertTokenizer(str(vocab_file), do_lower_case=True)
    for phrase in PHRASES:
        assert fast.tokenize(phrase) == slow.tokenize(phrase), phrase
        assert encode_text(fast, phrase, 12) == encode_text(slow, phrase, 12), phrase


def test_encode_pads_and_truncates(vocab_file):
    tok = build_tokenizer(args_for("--vocab_file", str(vocab_file)))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    ids, mask = encode_text(tok, "The man on the left", 10)
    assert ids == [cls, *tok.convert_tokens_to_ids(["the", "man", "on", "the", "left"]), sep, 0, 0, 0]
    assert mask == [1] * 7 + [0] * 3
    ids, mask = encode_text(tok, "the man on the left in the red shirt", 6)
    assert ids == [cls, *tok.convert_tokens_to_ids(["the", "man", "on", "the"]), sep]
    assert mask == [1] * 6
    assert encode_text(tok, "", 4) == ([cls, sep, 0, 0], [1, 1, 0, 0])


def test_demo_dataset_defaults_to_the_shipped_vocab():
    tok = build_tokenizer(args_for("--dataset", "demo"))
    assert len(tok) == len(DEMO_VOCAB.read_text().splitlines())
    assert tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert "[UNK]" not in tok.tokenize("The small red triangle to the left of the leftmost blue circle")


def test_missing_vocab_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_tokenizer(args_for("--vocab_file", str(tmp_path / "nope.txt")))
