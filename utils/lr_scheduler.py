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


def run_fraction(args, state, steps_per_epoch):
    """Fraction of the run done, in [0, 1]: of --minutes or of --max_steps, whichever is further along when both are
    set; of --epochs when neither is."""
    fractions = []
    if args.minutes > 0:
        fractions.append(state["train_seconds"] / (args.minutes * 60))
    if args.max_steps > 0:
        fractions.append(state["step"] / args.max_steps)
    return min(1.0, max(fractions, default=state["step"] / max(1, args.epochs * steps_per_epoch)))


def budget_spent(args, state):
    """Whether the --minutes or --max_steps budget is used up (never when neither is set)."""
    return 0 < args.minutes * 60 <= state["train_seconds"] or 0 < args.max_steps <= state["step"]


def set_lr(optimizer, factor):
    """Every group's lr = its initial lr (stored in the group, so it survives optimizer.load_state_dict) x factor."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
