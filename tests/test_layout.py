"""The code's layout holds: commands at the repository root, each registering the config resolvers before Hydra
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
SCRIPTS = [*HYDRA_SCRIPTS, "summarize_sweep.py"]
# The layers below the tasks: data, models, and what the LightningModule is made of.
LOWER = [
    *sorted((SRC / "data").rglob("*.py")),
    *sorted((SRC / "models").rglob("*.py")),
    *sorted((SRC / "training").rglob("*.py")),
]


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
