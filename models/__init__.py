"""The network and its training objective: build_model(args) and build_criterion(args)."""
from .criterion import build_criterion
from .segvg import build_segvg


def build_model(args):
    return build_segvg(args)


__all__ = ["build_criterion", "build_model"]
