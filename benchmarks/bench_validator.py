"""Validator throughput: plain ``Validator``, one ``ValidatorActor``, and a pool of 2 against 1.

    python benchmarks/bench_validator.py --out bench_validator.json          # full run
    python benchmarks/bench_validator.py --quick --out /tmp/bench.json       # smoke (seconds)

Workloads: ``distinct`` (N distinct programs from a seeded generator over the codebook, about a
third invalid, cache cold: every measurement uses fresh validators/actors) and ``grpo`` (steps of
B intents x G=8 samples drawn with repeats from each intent's equivalent forms and near misses,
scored with a reference, on one warm pool kept across steps, as in training). Prints a table;
writes JSON to ``--out``. Figures are the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validator_actors.codebook import Codebook, load_codebook  # noqa: E402
from validator_actors.validator import Validator, score  # noqa: E402


# -- a seeded generator of varied programs ----------------------------------------------------


def _term(rng: random.Random, cb: Codebook) -> str:
    if rng.random() < 0.08:
        return rng.choice(sorted(cb.aliases))
    radical = rng.choice(sorted(cb.radicals))
    op = rng.choice(["", "", "?", "!"])
    if radical in cb.entries:
        sel = "*" if rng.random() < 0.1 else str(rng.choice(cb.numbers(radical)))
        if rng.random() < 0.1:
            return f"L.{radical}.{sel}{op}"
        return f"{radical}{op}{sel}" if rng.random() < 0.2 else f"{radical}{sel}{op}"
    return f"{radical}{op}"


def random_program(rng: random.Random, cb: Codebook) -> str:
    """A valid-looking program: 1-3 OR clauses of 1-4 terms, a context, 0-2 outputs."""
    sp = lambda: " " if rng.random() < 0.15 else ""  # noqa: E731
    clauses = [
        f"{sp()}&{sp()}".join(_term(rng, cb) for _ in range(rng.choice([1, 1, 2, 2, 3, 4])))
        for _ in range(rng.choice([1, 1, 1, 2, 3]))
    ]
    text = "|".join(clauses)
    if rng.random() < 0.6:
        text += ":" + rng.choice(cb.contexts)
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        name = f"run_{rng.randrange(10**6):06d}"
        text += ">" + (name if rng.random() < 0.7 else f"{rng.choice(cb.durable_roots)}{name}")
    return text


MUTATIONS = [
    lambda p, r: f"C{r.choice([0, 14, 99])}&" + p,  # UNKNOWN_NUMBER
    lambda p, r: "X" + p,  # SYNTAX / UNKNOWN_RADICAL
    lambda p, r: "Q?&" + p,  # UNKNOWN_RADICAL
    lambda p, r: p.replace("?", "~", 1) if "?" in p else p + "&V~",  # UNKNOWN_OPERATOR
    lambda p, r: p.split(":")[0] + ":deploy",  # UNKNOWN_CONTEXT
    lambda p, r: p + "&",  # SYNTAX_ERROR
    lambda p, r: p.split(">")[0] + ">/tmp/out",  # PATH_ESCAPES_REPO_ROOT
    lambda p, r: p.split(">")[0] + ">_runs/../x",  # PATH_CONTAINS_TRAVERSAL
    lambda p, r: p.split(">")[0] + ">LAW/CANON/x",  # FORBIDDEN_PATH_OVERLAP
    lambda p, r: p.split(">")[0] + ">tmp/out",  # OUTPUT_OUTSIDE_DURABLE_ROOT
    lambda p, r: p.split(">")[0] + ">a>_runs/a/b",  # PATH_OVERLAP
    lambda p, r: "V3&" + p,  # NUMBER_NOT_ALLOWED
    lambda p, r: "@NOT_AN_ALIAS&" + p,  # UNKNOWN_ALIAS
    lambda p, r: "L.V&" + p,  # INVALID_PATH_ACCESS
    lambda p, r: p[: r.randrange(1, max(2, len(p)))] + "))",  # truncated garbage
]


def distinct_programs(n: int, seed: int, invalid_fraction: float = 0.3) -> list[str]:
    rng, cb = random.Random(seed), load_codebook()
    seen: dict[str, None] = {}
    while len(seen) < n:
        p = random_program(rng, cb)
        if rng.random() < invalid_fraction:
            p = rng.choice(MUTATIONS)(p, rng)
        seen.setdefault(p, None)
    out = list(seen)
    rng.shuffle(out)
    return out


def grpo_batches(steps: int, intents_per_step: int, group: int, seed: int):
    """Steps of (intents, programs, references): G samples per intent, with repeats."""
    rng, cb, v = random.Random(seed), load_codebook(), Validator()
    pool = [p for p in distinct_programs(4 * intents_per_step, seed + 1, 0.0) if v.validate(p).valid]
    for _ in range(steps):
        intents, programs, refs = [], [], []
        for k in range(intents_per_step):
            ref = rng.choice(pool)
            rep = v.validate(ref)
            forms = [ref, rep.canonical, rep.minimal, rep.minimal, rep.minimal.replace("&", " & ")]
            near = [MUTATIONS[0](ref, rng), MUTATIONS[5](ref, rng), random_program(rng, cb)]
            for _ in range(group):
                programs.append(rng.choice(forms) if rng.random() < 0.75 else rng.choice(near))
                intents.append(f"intent {k}")
                refs.append(rep.hash if rng.random() < 0.5 else ref)
        yield intents, programs, refs


# -- measurements -----------------------------------------------------------------------------


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timed_cpu(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds)."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench_plain(programs: list[str], repeats: int) -> dict:
    n, none = len(programs), [None] * len(programs)
    validate = [timed_cpu(lambda: [Validator().validate(p) for p in programs]) for _ in range(repeats)]
    scored = [timed_cpu(lambda: score(programs, programs, none, validator=Validator()))
              for _ in range(repeats)]
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    return {"validate_per_s": n / med(validate, 0), "validate_per_cpu_s": n / med(validate, 1),
            "score_per_s": n / med(scored, 0), "score_per_cpu_s": n / med(scored, 1)}


def _validate_all(programs: list[str]) -> None:
    v = Validator()
    for p in programs:
        v.validate(p)


def bench_ceiling(programs: list[str]) -> float:
    """What the machine allows: two plain processes over the halves against one process.

    A pool of 2 cannot beat this ratio; on a shared 2-core machine it shows the free capacity.
    """
    import multiprocessing as mp

    one = timed(lambda: _validate_all(programs))
    half = len(programs) // 2
    with mp.get_context("fork").Pool(2) as procs:
        two = timed(lambda: procs.map(_validate_all, [programs[:half], programs[half:]]))
    return one / two


def bench_actor(programs: list[str], repeats: int, chunk: int) -> tuple[float, float]:
    """One fresh actor, every chunk queued on it at once: (programs/s, programs/actor-CPU-s)."""
    import ray

    from validator_actors.pool import ValidatorActor

    n, walls, cpus = len(programs), [], []
    for _ in range(repeats):
        actor = ValidatorActor.remote()
        cpu0 = ray.get(actor.cpu_seconds.remote(), timeout=120)
        t = time.perf_counter()
        refs = [actor.score.remote(programs[i : i + chunk], programs[i : i + chunk],
                                   [None] * len(programs[i : i + chunk]), offset=i)
                for i in range(0, n, chunk)]
        ray.get(refs, timeout=600)
        walls.append(time.perf_counter() - t)
        cpus.append(ray.get(actor.cpu_seconds.remote(), timeout=60) - cpu0)
        ray.kill(actor)
    return n / statistics.median(walls), n / statistics.median(cpus)


def bench_pool(programs: list[str], repeats: int, actors: int, chunk: int) -> float:
    from validator_actors.pool import ValidatorPool

    n, times = len(programs), []
    for _ in range(repeats):
        with ValidatorPool(num_actors=actors, chunk_size=chunk) as pool:
            pool.wait_ready(120)
            times.append(timed(lambda: pool.score(programs, programs, [None] * n)))
    return n / statistics.median(times)


def bench_grpo(args) -> dict:
    from validator_actors.pool import ValidatorPool

    batches = list(grpo_batches(args.grpo_steps, args.grpo_intents, 8, args.seed))
    total = sum(len(b[1]) for b in batches)
    distinct = len({p for b in batches for p in b[1]})
    v = Validator()
    plain = timed(lambda: [score(*b, validator=v) for b in batches])
    out = {"samples": total, "distinct_programs": distinct, "plain_score_per_s": total / plain}
    for actors in (1, 2):
        with ValidatorPool(num_actors=actors, chunk_size=args.grpo_chunk) as pool:
            pool.wait_ready(120)
            dt = timed(lambda: [pool.score(*b) for b in batches])
        out[f"pool{actors}_per_s"] = total / dt
        out[f"pool{actors}_step_ms"] = 1000 * dt / len(batches)
    return out


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat; 0.0 where unavailable)."""
    def read():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(max_wait_s: float, threshold: float = 0.15) -> float:
    """On a shared machine, wait (at most ``max_wait_s``) until other work stops; return busy."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import ray

    return {"cpus": os.cpu_count(), "cpu_model": cpu or platform.processor(),
            "python": platform.python_version(), "ray": ray.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="distinct programs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--grpo-steps", type=int, default=20)
    ap.add_argument("--grpo-intents", type=int, default=64, help="intents per step (x8 samples)")
    ap.add_argument("--grpo-chunk", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke mode: small and one repeat")
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for other CPU load to stop (shared machines)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.grpo_steps = 2000, 1, 3

    import ray

    busy_before = wait_idle(args.wait_idle) if args.wait_idle else cpu_busy()
    programs = distinct_programs(args.n, args.seed)
    ceiling = bench_ceiling(programs)  # before ray.init: forked children must not inherit Ray
    v = Validator()
    valid_fraction = sum(v.validate(p).valid for p in programs) / len(programs)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
             log_to_driver=False)
    try:
        plain = bench_plain(programs, args.repeats)
        actor, actor_cpu = bench_actor(programs, args.repeats, args.chunk_size)
        pool1 = bench_pool(programs, args.repeats, 1, args.chunk_size)
        pool2 = bench_pool(programs, args.repeats, 2, args.chunk_size)
        grpo = bench_grpo(args)
        info = machine()
        info["cpu_busy_before"] = round(busy_before, 2)  # other load when we started
        info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        ray.shutdown()

    result = {
        "command": " ".join(["python", "benchmarks/bench_validator.py", *(argv or sys.argv[1:])]),
        "machine": info,
        "distinct": {
            "programs": len(programs), "valid_fraction": round(valid_fraction, 3),
            "chunk_size": args.chunk_size, "repeats": args.repeats,
            "plain_validate_per_s": plain["validate_per_s"], "plain_score_per_s": plain["score_per_s"],
            "plain_validate_per_cpu_s": plain["validate_per_cpu_s"],
            "plain_score_per_cpu_s": plain["score_per_cpu_s"],
            "actor1_per_s": actor, "actor1_per_cpu_s": actor_cpu, "pool1_per_s": pool1, "pool2_per_s": pool2,
            "pool2_over_pool1": pool2 / pool1,
            "two_processes_over_one": ceiling,
        },
        "grpo": grpo,
    }
    d, g = result["distinct"], result["grpo"]
    rows = [
        (f"distinct, cache cold ({d['programs']} programs, {d['valid_fraction']:.0%} valid)", ""),
        ("  plain Validator.validate", f"{d['plain_validate_per_s']:,.0f}  "
                                       f"({d['plain_validate_per_cpu_s']:,.0f} per CPU-s)"),
        ("  plain score()", f"{d['plain_score_per_s']:,.0f}  ({d['plain_score_per_cpu_s']:,.0f} per CPU-s)"),
        ("  one ValidatorActor", f"{d['actor1_per_s']:,.0f}  ({d['actor1_per_cpu_s']:,.0f} per CPU-s)"),
        ("  ValidatorPool, 1 actor", f"{d['pool1_per_s']:,.0f}"),
        ("  ValidatorPool, 2 actors", f"{d['pool2_per_s']:,.0f}"),
        ("  pool 2 / pool 1", f"{d['pool2_over_pool1']:.2f}x"),
        ("  ceiling: 2 plain processes / 1 (free capacity)", f"{d['two_processes_over_one']:.2f}x"),
        (f"grpo ({g['samples']} samples, {g['distinct_programs']} distinct, groups of 8)", ""),
        ("  plain score(), one warm validator", f"{g['plain_score_per_s']:,.0f}"),
        ("  ValidatorPool, 1 actor", f"{g['pool1_per_s']:,.0f}  ({g['pool1_step_ms']:.0f} ms/step)"),
        ("  ValidatorPool, 2 actors", f"{g['pool2_per_s']:,.0f}  ({g['pool2_step_ms']:.0f} ms/step)"),
    ]
    print(f"machine: {info['cpus']} CPUs ({info['cpu_model']}), other load at start "
          f"{info['cpu_busy_before']:.0%}")
    print(f"{'workload':<62} programs/s")
    for name, fig in rows:
        print(f"{name:<62} {fig}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
