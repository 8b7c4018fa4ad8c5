"""Learning-rate schedules as pure functions of (epoch, step, progress): a resumed run needs only its counters.

The original's schedulers (step, poly, halfdecay, cosine) change the lr once per epoch; cosine_iter decays it
every iteration over the whole run (``run_fraction``: in steps, in training time, or in whichever of --max_steps and
--minutes runs out first), after holding the peak for the first --cosine_hold fraction of it. An optional linear
warmup over the first --warmup_steps iterations multiplies any of them.
"""
import math

SCHEDULERS = ("step", "poly", "halfdecay", "cosine", "cosine_iter")


def lr_factor(args, epoch, step, progress):
    """Multiplier of every group's initial lr at 0-based `epoch`, global iteration `step` and `progress`
    (fraction of the run done, in [0, 1]; only cosine_iter uses it)."""
    name = args.lr_scheduler
    if name == "step":
        factor = 0.1 ** (epoch // args.lr_drop)
    elif name == "poly":
        factor = (1 - epoch / args.epochs) ** args.lr_power
    elif name == "halfdecay":
        factor = 0.5 ** (epoch // max(1, args.epochs // 10))
    elif name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * epoch / args.epochs))
    elif name == "cosine_iter":
        decay = (progress - args.cosine_hold) / (1 - args.cosine_hold)
        factor = 0.5 * (1 + math.cos(math.pi * min(max(decay, 0.0), 1.0)))
    else:
        raise ValueError(f"unknown --lr_scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    if args.warmup_steps > 0:
        factor *= min(1.0, (step + 1) / args.warmup_steps)
    return factor


def run_fraction(state, budget, total_steps, by_steps):
    """Fraction of the run done, in [0, 1]: of the time budget (seconds, 0: none), of total_steps when by_steps or
    when there is no time budget, or of whichever runs out first when both apply."""
    fractions = [state["train_seconds"] / budget] if budget > 0 else []
    if by_steps or not fractions:
        fractions.append(state["step"] / total_steps)
    return min(1.0, max(fractions))


def set_lr(optimizer, factor):
    """Every group's lr = its initial lr (stored in the group, so it survives optimizer.load_state_dict) x factor."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
