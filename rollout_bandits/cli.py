"""The `rollout-bandits` command line."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _random_weights(num_features: int, hidden: int, gamma: float, seed: int, device: str):
    """An untrained scorer (what the scheduler holds before its first observation)."""
    from rollout_bandits.kernels.ucb_score import ScorerWeights

    g = torch.Generator().manual_seed(seed)
    w = lambda *s: (torch.randn(*s, generator=g) / s[0] ** 0.5).to(device)  # noqa: E731
    return ScorerWeights(
        w1=w(num_features, hidden), b1=torch.zeros(hidden, device=device),
        w2=w(hidden, hidden), b2=torch.zeros(hidden, device=device),
        w3=w(hidden), b3=torch.zeros((), device=device),
        zinv=torch.eye(hidden, device=device), zinv_diag=None, gamma=gamma,
    )


def schedule_demo(args: argparse.Namespace) -> int:
    """Features -> score -> select on a built-in synthetic batch, timed per stage."""
    from rich.console import Console
    from rich.table import Table

    from rollout_bandits.kernels import NUM_FEATURES, rollout_features
    from rollout_bandits.kernels.group_topk import group_topk
    from rollout_bandits.kernels.ucb_score import ucb_score
    from rollout_bandits.synthetic import synthetic_batch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = synthetic_batch(args.groups, args.group_size, args.mean_len, seed=args.seed, device=device)
    weights = _random_weights(NUM_FEATURES, args.hidden, args.gamma, args.seed, device)

    def timed(fn):
        fn()  # warm-up (compilation on the Triton path)
        if device == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return out, sorted(times)[len(times) // 2]

    batch.validate()
    contexts, t_feat = timed(lambda: rollout_features(batch, validate=False))
    (scores, mean, bonus), t_score = timed(lambda: ucb_score(contexts, weights))
    (indices, mask), t_select = timed(
        lambda: group_topk(scores, batch.group_offsets, ratio=args.keep_ratio, rewards=batch.reward))
    total = t_feat + t_score + t_select

    table = Table(title=f"rollout-bandits scheduler on a synthetic batch ({device})")
    table.add_column("stage")
    table.add_column("median ms", justify="right")
    table.add_column("share", justify="right")
    for name, t in (("features", t_feat), ("score (neural UCB)", t_score), ("select (group top-k)", t_select)):
        table.add_row(name, f"{t * 1e3:.2f}", f"{t / total:.0%}")
    table.add_row("total", f"{total * 1e3:.2f}", "100%", style="bold")
    console = Console()
    console.print(table)
    console.print(
        f"rollouts {batch.num_rollouts:,}  tokens {batch.num_tokens:,}  groups {batch.num_groups:,}  "
        f"selected {int(mask.sum()):,} ({int(mask.sum()) / batch.num_rollouts:.0%})  "
        f"throughput {batch.num_rollouts / total:,.0f} rollouts/s"
    )
    return 0


def train_command(args: argparse.Namespace) -> int:
    """`rollout-bandits train`: flags <-> TrainConfig, optional --config file, --resume."""
    import dataclasses
    import os

    from rich.console import Console

    from rollout_bandits.config import UNSET, config_from_args, load_config_file
    from rollout_bandits.trainer.loop import TrainConfig, train
    from rollout_bandits.trainer.plots import plot_run, print_summary

    file_values = load_config_file(args.config) if args.config else None
    if args.command == "run" and args.out_dir is UNSET and not (file_values or {}).get("out_dir"):
        import time as _time

        args.out_dir = os.path.join("runs", _time.strftime("run-%Y%m%d-%H%M%S"))
    config = config_from_args(TrainConfig, args, file_values)
    console = Console()
    if args.print_config:
        console.print_json(data=dataclasses.asdict(config))
        return 0
    steps = None if args.steps is UNSET else config.steps  # resume: extend only when asked
    result = train(config, resume=args.resume, steps=steps, progress=not args.no_progress, log=console.print)
    png = plot_run([{"step": 0, "eval": result.pass_rate_before, "generated": 0}, *result.metrics],
                   os.path.join(result.out_dir, "learning_curve.png"),
                   title=f"{config.loss.name} + {config.scheduler.policy}")
    print_summary(result, console)
    b, a = result.pass_rate_before["mean"], result.pass_rate_after["mean"]
    console.print(f"held-out pass rate: {b:.1%} -> {a:.1%}   metrics: {result.out_dir}/metrics.jsonl   "
                  f"plot: {png}")
    return 130 if result.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rollout-bandits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="time the scheduler on a synthetic batch")
    demo.add_argument("--groups", type=int, default=512)
    demo.add_argument("--group-size", type=int, default=8)
    demo.add_argument("--mean-len", type=int, default=256)
    demo.add_argument("--hidden", type=int, default=64)
    demo.add_argument("--gamma", type=float, default=1.0)
    demo.add_argument("--keep-ratio", type=float, default=0.5)
    demo.add_argument("--repeats", type=int, default=5)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None)
    demo.set_defaults(func=schedule_demo)

    from rollout_bandits.config import add_dataclass_flags
    from rollout_bandits.trainer.loop import TrainConfig

    for name, help_text in (("train", "train a policy with RLVR, the scheduler in the loop"),
                            ("run", "the main job (`make run`): train with the embedded default")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="a JSON or TOML file of TrainConfig fields (flags override it)")
        p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out_dir")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        add_dataclass_flags(p, TrainConfig)
        p.set_defaults(func=train_command)

    from rollout_bandits.experiments import add_parsers

    add_parsers(sub)  # sweep, report
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"rollout-bandits: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
