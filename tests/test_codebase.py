"""The package uses Lightning's public API only, and importing it changes no global state."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "lightsum"
# Lightning's public modules lightsum may import from (its documented API).
PUBLIC_LIGHTNING = {
    "pytorch_lightning",
    "pytorch_lightning.callbacks",
    "pytorch_lightning.cli",
    "pytorch_lightning.loggers",
    "pytorch_lightning.plugins",
    "pytorch_lightning.plugins.environments",
    "pytorch_lightning.strategies",
    "pytorch_lightning.utilities",
    "pytorch_lightning.utilities.exceptions",
}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_api_uses(source: str) -> list[str]:
    """Where ``source`` reaches into Lightning (or any library) past its public API: imports from
    modules outside PUBLIC_LIGHTNING or of ``_names``; ``x._attr`` on anything but ``self``/``cls``;
    ``self._attr`` that the module itself never defines (so inherited from a library class);
    ``getattr(x, "_attr")`` and the like."""
    tree = ast.parse(source)
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        for t in ([t] if not isinstance(t, ast.Tuple) else t.elts)
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
    }
    found = []
    for node in ast.walk(tree):
        where = f"line {getattr(node, 'lineno', '?')}"
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] in ("pytorch_lightning", "lightning", "lightning_fabric")
        ):
            if node.module not in PUBLIC_LIGHTNING:
                found.append(f"{where}: from {node.module} import ...")
            found += [f"{where}: imports {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in ("lightning", "lightning_fabric")
                or (a.name.startswith("pytorch_lightning.") and a.name not in PUBLIC_LIGHTNING)
            ]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") or node.attr not in own:
                found.append(f"{where}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and private(str(node.args[1].value))
        ):
            found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_the_checker_finds_each_kind_of_private_use() -> None:
    source = textwrap.dedent("""
        from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
        from lightning_fabric.utilities.exceptions import MisconfigurationException
        from pytorch_lightning.callbacks import _hidden
        import lightning_fabric
        class C:
            def __init__(self):
                self._mine = 1
            def f(self, trainer):
                trainer.fit_loop.epoch_loop._batches_that_stepped = 3
                self._mine += 1
                self._current_fx_name
                getattr(trainer, "_accelerator_connector")
                return self.__class__
    """)
    found = private_api_uses(source)
    assert [f.split(": ", 1)[1] for f in found] == [
        "from pytorch_lightning.overrides.distributed import ...",
        "from lightning_fabric.utilities.exceptions import ...",
        "imports _hidden",
        "import lightning_fabric",
        "trainer.fit_loop.epoch_loop._batches_that_stepped",
        "self._current_fx_name",
        "getattr(trainer, '_accelerator_connector')",
    ]


@pytest.mark.parametrize("module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_public_api(module: Path) -> None:
    assert private_api_uses(module.read_text()) == []


# In a fresh interpreter: import the libraries given, then every lightsum module; print the global
# state before and after, and after a deliberate change (so the comparison is known to see one).
_PROBE = """
import json, logging, pkgutil, sys, warnings
def state():
    loggers = {n: (logging.getLogger(n).level, len(logging.getLogger(n).handlers), logging.getLogger(n).disabled)
               for n in sorted(logging.root.manager.loggerDict)}
    return {"filters": [repr(f) for f in warnings.filters], "loggers": loggers, "root": logging.getLogger().level,
            "root_handlers": len(logging.getLogger().handlers), "disable": logging.root.manager.disable,
            "showwarning": repr(warnings.showwarning), "excepthook": repr(sys.excepthook)}
for name in json.loads(sys.argv[1]):
    try:
        __import__(name)
    except Exception:
        pass  # a module that cannot be imported on its own; its package brings it
before = state()
import lightsum
names = [m.name for m in pkgutil.walk_packages(lightsum.__path__, "lightsum.") if not m.name.endswith("__main__")]
for name in names:
    __import__(name)
after = state()
warnings.filterwarnings("ignore", message="probe")
print(json.dumps({"before": before, "after": after, "changed": state(), "lightsum": names}))
"""


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: ~6 s
def test_importing_lightsum_changes_no_warning_filter_or_logger() -> None:
    # The libraries lightsum uses may set filters when they are imported: that is theirs. So the
    # fresh interpreter first imports every module this process has loaded (lightsum's included
    # dependencies, in the order they came), and the comparison sees lightsum's own imports alone.
    for module in pkgutil.walk_packages([str(PACKAGE)], "lightsum."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    libraries = [
        m
        for m in list(sys.modules)
        if m.split(".")[0] not in ("lightsum", "__main__") and "test" not in m and m != "conftest"
    ]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(libraries)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["lightsum"]) >= 15  # every module was imported
    assert result["after"] == result["before"]
    assert result["changed"] != result["before"]  # the comparison does see a new filter
