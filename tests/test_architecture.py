"""The rules of the layout (docs/architecture.md, DESIGN.md §3), checked on the source: which room may import
what, where kfp / kserve / tritonclient / kubernetes / Feast may appear, the transformer process without
tritonclient, no module or function past its size, every path of the map present."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The library's rooms, lowest first: a module may import its own room and the rooms before it.
LAYERS = (
    ("utils", "fingerprint", "workdir"),
    ("data",),
    ("shards",),
    ("extraction",),
    ("model",),
    ("evaluation",),  # below training: training validates with it
    ("training",),
    ("interpret",),
    ("export",),
    ("featurestore",),
    ("serving",),
    ("ab",),
    ("job",),
    ("cli", "__main__", ""),
)
RANK = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}

#: Where each heavy or server-side dependency may be imported (top-level package -> allowed path prefixes).
ALLOWED = {
    "kfp": ("pipelines/", "components/"),
    "kserve": ("linkedout/serving/",),
    "kubernetes": ("linkedout/ab/rollout.py", "linkedout/ab/deploy.py", "linkedout/job/deploy.py"),
    "feast": ("linkedout/featurestore/",),
    "pipelines": ("pipelines/", "linkedout/cli/"),
    "components": ("components/", "pipelines/"),
}
#: Rooms that import none of the server, cluster or Feast packages (DESIGN.md §3).
PURE = ("data", "extraction", "shards", "model", "training", "evaluation", "interpret")

#: Modules over 500 lines that are one concept each (docs/architecture.md says why).
ONE_CONCEPT: dict[str, str] = {}


def _modules(*roots: str) -> Iterator[tuple[str, Path, ast.Module]]:
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), path, ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, node.module


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_library_imports_point_down() -> None:
    wrong = []
    for rel, _, tree in _modules("linkedout"):
        mine = _room(".".join(Path(rel).with_suffix("").parts))
        for _, name in _imports(tree):
            if name.startswith("linkedout.") and RANK[_room(name)] > RANK[mine]:
                wrong.append(f"{rel} imports {name}")
    assert wrong == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_dependency_is_imported_only_where_it_belongs(package: str) -> None:
    wrong = [f"{rel}:{node.lineno}" for rel, _, tree in _modules("linkedout", "components", "pipelines")
             for node, name in _imports(tree)
             if name.split(".")[0] == package and not rel.startswith(ALLOWED[package])]
    assert wrong == []


def test_the_model_side_rooms_import_no_server_cluster_or_feast_package() -> None:
    banned = {"kfp", "kserve", "tritonclient", "kubernetes", "feast", "pipelines", "components"}
    wrong = [f"{rel} imports {name}" for room in PURE for rel, _, tree in _modules(f"linkedout/{room}")
             for _, name in _imports(tree) if name.split(".")[0] in banned]
    assert wrong == []


def test_production_serving_never_imports_the_local_stand_ins() -> None:
    local = ROOT / "linkedout" / "serving" / "local"
    assert local.is_dir()
    wrong = [f"{rel} imports {name}" for rel, path, tree in _modules("linkedout/serving")
             if not path.is_relative_to(local)
             for _, name in _imports(tree) if name.startswith("linkedout.serving.local")]
    assert wrong == []


def test_the_transformer_process_never_loads_tritonclient() -> None:
    """kserve and tritonclient register the same protobuf symbols (kserve#3099): the transformer's process,
    everything its entry module imports, must not load tritonclient."""
    code = ("import sys, runpy; import linkedout.serving.transformer as t; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'tritonclient'); "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, f"the transformer's process loads {done.stdout.strip()} {done.stderr[-2000:]}"


def test_no_library_module_imports_the_orchestration() -> None:
    wrong = [f"{rel} imports {name}" for rel, _, tree in _modules("linkedout") if not rel.startswith("linkedout/cli/")
             for _, name in _imports(tree) if name.split(".")[0] in ("pipelines", "components")]
    assert wrong == []


def test_library_modules_import_each_other_at_the_top() -> None:
    """Only the CLI (fast start-up) and the KFP components (KFP runs a function's body alone) import the
    library inside functions; elsewhere a function-local import must say why on its line."""
    wrong = []
    for rel, path, tree in _modules("linkedout"):
        if rel.startswith("linkedout/cli/"):
            continue
        lines = path.read_text().splitlines()
        top = {id(n) for n in tree.body}
        for node, name in _imports(tree):
            if name.startswith("linkedout") and id(node) not in top and "#" not in lines[node.lineno - 1]:
                wrong.append(f"{rel}:{node.lineno} {name}")
    assert wrong == []


def test_no_module_over_500_lines_and_no_function_over_80() -> None:
    long_modules, long_functions = [], []
    for rel, path, tree in _modules("linkedout", "components", "pipelines"):
        lines = len(path.read_text().splitlines())
        if lines > 500 and rel not in ONE_CONCEPT:
            long_modules.append(f"{rel} ({lines})")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > 80:
                    long_functions.append(f"{rel}:{node.lineno} {node.name} ({n})")
    assert long_modules == [] and long_functions == []


def test_the_stages_are_listed_once_and_each_has_its_component() -> None:
    import components
    from linkedout.job import STAGES

    assert [s.name for s in STAGES] == list(components.BY_STAGE)
    for stage in STAGES:
        assert stage.load().__module__ == f"linkedout.job.{stage.module}"
        names = components.BY_STAGE[stage.name].python_func.__code__.co_names
        assert f"linkedout.job.{stage.module}" in names and stage.function in names, \
            f"the component of {stage.name} does not call linkedout.job.{stage.module}.{stage.function}"


def test_the_architecture_map_names_paths_that_exist() -> None:
    """docs/architecture.md's map: every entry (a path at the start of a line) and every module its
    description names (``name.py``) exists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = text.split("```", 2)[1]  # the map: the first code block
    entries: list[tuple[str, str]] = []  # (path, its description)
    stack: list[str] = []
    for line in tree.strip("\n").splitlines():
        m = re.match(r"^( *)([\w./-]+)(\s{2,}.*)?$", line)
        if m and len(m.group(1)) < 20:
            depth = len(m.group(1)) // 2
            stack = [*stack[:depth], m.group(2).rstrip("/")]
            entries.append(("/".join(stack), m.group(3) or ""))
        elif entries:
            path, desc = entries[-1]
            entries[-1] = (path, desc + line)
    assert len(entries) > 20
    missing = [p for p, _ in entries if not (ROOT / p).exists()]
    for path, desc in entries:
        if (ROOT / path).is_dir():
            missing += [f"{path}/{name}" for name in re.findall(r"\b(\w+\.py)\b", desc)
                        if not (ROOT / path / name).exists()]
    assert missing == []
