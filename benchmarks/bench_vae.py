"""TinyVAE encoder speed and memory on CPU, side by side with its int8 form, PCA-64 and JPEG.

    python benchmarks/bench_vae.py --checkpoint serve/assets/tinyvae --out runs/bench_vae.json

Reports: encode latency at batch 1 (median and p90 over repeats, ms per crop), throughput at
batch 256 (crops/s), encode+decode latency at batch 1, and the peak memory of the model plus
its buffers (resident-set growth of a fresh process that loads the model and encodes a batch,
over the same process with torch imported), and the machine's 1-minute load average before and
after. Each figure is printed as a Markdown table row.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def timed(fn, repeats: int, warmup: int = 5) -> np.ndarray:
    """Seconds per call of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set (``VmRSS``) or its peak (``VmHWM``; unlike ru_maxrss it is not inherited
    across fork + exec from the parent benchmark process), in MiB."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 1024


def memory_probe(ckpt: Path, batch: int, threads: int) -> dict:
    """Run in a fresh process: RSS growth from loading the model and encoding one batch."""
    from learner.vae.train import load_checkpoint

    torch.set_num_threads(threads)
    with torch.inference_mode():  # start the runtime (oneDNN, allocator) before the baseline
        torch.nn.functional.conv2d(torch.rand(2, 3, 8, 8), torch.rand(4, 3, 3, 3)).sum()
    x = torch.rand(batch, 3, 64, 64)  # the input batch itself is counted as a buffer
    base = rss_mb() - x.numel() * 4 / 2**20
    model, _ = load_checkpoint(ckpt)
    with torch.inference_mode():
        model.encode(x)
    peak = rss_mb("VmHWM")
    return {"batch": batch, "peak_rss_mb": peak, "model_plus_buffers_mb": peak - base,
            "weights_mb": sum(p.numel() * 4 for p in model.parameters()) / 2**20}


def probe(ckpt: Path, batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--checkpoint", str(ckpt), "--probe-batch", str(batch),
           "--threads", str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def speed_rows(ckpt: Path, repeats: int) -> list[dict]:
    from learner.vae.quality import PCA
    from learner.vae.int8 import dynamic_int8, load_int8
    from learner.vae.train import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    encoders = {"TinyVAE encoder fp32": model.encoder, "TinyVAE encoder dynamic-int8": dynamic_int8(model.encoder)}
    if (ckpt / "encoder_int8.safetensors").exists():
        encoders["TinyVAE encoder int8-weights file"] = load_int8(ckpt / "encoder_int8.safetensors", model.cfg)
    x1, x256 = torch.rand(1, 3, 64, 64), torch.rand(256, 3, 64, 64)
    pca = PCA(torch.rand(512, 3, 64, 64), 64)
    rows = []
    with torch.inference_mode():
        for name, enc in encoders.items():
            rows.append(_row(name, lambda: enc(x1), lambda: enc(x256), repeats))
        rows.append(_row("TinyVAE encode+decode fp32", lambda: model.decode(model.encode(x1)[0]),
                         lambda: model.decode(model.encode(x256)[0]), repeats))
        rows.append(_row("PCA-64 encode (matmul)", lambda: pca.encode(x1), lambda: pca.encode(x256), repeats))
    rows.append(_jpeg_row(repeats))
    return rows


def _row(name: str, one, many, repeats: int) -> dict:
    t1 = timed(one, repeats)
    t256 = timed(many, max(5, repeats // 20))
    return {"method": name, "batch1_ms_median": 1e3 * float(np.median(t1)),
            "batch1_ms_p90": 1e3 * float(np.percentile(t1, 90)),
            "batch256_crops_per_s": 256 / float(np.median(t256))}


def _jpeg_row(repeats: int) -> dict:
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))

    def enc():
        img.save(io.BytesIO(), format="JPEG", quality=1)

    t1 = timed(enc, repeats)
    return {"method": "JPEG q1 encode (Pillow, one crop at a time)", "batch1_ms_median": 1e3 * float(np.median(t1)),
            "batch1_ms_p90": 1e3 * float(np.percentile(t1, 90)),
            "batch256_crops_per_s": 1.0 / float(np.median(t1))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=ROOT / "serve/assets/tinyvae")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--probe-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe_batch:
        print(json.dumps(memory_probe(args.checkpoint, args.probe_batch, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    rows = speed_rows(args.checkpoint, args.repeats)
    mem = [probe(args.checkpoint, b, args.threads) for b in (1, 64, 256)]
    load.append(os.getloadavg()[0])  # other jobs on the machine skew every figure: say how busy it was
    print(f"threads={args.threads} torch={torch.__version__} load average (1 min) {load[0]:.1f} -> {load[1]:.1f}")
    print("| method | batch 1 ms (median) | batch 1 ms (p90) | batch 256 crops/s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['batch1_ms_median']:.3f} | {r['batch1_ms_p90']:.3f} | "
              f"{r['batch256_crops_per_s']:,.0f} |")
    for m in mem:
        print(f"memory batch {m['batch']}: model + buffers {m['model_plus_buffers_mb']:.1f} MB "
              f"(weights {m['weights_mb']:.1f} MB, process peak {m['peak_rss_mb']:.0f} MB)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"threads": args.threads, "load_avg_1min": load, "speed": rows,
                                             "memory": mem}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
