from .segvg import build_segvg


def build_model(args):
    return build_segvg(args)
