"""Text branch: a Hugging Face BERT whose embeddings and layers are run separately, stage by stage."""
import torch
from torch import nn
from transformers import BertConfig, BertModel


class TextEncoder(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert
        self.num_layers = bert.config.num_hidden_layers
        self.dim = bert.config.hidden_size

    def embed(self, text_ids):
        """[B, L] -> [B, L, D]; token types are all zero as in the original."""
        return self.bert.embeddings(input_ids=text_ids)

    @staticmethod
    def attention_bias(text_mask, dtype):
        """[B, L] (1 = token) -> additive [B, 1, 1, L], like BERT's extended attention mask."""
        bias = (1.0 - text_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
        if torch.onnx.is_in_onnx_export():  # ONNX Runtime's Attention (opset 23) does not broadcast over queries
            bias = bias.expand(-1, -1, text_mask.shape[1], -1)  # [B, 1, L, L]
        return bias

    def layer(self, index, hidden, bias):
        out = self.bert.encoder.layer[index](hidden, attention_mask=bias)
        # transformers 4.x returns a tuple, 5.x the tensor itself.
        return out[0] if isinstance(out, tuple) else out


def load_pretrained_bert(name_or_path):
    try:
        return BertModel.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(
            f"could not load BERT weights from {name_or_path!r}. Pass a Hugging Face hub name with network "
            f"access, or a local folder holding config.json, the weights and vocab.txt (e.g. created with "
            f"`huggingface-cli download bert-base-uncased --local-dir <folder>`), or use --bert_init random "
            f"to train from scratch.") from err


def build_text_encoder(args):
    if args.bert_init == "pretrained":
        bert = load_pretrained_bert(args.bert_model)
    elif args.bert_init == "random":
        bert = BertModel(BertConfig(
            vocab_size=args.bert_vocab_size, hidden_size=args.bert_hidden_dim,
            num_hidden_layers=args.bert_layers, num_attention_heads=args.bert_heads,
            intermediate_size=args.bert_ffn, max_position_embeddings=max(512, args.max_query_len),
            hidden_dropout_prob=args.bert_dropout, attention_probs_dropout_prob=args.bert_dropout))
    else:
        raise ValueError(f"unknown --bert_init {args.bert_init!r} (pretrained or random)")
    # The pooler is never used; freezing it keeps DDP free of unused trainable parameters.
    bert.pooler.requires_grad_(False)
    if args.lr_bert <= 0:
        bert.requires_grad_(False)
    return TextEncoder(bert)
