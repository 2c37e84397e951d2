"""``tinycompress vae {data,train,eval}``: build the crop set, train TinyVAE, measure it.

torch is imported inside the command bodies so that ``tinycompress --help`` stays quick.
Each command has a ``--smoke`` mode (tiny data from scikit-image, a few steps) for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from validator_actors.cli_args import UsageError, count, fraction, need_dir, number, widths

CROP_SET = ("crops.npz", "manifest.json")
VAE_CHECKPOINT = ("config.json", "model.safetensors")


def register(subparsers) -> None:
    p = subparsers.add_parser("vae", help="TinyVAE: 64x64 crop -> 64-d latent (data, train, eval)")
    sub = p.add_subparsers(dest="vae_command", required=True, metavar="STEP")

    d = sub.add_parser("data", help="cut 64x64 crops from offline photographs")
    d.add_argument("--out", type=Path, required=True, help="folder for crops.npz + manifest.json")
    d.add_argument("--crops-per-source", type=count(1), default=300)
    d.add_argument("--test-fraction", type=fraction, default=0.15)
    d.add_argument("--val-fraction", type=fraction, default=0.0,
                   help="share of source groups kept for val besides the whole --val-origin")
    d.add_argument("--val-origin", default=None,
                   help="origin held out whole for val (default apt:mate-backgrounds; '' = none)")
    d.add_argument("--view-pairs", type=count(0), default=512)
    d.add_argument("--shift-pairs", type=count(0), default=256, help="pairs per shift (2/4/8/16 px) per split")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-apt", action="store_true", help="scikit-image photographs only")
    d.add_argument("--cache", type=Path, default=Path("data/apt_cache"),
                   help="where the Debian image packages are downloaded and unpacked")
    d.add_argument("--smoke", action="store_true", help="scikit-image only, 16 crops per source")
    d.set_defaults(func=_json_out(cmd_data))

    t = sub.add_parser("train", help="train a TinyVAE, calibrate trust, fit the VQ dictionary")
    t.add_argument("--data", type=Path, required=True, help="crop set from `vae data`")
    t.add_argument("--out", type=Path, required=True, help="checkpoint folder")
    t.add_argument("--steps", type=count(1), default=6000)
    t.add_argument("--batch-size", type=count(1), default=128)
    t.add_argument("--lr", type=number(0, above=True), default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=count(1), default=2)
    t.add_argument("--time-limit", type=number(0), default=0.0,
                   help="stop after this many CPU seconds of this process (0 = none)")
    t.add_argument("--beta", type=number(0), default=0.1)
    t.add_argument("--ssim-weight", type=number(0), default=0.0)
    t.add_argument("--shift-weight", type=number(0), default=0.0,
                   help="weight of the shift-consistency term (two views up to 16 px apart)")
    t.add_argument("--jitter", type=number(0), default=0.1, help="colour jitter amount (0 = none)")
    t.add_argument("--upsample", choices=("nearest", "bilinear"), default="nearest",
                   help="decoder shortcut upsampling")
    t.add_argument("--recon", choices=("sse", "sigma_vae"), default="sse")
    t.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    t.add_argument("--extra-blocks", type=count(0), default=0)
    t.add_argument("--decoder-blocks", type=count(0), default=0,
                   help="residual blocks at the start of each decoder stage (start as the identity)")
    t.add_argument("--widths", type=widths, default=(16, 32, 64), help="comma-separated encoder widths")
    t.add_argument("--latent-dim", type=count(1), default=64)
    t.add_argument("--vq-codes", type=count(2), default=512)
    t.add_argument("--vq-group-dim", type=count(1), default=8, help="latent values per token")
    t.add_argument("--smoke", action="store_true", help="20 steps of batch 16")
    t.set_defaults(func=_json_out(cmd_train))

    e = sub.add_parser("eval", help="TinyVAE vs PCA vs JPEG, trust, cross-view, VQ and int8 costs")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--report", type=Path, default=None, help="JSON report (default CKPT/eval.json)")
    e.add_argument("--grid", type=Path, default=None, help="picture grid PNG (default CKPT/grid.png)")
    e.add_argument("--cross-view-plot", type=Path, default=None,
                   help="histogram PNG (default CKPT/cross_view.png)")
    e.add_argument("--max-test", type=count(0), default=0, help="evaluate on this many crops per split (0 = all)")
    e.add_argument("--splits", type=_splits, default=("heldout", "test"),
                   help="comma-separated evaluated splits among val,test,heldout (choose settings on val)")
    e.add_argument("--baseline", type=Path, default=None, help="another checkpoint measured on the same crops")
    e.add_argument("--core-only", action="store_true",
                   help="only the side-by-side table and shift agreement (no VQ, int8, trust, views)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=count(1), default=1, help="torch CPU threads")
    e.add_argument("--smoke", action="store_true", help="at most 64 test crops")
    e.set_defaults(func=_json_out(cmd_eval))


def _splits(text: str) -> tuple[str, ...]:
    names = tuple(t for t in text.split(",") if t)
    bad = [n for n in names if n not in ("val", "test", "heldout")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected splits among val,test,heldout, got {text!r}")
    return names


def _json_out(command):
    """Run ``command`` with every print of its own (tables, progress) on stderr, then print the
    dict it returns as one JSON line on stdout, as every other command does."""

    def run(args: argparse.Namespace) -> int:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            result = command(args)
        print(json.dumps(result))
        return 0

    run.__name__ = command.__name__
    return run


def cmd_data(args: argparse.Namespace) -> dict:
    from learner.vae.images import VAL_ORIGIN, CropSetConfig, build_crop_set, gather_sources, save_crop_set

    cfg = CropSetConfig(crops_per_source=16 if args.smoke else args.crops_per_source,
                        test_fraction=args.test_fraction, val_fraction=args.val_fraction, seed=args.seed,
                        val_origin=VAL_ORIGIN if args.val_origin is None else args.val_origin,
                        view_pairs=32 if args.smoke else args.view_pairs,
                        shift_pairs=8 if args.smoke else args.shift_pairs)
    sources = gather_sources(use_apt=not (args.no_apt or args.smoke), cache=args.cache)
    arrays, manifest = build_crop_set(sources, cfg)
    save_crop_set(args.out, arrays, manifest)
    _print_counts(manifest)
    return {"out": str(args.out), "sources": len(manifest["sources"]), "duplicates": len(manifest["duplicates"]),
            "counts": manifest["counts"], "view_pairs": len(arrays["views_a"])}


def _print_counts(manifest: dict) -> None:
    """Photographs / crops per origin and split, as a Markdown table on stderr."""
    splits = ("train", "val", "test", "heldout")
    print("| origin | " + " | ".join(splits) + " |\n|---|" + "---:|" * len(splits))
    for origin, cells in sorted(manifest["by_origin"].items()):
        print(f"| {origin} | " + " | ".join("{} / {:,}".format(*cells[k]) if k in cells else "-"
                                            for k in splits) + " |")
    for d in manifest["duplicates"]:
        print(f"dropped {d['name']}: a near-duplicate of {d['duplicate_of']} ({d['share']:.1%} of hash bits differ)")


def _passive_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning
    2-thread torch ran 4x slower than one thread. Must be set before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cmd_train(args: argparse.Namespace) -> dict:
    _passive_threads()
    import dataclasses

    from learner.vae.model import TinyVAE, VAEConfig, num_params
    from learner.vae.train import VAETrainConfig, finish_checkpoint, train
    from learner.vae.vq import VQConfig
    from learner.vae.images import load_crop_set

    need_dir(args.data, "--data", CROP_SET, "write one with `tinycompress vae data --out DIR`")
    if args.init is not None:
        need_dir(args.init, "--init", VAE_CHECKPOINT, "a folder written by `tinycompress vae train`")
    if args.latent_dim % args.vq_group_dim:
        raise UsageError(f"--vq-group-dim {args.vq_group_dim} must divide --latent-dim {args.latent_dim}")
    cfg = VAEConfig(widths=args.widths, latent_dim=args.latent_dim,
                    extra_blocks=args.extra_blocks, decoder_blocks=args.decoder_blocks,
                    beta=args.beta, ssim_weight=args.ssim_weight,
                    shift_weight=args.shift_weight, upsample=args.upsample, recon=args.recon)
    tcfg = VAETrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       threads=args.threads, time_limit_s=args.time_limit, jitter=args.jitter)
    if args.smoke:
        tcfg = dataclasses.replace(tcfg, steps=20, batch_size=16, warmup=5, log_every=5)
    vq_cfg = VQConfig(num_codes=args.vq_codes, group_dim=args.vq_group_dim)
    arrays, manifest = load_crop_set(args.data)
    params = num_params(TinyVAE(cfg))
    print(f"TinyVAE parameters: {params:,}", file=sys.stderr)
    if args.jitter >= 0.5:
        raise UsageError(f"--jitter must be below 0.5, got {args.jitter}")
    model, rows = train(cfg, tcfg, arrays["train_wide"], init=args.init, out=args.out,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    finish_checkpoint(args.out, model, tcfg, vq_cfg, arrays["train_crops"], rows,
                      data={"path": str(args.data), "counts": manifest["counts"]})
    return {"out": str(args.out), "params": params, "steps": rows[-1]["step"] + 1 if rows else 0}


def cmd_eval(args: argparse.Namespace) -> dict:
    need_dir(args.checkpoint, "--checkpoint", VAE_CHECKPOINT, "a folder written by `tinycompress vae train`")
    need_dir(args.data, "--data", CROP_SET, "write one with `tinycompress vae data --out DIR`")
    if args.baseline is not None:
        need_dir(args.baseline, "--baseline", VAE_CHECKPOINT, "a folder written by `tinycompress vae train`")
    _passive_threads()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from learner.vae.report import evaluate, save_cross_view_plot
    from learner.vae.images import load_crop_set

    arrays, _ = load_crop_set(args.data)
    grid = args.grid or args.checkpoint / "grid.png"
    report = evaluate(args.checkpoint, arrays, splits=args.splits, max_test=64 if args.smoke else args.max_test,
                      grid=grid, seed=args.seed, extras=not args.core_only, baseline=args.baseline,
                      pca_cache=None if args.smoke else args.data / "pca_cache.pt")
    cv = report.get("cross_view")
    if cv:
        save_cross_view_plot(args.cross_view_plot or args.checkpoint / "cross_view.png",
                             cv.pop("_same"), cv.pop("_different"), cv["auc"])
        print(f"cross-view: same {cv['same']['mean']:.3f}, different {cv['different']['mean']:.3f}, "
              f"AUC {cv['auc']:.3f}", file=sys.stderr)
    out = args.report or args.checkpoint / "eval.json"
    out.write_text(json.dumps(report, indent=2, default=lambda o: o.tolist()
                              if isinstance(o, np.ndarray) else str(o)) + "\n")
    return {"report": str(out), "grid": str(grid)}
