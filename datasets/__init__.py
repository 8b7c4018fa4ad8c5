"""Datasets, transforms and tokenizer for visual grounding (docs/original.md, "Data")."""
from .grounding import is_generalized
from .loaders import build_dataset, build_eval_loader, build_loaders, build_subset_loader, collate_fn
from .tokenizer import build_tokenizer, encode_text

__all__ = ["build_dataset", "build_eval_loader", "build_loaders", "build_subset_loader", "build_tokenizer", "collate_fn",
           "encode_text", "is_generalized"]
