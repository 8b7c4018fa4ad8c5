"""Tokenizer: the fast tokenizer splits like the original slow WordPiece one; [CLS]/[SEP] encoding
(docs/original.md, "Text")."""
import pytest

from datasets import build_tokenizer, encode_text
from datasets.tokenizer import DEMO_VOCAB, SHIPPED_VOCABS
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


def generated_phrases(count=400, seed=0):
    """Referring expressions with punctuation, accents, digits, hyphens, CJK, emoji and odd spacing."""
    import random
    rng = random.Random(seed)
    words = ("the man woman guy on left right leftmost 2nd third from top bottom in red blue shirt with a hat "
             "strawberries café naïve résumé Über straße 12 3rd 1990s x-ray t-shirt left-hand o'neill "
             "\u4e2d\u6587 \u65e5\u672c \U0001F600 \u00bd \u2013 zebra's bicycle unaffable "
             "supercalifragilistic").split()
    marks = [",", ".", "!", "?", "(", ")", "'", '"', "-", ":", ";", "/", "&", "#", "%", "$", "@", "*"]
    phrases = []
    for _ in range(count):
        parts = [rng.choice(words) for _ in range(rng.randint(1, 10))]
        for _ in range(rng.randint(0, 3)):
            parts.insert(rng.randint(0, len(parts)), rng.choice(marks))
        sep = rng.choice([" ", " ", "  ", "\t", ""])
        text = sep.join(parts)
        phrases.append(text.upper() if rng.random() < 0.1 else text)
    return phrases


def test_shipped_bert_vocabulary_tokenizes_as_huggingface_without_the_hub():
    tok = build_tokenizer(args_for("--bert_model", "bert-base-uncased"))
    assert len(tok) == 30522
    ids = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, "the": 1996, "man": 2158,
           "left": 2187, "right": 2157, "straw": 13137, "##berries": 20968}
    assert tok.convert_tokens_to_ids(list(ids)) == list(ids.values())
    assert encode_text(tok, "The man on the LEFT", 8)[0] == [101, 1996, 2158, 2006, 1996, 2187, 102, 0]
    slow = SlowBertTokenizer(str(SHIPPED_VOCABS["bert-base-uncased"]), do_lower_case=True)
    for phrase in generated_phrases():
        assert tok.tokenize(phrase) == slow.tokenize(phrase), phrase
        assert encode_text(tok, phrase, 40) == encode_text(slow, phrase, 40), phrase
