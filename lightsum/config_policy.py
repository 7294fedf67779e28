"""What a config may do: name classes from an allow-list only, and expand YAML aliases a bounded amount.

LightningCLI configs are code: a ``class_path`` (or a callable argument) names anything importable,
and instantiating it runs it. lightsum's command line lets configs name only the modules below;
``LIGHTSUM_ALLOW_IMPORTS=pkg.module,other`` (comma-separated import paths, each allowing everything
under it) widens the list for one's own callbacks or plugins. The list is an environment variable,
not a config key, so that a config file cannot widen it. The policy is jsonargparse's own import
path allow-list (``set_parsing_settings``), which checks a path before importing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from jsonargparse import get_loader, set_loader, set_parsing_settings

# Torch optimizers and schedulers, Lightning callbacks, loggers, plugins, strategies, accelerators and
# profilers (with lightning_fabric, where some of them are defined), and lightsum itself.
ALLOWED_IMPORTS = (
    "torch.optim",
    "pytorch_lightning.cli.ReduceLROnPlateau",  # LightningCLI's ReduceLROnPlateau, which takes the monitor
    "pytorch_lightning.callbacks",
    "pytorch_lightning.loggers",
    "pytorch_lightning.plugins",
    "pytorch_lightning.strategies",
    "pytorch_lightning.accelerators",
    "pytorch_lightning.profilers",
    "lightning_fabric.plugins",
    "lightning_fabric.strategies",
    "lightning_fabric.accelerators",
    "lightsum",
)
ALLOW_ENV = "LIGHTSUM_ALLOW_IMPORTS"
# A node count no hand-written config approaches (the default config has about 150), and a
# "billion laughs" config of a kilobyte passes within a few levels of nesting.
MAX_YAML_NODES = 100_000


def allowed_imports() -> list[str]:
    """``ALLOWED_IMPORTS`` and the entries of ``$LIGHTSUM_ALLOW_IMPORTS``."""
    extra = [entry.strip() for entry in os.environ.get(ALLOW_ENV, "").split(",") if entry.strip()]
    for entry in extra:
        if not all(part.isidentifier() for part in entry.split(".")):
            raise ValueError(f"{ALLOW_ENV}: {entry!r} is not a dotted import path")
    return [*ALLOWED_IMPORTS, *extra]


def expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes ``node`` stands for once every alias inside it is expanded (aliases share composed nodes)."""
    if id(node) not in sizes:
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        sizes[id(node)] = 1
        sizes[id(node)] = 1 + sum(expanded_size(child, sizes) for child in children)
        sizes[id(node)] = min(sizes[id(node)], MAX_YAML_NODES + 1)  # enough to refuse; keeps the sums small
    return sizes[id(node)]


def bounded(load: Callable[..., Any]) -> Callable[..., Any]:
    """``load`` (jsonargparse's YAML loader), refusing a document that expands past ``MAX_YAML_NODES``."""

    def load_bounded(stream: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(stream, str) and "*" in stream:  # an alias is written *name
            try:
                root = yaml.compose(stream, Loader=yaml.SafeLoader)
            except yaml.YAMLError:
                root = None  # the loader itself reports the syntax error
            if root is not None and expanded_size(root, {}) > MAX_YAML_NODES:
                raise ValueError(
                    f"a config expands to more than {MAX_YAML_NODES} YAML nodes through its aliases "
                    "(&name / *name): refused"
                )
        return load(stream, *args, **kwargs)

    return load_bounded


@contextmanager
def config_policy() -> Iterator[None]:
    """Inside: configs may import only ``allowed_imports()`` and expand YAML aliases boundedly.

    The import policy is jsonargparse's process-wide setting and stays in place afterwards (it is set
    by the command line's entry point only); the YAML loader is put back.
    """
    set_parsing_settings(import_path_denylist=["*"], import_path_allowlist=allowed_imports())
    previous = get_loader("yaml")
    set_loader("yaml", bounded(previous), exceptions=(yaml.YAMLError,))
    try:
        yield
    finally:
        set_loader("yaml", previous, exceptions=(yaml.YAMLError,))
