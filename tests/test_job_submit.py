"""`ray job submit` of a short `tinycompress train` against `ray start --head --num-cpus=2`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="the script is bash")
def test_ray_job_submit_runs_training_and_writes_a_checkpoint():
    bin_dir = str(Path(sys.executable).parent)  # ray and tinycompress of this environment
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=bin_dir + os.pathsep + env.get("PATH", ""), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "job_submit_smoke.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "succeeded" in out and "JOB_SUBMIT_OK" in proc.stdout
    assert "checkpoint written: step_000002" in proc.stdout
