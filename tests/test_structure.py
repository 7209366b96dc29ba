"""Guards on the package's shape: no import cycle, and no TensorFlow where it must stay out."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SCRUBBED_ENV, require, subprocess_env

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mtl_keras"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg.
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_guard_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "mtl_keras.data.pipeline" in graph and "mtl_keras.serving.verify" in graph["mtl_keras.serving.runs"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_arrows_point_down_train_and_experiments_are_the_top():
    # Only the experiment runner (which trains each run in-process) imports train; nothing imports the runner.
    for module, edges in import_graph().items():
        top = module.startswith("mtl_keras.experiments")
        assert "mtl_keras.train" not in edges or top, f"{module} imports train"
        assert not any(e.startswith("mtl_keras.experiments") for e in edges) or top, f"{module} imports experiments"


# Importing these must not import TensorFlow: settings, choice lists, flags, errors, dataset types and names,
# and the model code (which the JAX-only GPU runner imports).
TENSORFLOW_FREE = ["mtl_keras.config", "mtl_keras.variants", "mtl_keras.errors", "mtl_keras.flags", "mtl_keras.data",
                   "mtl_keras.data.types", "mtl_keras.data.splits", "mtl_keras.data.sources", "mtl_keras.models",
                   "mtl_keras.losses",
                   "mtl_keras.modeling", "mtl_keras.evaluate"]

BLOCKER = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
failed = {}
for module in json.loads(sys.argv[1]):
    try:
        __import__(module)
    except ImportError as e:
        failed[module] = str(e)
tf_modules = sorted(m for m in sys.modules if m.startswith("tensorflow"))
print("JSON:" + json.dumps({"failed": failed, "tensorflow": tf_modules}))
"""


def test_settings_choice_lists_and_models_import_no_tensorflow():
    env = subprocess_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", BLOCKER, json.dumps(TENSORFLOW_FREE)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split("JSON:")[-1])
    assert report == {"failed": {}, "tensorflow": []}


def test_subprocess_tests_scrub_the_environment_and_optional_modules_fail_under_ci(monkeypatch):
    # A developer's KERAS_BACKEND=jax or TF_CONFIG must not change what a subprocess test runs.
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    env = subprocess_env(JAX_PLATFORMS="cpu")
    assert not (set(SCRUBBED_ENV) - {"JAX_PLATFORMS"}) & set(env) and env["JAX_PLATFORMS"] == "cpu"
    assert env["PYTHONPATH"] == str(REPO)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no_such_module_xyz cannot be imported under CI"):
        require("no_such_module_xyz")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require("no_such_module_xyz")
    # Every test goes through those helpers: no hand-built environment, no importorskip that CI would not see.
    for path in sorted((REPO / "tests").glob("*.py")):
        text = path.read_text()
        if path.name not in ("conftest.py", "test_structure.py"):
            assert "**os.environ" not in text and "importorskip(" not in text, path.name


def test_ci_fails_a_run_with_a_skip_whose_reason_is_not_allowed(tmp_path):
    import shutil

    (tmp_path / "tests").mkdir()
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pytest\n\ndef test_runs():\n    pass\n\n"
        "def test_skips():\n    pytest.skip('dataset not installed')\n")

    def pytest_exit(ci: bool) -> subprocess.CompletedProcess:
        env = {k: v for k, v in subprocess_env().items() if k != "CI"} | ({"CI": "true"} if ci else {})
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    assert pytest_exit(ci=False).returncode == 0  # a developer's machine: a skip is a skip
    proc = pytest_exit(ci=True)
    assert proc.returncode == 1 and "tests/test_x.py::test_skips: dataset not installed" in proc.stdout, proc.stdout
    (tmp_path / ".ci" / "allowed_skips").write_text("# comment\nnot installed$\n")
    assert pytest_exit(ci=True).returncode == 0
