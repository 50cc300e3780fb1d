"""``salfcbm reproduce``: run one of the paper's experiments, print its cost first.

Registered in `salfcbm.cli` by `add_parser`; everything else lives here.
"""

from __future__ import annotations

import argparse
import json
import os


__all__ = ["add_parser", "cmd_reproduce"]


def add_parser(sub: argparse._SubParsersAction, formatter_class: type | None = None) -> argparse.ArgumentParser:
    """Add the ``reproduce`` sub-command to ``sub`` (the ``salfcbm`` sub-parsers)."""
    from salfcbm._utils.argtypes import device, float_in, in_dir, in_file, int_in, out_dir
    from salfcbm.core.config import PRECISIONS
    from salfcbm.reproduce.recipes import DATASETS, DRY_RUN_SCORERS

    r = sub.add_parser("reproduce", help="run one of the paper's experiments (Tables 1-3, appendix B.1)",
                       formatter_class=formatter_class or argparse.HelpFormatter,
                       description="Run a named, versioned recipe of the paper. Prints what it will cost first.")
    r.add_argument("table", nargs="?", help="table1, table2, table3, appendix-b1, or a recipe name (see --list)")
    r.add_argument("--dataset", choices=DATASETS, help="the dataset column")
    r.add_argument("--list", action="store_true", help="list the recipes and exit")
    r.add_argument("--data-root", type=in_dir, help="the dataset in its shipped layout")
    r.add_argument("--run-dir", type=out_dir, help="where stores, models and the table go (resumable)")
    r.add_argument("--seg-file", type=in_file, help="gtsegs_ijcv.mat (Table 2)")
    r.add_argument("--dry-run", action="store_true",
                   help="random weights, real shapes, a few generated images in the real layout (no data needed)")
    r.add_argument("--dry-run-scorer", choices=DRY_RUN_SCORERS, default="full",
                   help="dry run with the real CLIP architecture (full) or a tiny CLIP at 224 px (CPU)")
    r.add_argument("--measure-throughput", action="store_true",
                   help="time a short batch of the scorer on --device, print the cost with it, and exit")
    r.add_argument("--throughput", type=float_in(0.0, 1e12, open_low=True), help="prompted CLIP forwards per second on one GPU (measured)")
    r.add_argument("--gpus", type=int_in(1, 4096), default=1, help="GPUs for the cost estimate (torchrun)")
    r.add_argument("--cost-only", action="store_true", help="print the cost and exit")
    r.add_argument("--force", action="store_true", help="start even if the disk looks too small")
    r.add_argument("--device", type=device, default=None, help="where to run (default: CUDA if available, else CPU)")
    r.add_argument("--precision", default="fp32", choices=PRECISIONS, help="scorer precision")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_reproduce)
    return r


def _list() -> int:
    from salfcbm.reproduce.recipes import RECIPES

    for name, rec in RECIPES.items():
        print(f"{rec.key:28s} {rec.table:8s} {rec.dataset:10s} {rec.backbone['source']}:{rec.backbone['name']} "
              f"{rec.concepts} ({rec.expected_concepts} concepts) {rec.notes}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """The ``reproduce`` sub-command (under torchrun: `salfcbm.reproduce.ranks.run_on_ranks`; a rerun resumes)."""
    from salfcbm.errors import InputError
    from salfcbm.reproduce.cost import check_disk, estimate_cost
    from salfcbm.reproduce.recipes import get_recipe

    if args.list:
        return _list()
    if not args.table:
        raise InputError("Name a table (table1, table2, table3, appendix-b1) with --dataset, or a recipe; see --list.")
    recipe = get_recipe(args.table, args.dataset)
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints
    throughput = _measured_throughput(args, recipe) if args.measure_throughput else args.throughput
    cost = estimate_cost(recipe, throughput=throughput, gpus=args.gpus)
    if lead:
        print(cost.summary())
    if args.cost_only or args.measure_throughput:
        return 0
    if not args.run_dir:
        raise InputError("--run-dir is required to run a recipe.")
    if not args.dry_run and not args.data_root:
        raise InputError("--data-root is required (or use --dry-run).")
    if not args.dry_run:
        check_disk(cost, args.run_dir, force=args.force)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank trains, rank 0 reports
        import torch

        from salfcbm._utils.distributed import init_distributed

        args.device = init_distributed(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return _run(args, recipe)
    finally:
        _close_group()


def _measured_throughput(args: argparse.Namespace, recipe) -> float:
    import torch

    from salfcbm.reproduce.cost import measure_throughput

    throughput = measure_throughput(recipe.scorer[0], device=args.device, precision=args.precision)
    print(f"measured: {throughput:,.1f} prompted {recipe.scorer[0]} forwards/s ({args.precision})")
    if torch.cuda.is_available() and str(args.device or "cuda").startswith("cuda"):
        print(f"peak GPU memory of the scorer batch: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return throughput


def _run(args: argparse.Namespace, recipe) -> int:
    from salfcbm.reproduce.ranks import run_on_ranks
    from salfcbm.reproduce.run import dry_run

    if args.dry_run:
        out = dry_run(recipe, args.run_dir, scorer=args.dry_run_scorer, device=args.device, progress=not args.quiet)
        if out is not None:  # rank 0 (or no torchrun)
            print(out["table"])
            print(json.dumps(out["dry_run"], indent=2))
        return 0
    out = run_on_ranks(recipe, args.data_root, args.run_dir, device=args.device, seg_file=args.seg_file,
                       precision=args.precision, progress=not args.quiet)
    if out is not None:
        print(out["table"])
    return 0


def _close_group() -> None:
    """Close the process group if a failure left it open (a clean run closed it after training)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
