"""The packages form layers, and no import runs back up them.

    validator_actors  <-  rollout  <-  learner  <-  cluster  <-  sweep, serve

A package may import from the layers below it and from itself, never from a layer above or
from a sibling on its own layer (``sweep`` and ``serve`` are two products on the top layer).
Every import counts, also the ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("validator_actors", "tune_configs"), ("rollout",), ("learner",), ("cluster",), ("sweep", "serve")]
LAYER = {package: depth for depth, packages in enumerate(LAYERS) for package in packages}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(package: str, path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for line, module in imports(path):
        target = module.split(".")[0]
        if target in LAYER and target != package and LAYER[target] >= LAYER[package]:
            found.append(f"{path.relative_to(root)}:{line}: {package} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(LAYER))
def test_no_import_runs_up_the_layers(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files or package == "tune_configs", f"{package} has no modules"
    bad = [v for f in files for v in violations(package, f)]
    assert not bad, "\n".join(bad)


def test_the_check_sees_upward_and_sideways_imports(tmp_path):
    """The test above can fail: an import inside a function, up a layer or sideways, is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("import rollout.sampler\n\ndef f():\n    from cluster.runtime import init_ray\n"
                     "    import serve.app\n    return init_ray\n")
    assert violations("learner", probe, tmp_path) == ["probe.py:4: learner imports cluster.runtime",
                                                     "probe.py:5: learner imports serve.app"]
    assert violations("sweep", probe, tmp_path) == ["probe.py:5: sweep imports serve.app"]
