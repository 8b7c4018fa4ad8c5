"""Activation checkpointing (--checkpoint_activations): a layer keeps only its inputs and runs its forward again
during backward, trading ~30 % more compute for most of the activation memory."""
import torch
from torch.utils.checkpoint import checkpoint


def run_layer(layer, *inputs, enabled=False):
    """layer(*inputs); checkpointed when enabled and a gradient is being recorded. Non-reentrant checkpointing
    replays the dropout masks (the RNG state is restored), so the gradients are those of the plain call."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(layer, *inputs, use_reentrant=False)
    return layer(*inputs)
