"""BERT WordPiece tokenizer and the original [CLS] + tokens + [SEP] encoding (docs/original.md, "Text")."""
from pathlib import Path

from transformers import BertTokenizerFast

DEMO_VOCAB = Path(__file__).resolve().parent / "demo_vocab.txt"
# Vocabularies shipped with the project (datasets/vocab/; tools/convert_bert_vocab.py), used instead of the hub.
SHIPPED_VOCABS = {"bert-base-uncased": Path(__file__).resolve().parent / "vocab" / "bert-base-uncased.txt"}


def build_tokenizer(args):
    """Lower-casing WordPiece tokenizer from --vocab_file, else from --bert_model: bert-base-uncased's vocabulary
    ships with the project (no hub access), other hub names and local folders go through from_pretrained.

    The fast tokenizer splits text exactly like the original's slow one (tests/test_data_tokenizer.py)
    and is several times quicker per phrase. `--dataset demo` defaults to the shipped demo vocabulary.
    """
    shipped = SHIPPED_VOCABS.get(args.bert_model)
    vocab_file = args.vocab_file or (str(DEMO_VOCAB) if args.dataset == "demo" else "") or str(shipped or "")
    if vocab_file:
        if not Path(vocab_file).is_file():
            raise FileNotFoundError(f"--vocab_file {vocab_file} does not exist")
        # Positional: transformers 4.x calls the argument vocab_file, 5.x calls it vocab.
        return BertTokenizerFast(vocab_file, do_lower_case=True)
    return BertTokenizerFast.from_pretrained(args.bert_model, do_lower_case=True)


def encode_text(tokenizer, text, max_query_len):
    """-> (ids, mask), both lists of max_query_len ints; zero padding as the original."""
    tokens = tokenizer.tokenize(text)[:max_query_len - 2]
    ids = tokenizer.convert_tokens_to_ids([tokenizer.cls_token, *tokens, tokenizer.sep_token])
    pad = max_query_len - len(ids)
    return ids + [0] * pad, [1] * len(ids) + [0] * pad
