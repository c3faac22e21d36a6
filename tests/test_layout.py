"""The code's layout holds: the package's layers import only downwards and never in a cycle (docs/architecture.md);
a handful of modules at its top; commands at the repository root, each registering the config resolvers before Hydra
composes; the library below `segkit.tasks` never imports it (or a command); importing segkit has no side effect;
one atomic-write helper. Static checks of the source, in milliseconds."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "segkit"
HYDRA_SCRIPTS = ["train.py", "evaluate.py", "predict.py", "export.py", "check_data.py", "browse_data.py", "bench.py"]
SCRIPTS = [*HYDRA_SCRIPTS, "summarize_sweep.py", "dashboard.py", "bench_large.py"]
# The layers of src/segkit, lowest first (docs/architecture.md draws them). A module imports from its own package
# and from lower layers only; the packages of one layer never import each other. "segkit": the leaf modules at the
# top of the package (machine.py, moved.py), which import nothing of segkit.
LAYERS = (
    ("segkit",),
    ("models", "data", "runs"),
    ("config",),
    ("training",),
    ("reports",),
    ("callbacks", "bench"),
    ("tasks",),
)
MAX_TOP_LEVEL_MODULES = 6  # besides __init__.py
# Everything below the tasks.
LOWER = sorted(path for path in SRC.rglob("*.py") if path.relative_to(SRC).parts[0] != "tasks")


def package_of(path: Path, root: Path = SRC) -> str:
    """The layer unit a file belongs to: its top-level package under segkit, or "segkit" for a top-level module."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else "segkit"


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Each module of the package by its dotted name (a package by its __init__.py)."""
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join([root.name, *parts])] = path
    return files


def segkit_imports(path: Path, modules: dict[str, Path], root: Path = SRC) -> list[tuple[Path, int]]:
    """(file, line) of each module of the package that the file imports, at any depth (lazy imports inside functions
    included), relative imports resolved. `from a.b import c` counts as importing a.b.c when that is a module."""
    own = [root.name, *path.relative_to(root).with_suffix("").parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's own package upwards
                package = own[: len(own) - node.level]  # a/b/c.py and a/b/__init__.py alike: a.b for level 1
                base = ".".join([*package, base] if base else package)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # The module itself, or the nearest enclosing one (`import segkit.models.unet.UNet` is not valid Python,
            # but `segkit.models.backbone.Backbone` can reach here from a from-import of a package's attribute).
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and modules[".".join(parts)] != path and (modules[".".join(parts)], node.lineno) not in found:
                found.append((modules[".".join(parts)], node.lineno))
    return found


def import_graph(root: Path = SRC) -> dict[Path, list[tuple[Path, int]]]:
    modules = module_files(root)
    return {path: segkit_imports(path, modules, root) for path in sorted(modules.values())}


def upward_imports(root: Path = SRC, layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import of a file by a file of another package that is not in a lower layer, named by both files."""
    rank = {package: i for i, layer in enumerate(layers) for package in layer}
    problems = []
    for path, imports in import_graph(root).items():
        source = package_of(path, root)
        for target, line in imports:
            imported = package_of(target, root)
            if imported == source or imported == "segkit" and target.name == "__init__.py":
                continue
            if rank[imported] >= rank[source]:
                where = "the same layer as" if rank[imported] == rank[source] else "a layer above"
                problems.append(
                    f"{path.relative_to(root.parent)}:{line} imports {target.relative_to(root.parent)}: "
                    f"{imported} is in {where} {source} (tests/test_layout.py LAYERS, docs/architecture.md)"
                )
    return problems


def import_cycles(root: Path = SRC) -> list[str]:
    """One import cycle (lazy imports included) of each group of files that import each other round, named by its
    files in order: the shortest cycle through the group's first file."""
    graph = {path: sorted({target for target, _ in imports}) for path, imports in import_graph(root).items()}

    def reach(start: Path) -> set[Path]:
        seen, todo = {start}, [start]
        while todo:
            for target in graph[todo.pop()]:
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    reachable = {path: reach(path) for path in graph}
    cycles, placed = [], set()
    for path in graph:
        group = {other for other in reachable[path] if path in reachable[other]}  # its strongly connected group
        if len(group) < 2 or path in placed:
            continue
        placed |= group
        trails, seen = [[path]], {path}  # breadth first, inside the group: the shortest way back to `path`
        while trails:
            trail = trails.pop(0)
            for target in graph[trail[-1]]:
                if target == path:
                    cycles.append(" imports ".join(str(p.relative_to(root.parent)) for p in [*trail, path]))
                    trails = []
                    break
                if target in group and target not in seen:
                    seen.add(target)
                    trails.append([*trail, target])
    return cycles


def test_every_package_has_a_layer():
    packages = {package_of(path) for path in SRC.rglob("*.py")}
    placed = {package for layer in LAYERS for package in layer}
    assert packages - placed == set(), "put the new package in LAYERS (and in docs/architecture.md's picture)"


def test_no_import_runs_up_the_layers():
    assert upward_imports() == []


def test_no_import_cycles():
    assert import_cycles() == []


def test_the_layer_checks_name_both_files_of_an_upward_import_and_of_a_cycle(tmp_path):
    root = tmp_path / "segkit"
    files = {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/datamodule.py": "def pin():\n    from segkit.config.devices import plan  # lazy, and upward\n",
        "config/__init__.py": "",
        "config/devices.py": "from segkit.data.datamodule import pin\nplan = 1\n",
        "training/__init__.py": "",
        "training/module.py": "from segkit.training import checkpoints\n",
        "training/checkpoints.py": "from .module import *\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert upward_imports(root) == [
        "segkit/data/datamodule.py:2 imports segkit/config/devices.py: config is in a layer above data "
        "(tests/test_layout.py LAYERS, docs/architecture.md)"
    ]
    assert sorted(import_cycles(root)) == [
        "segkit/config/devices.py imports segkit/data/datamodule.py imports segkit/config/devices.py",
        "segkit/training/checkpoints.py imports segkit/training/module.py imports segkit/training/checkpoints.py",
    ]


def test_a_handful_of_modules_at_the_top():
    top = sorted(path.name for path in SRC.glob("*.py") if path.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, f"{top}: put modules in the package whose idea they belong to"


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def main_block(path: Path) -> list[ast.stmt]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node.body
    return []


def hydra_config_name(path: Path) -> str:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "hydra.main":
            return next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "config_name")
    raise AssertionError(f"{path.name}: no @hydra.main")


@pytest.mark.parametrize("script", HYDRA_SCRIPTS)
def test_each_command_registers_the_resolvers_and_checks_its_keys_before_hydra_composes(script):
    config = hydra_config_name(ROOT / script)
    block = [ast.unparse(statement) for statement in main_block(ROOT / script)]
    assert block == ["register_resolvers()", f"check_overrides({config!r})", "main()"], (
        f"{script}: its `if __name__ == '__main__':` block must be register_resolvers() (segkit.config.hydra_setup), "
        f"check_overrides({config!r}), main(): the resolvers before anything composes, a misspelled key named "
        f"before Hydra composes. It is: {block}"
    )


def test_commands_live_at_the_root_and_the_library_has_none():
    assert all((ROOT / script).is_file() for script in SCRIPTS)
    commands = [
        path.relative_to(ROOT).as_posix()
        for path in SRC.rglob("*.py")
        if path.name == "__main__.py" or main_block(path) or "hydra.main" in path.read_text()
    ]
    assert commands == [], f"entry points inside the package: {commands}; they belong beside train.py"


@pytest.mark.parametrize("path", LOWER, ids=lambda p: p.relative_to(SRC).as_posix())
def test_lower_layers_import_neither_the_tasks_nor_a_command(path):
    commands = {Path(script).stem for script in SCRIPTS}
    bad = sorted(
        name
        for name in imported_modules(path)
        if name == "segkit.tasks" or name.startswith("segkit.tasks.") or name in commands
    )
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


def test_one_atomic_write_helper():
    """Files are replaced in one place (segkit.runs.atomic: temporary file beside the target, fsync, rename)."""
    replacing = sorted(
        path.relative_to(SRC).as_posix()
        for path in SRC.rglob("*.py")
        if "os.replace(" in path.read_text() or ".rename(" in path.read_text()
    )
    assert replacing == ["runs/atomic.py"]


def test_importing_segkit_registers_no_resolver():
    code = (
        "import segkit, segkit.config.checks, segkit.runs.resume, segkit.runs.run_names;"
        "from omegaconf import OmegaConf;"
        "from segkit.config.hydra_setup import register_resolvers;"
        "before = OmegaConf.has_resolver('segkit.run_dir');"
        "register_resolvers();"
        "print(before, OmegaConf.has_resolver('segkit.run_dir'), OmegaConf.has_resolver('segkit.cwd'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "True", "True"], out.stderr[-2000:]
