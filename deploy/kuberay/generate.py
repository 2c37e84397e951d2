"""Write the generated blocks of the KubeRay manifests, each from its one source.

- ``rayservice.yaml``, ``serveConfigV2``: ``serve/config.yaml`` (what ``tinycompress serve``,
  ``serve run`` and ``serve deploy`` read) with the two settings a Kubernetes cluster needs: a
  proxy on every node and the proxy listening on all addresses, so that the Service KubeRay
  puts in front of the pods reaches it.
- ``rayjob-train.yaml``, the ConfigMap's ``train.yaml``: ``tune_configs/10m.yaml`` with
  ``train.rollout_resource`` set to the custom resource that only the job's ``cpu`` group
  advertises; ``train-gpu.yaml``: the same with ``train.learner_resource`` set to the one that
  only the ``gpu`` group advertises (the learner on the GPU node, or a clear error at start).

Everything else in the manifests is written by hand. ``tests/test_deploy.py`` checks that the
committed files equal what this writes.

    python deploy/kuberay/generate.py           # rewrite the blocks in place
    python deploy/kuberay/generate.py --check   # exit 1, naming the stale files
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
TRAIN_PRESET = ROOT / "tune_configs" / "10m.yaml"
ROLLOUT_RESOURCE = "rollout"
"""The custom resource of the train job's ``cpu`` group (``rayStartParams.resources``)."""
LEARNER_RESOURCE = "learner"
"""The custom resource of the train job's ``gpu`` group."""
CLUSTER_SERVE = {"proxy_location": "EveryNode", "http_host": "0.0.0.0"}


def serve_config_v2(source: Path = SERVE_CONFIG) -> str:
    """``source`` as a RayService's ``serveConfigV2`` text."""
    raw = yaml.safe_load(source.read_text())
    raw["proxy_location"] = CLUSTER_SERVE["proxy_location"]
    raw["http_options"] = {**(raw.get("http_options") or {}), "host": CLUSTER_SERVE["http_host"]}
    return yaml.safe_dump(raw, sort_keys=False)


def train_config(source: Path = TRAIN_PRESET, gpu_learner: bool = False) -> str:
    """``source`` with its rollout workers pinned to the nodes that have ``ROLLOUT_RESOURCE``,
    and with ``gpu_learner`` its learner to those that have ``LEARNER_RESOURCE`` (the keys the
    preset writes, so that a new config field with a default changes nothing)."""
    from learner.config import RunConfig

    raw = yaml.safe_load(source.read_text())
    raw.setdefault("train", {})["rollout_resource"] = ROLLOUT_RESOURCE
    if gpu_learner:
        raw["train"]["learner_resource"] = LEARNER_RESOURCE
    RunConfig.from_dict(raw)  # loads strictly, as `tinycompress train` will
    return yaml.safe_dump(raw, sort_keys=False)


# manifest -> ((the key of a generated block scalar, what writes the block), ...)
BLOCKS = {
    "rayservice.yaml": (("serveConfigV2", serve_config_v2),),
    "rayjob-train.yaml": (("train.yaml", train_config),
                          ("train-gpu.yaml", lambda: train_config(gpu_learner=True))),
}


def replace_block(text: str, key: str, body: str) -> str:
    """Replace the literal block scalar ``key: |`` of ``text`` (its one occurrence) by ``body``."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"( *){re.escape(key)}: \|\n", line)]
    if len(starts) != 1:
        raise ValueError(f"expected one `{key}: |` line, found {len(starts)}")
    start = starts[0]
    indent = len(lines[start]) - len(lines[start].lstrip(" "))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay
        end -= 1
    pad = " " * (indent + 2)
    new = [pad + line if line.strip() else "\n" for line in body.splitlines(keepends=True)]
    return "".join(lines[: start + 1] + new + lines[end:])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def render(name: str) -> str:
    """The manifest ``name`` with its generated blocks brought up to date."""
    text = (HERE / name).read_text()
    for key, make in BLOCKS[name]:
        text = replace_block(text, key, make())
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a manifest is stale")
    args = parser.parse_args(argv)
    stale = []
    for name in BLOCKS:
        path, text = HERE / name, render(name)
        if path.read_text() != text:
            stale.append(name)
            if not args.check:
                path.write_text(text)
    verb = "stale" if args.check else "rewrote"
    print(f"{verb}: {', '.join(stale)}" if stale else "up to date", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
