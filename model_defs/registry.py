"""The model registry: architectures registered by name, built from keyword arguments.

    @register_model("mlp")
    class MLP(nn.Module): ...

    model = create_model("mlp", in_features=16, hidden_sizes=[32], out_features=4)

This file travels inside every archive together with the definition files an architecture needs, so
it imports only the standard library and model_defs.errors. The package's modules are imported
(and so register what they define) the first time the registry is asked: a command that never
builds a model never imports torch.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from model_defs.errors import ArchitectureError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelEntry", "register_model", "create_model", "list_models", "get_entry",
           "register_processor", "create_processor", "definition_files"]

_PACKAGE = __name__.rsplit(".", 1)[0]  # "model_defs"
_REGISTRY: dict[str, "ModelEntry"] = {}
_PROCESSORS: dict[str, type] = {}
_DISCOVERED: list[bool] = []  # non-empty once every module of the package was imported


def _discover() -> None:
    """Import every module of the package once, so each registers its architectures and
    processors (inside an archive the package holds only the modules its model needs)."""
    if _DISCOVERED:
        return
    _DISCOVERED.append(True)
    package = importlib.import_module(_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{_PACKAGE}.{module.name}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]  # an nn.Module class or a function returning one
    example_input_shape: tuple[int, ...] | None = None  # one sample the defaults accept (tests)
    example_input_dtype: str = "float32"

    @property
    def module_file(self) -> Path:
        return Path(inspect.getfile(self.factory)).resolve()


def register_model(name: str, *, example_input_shape: tuple[int, ...] | None = None,
                   example_input_dtype: str = "float32"):
    """Decorator: register an nn.Module class (or factory) under `name`.

    The optional example input (one sample the constructor's defaults accept) lets the registry's
    generated tests run a forward pass with the defaults; without it they take the input and params
    of a spec under model_defs/specs that uses the architecture."""

    def decorate(factory):
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name {name!r} is registered twice: by "
                             f"{_REGISTRY[name].factory.__qualname__} and {factory.__qualname__}. "
                             "Give one of them another name.")
        shape = tuple(example_input_shape) if example_input_shape is not None else None
        _REGISTRY[name] = ModelEntry(name, factory, shape, example_input_dtype)
        return factory

    return decorate


def list_models() -> list[str]:
    """The registered architecture names, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    """The registry entry for `name`. Raises ArchitectureError listing the known names."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArchitectureError(f"unknown architecture {name!r}; registered: {', '.join(list_models())}. "
                       f"Fix `arch` in the spec, or register the class with "
                       f"@register_model({name!r}, ...) in a module under {_PACKAGE}/.") from None


def create_model(name: str, **params: Any) -> nn.Module:
    """Build the architecture `name` with `params` as keyword arguments.

    Raises ArchitectureError for an unknown name, or for params the constructor's signature does
    not take (naming the accepted arguments); errors raised inside the constructor propagate.
    """
    factory = get_entry(name).factory
    signature = inspect.signature(factory)
    try:
        signature.bind(**params)
    except TypeError as err:
        raise ArchitectureError(f"cannot build {name!r} with params {params}: {err}. {name!r} "
                                f"accepts: {', '.join(signature.parameters)}. Fix `params` in the "
                                "spec.") from None
    return factory(**params)


def register_processor(name: str):
    """Decorator: register pre/post-processing a spec cannot declare, under `name` (the spec's
    `processor: name`). The class is built with the folder of the spec's `files` and may define

        decode(self, sent) -> dict       what a request sent under `inputs` (or one v1 instance, or
                                         its multipart parts) -> the model's inputs by name
        encode(self, outputs: dict) -> dict   a request's outputs by name (arrays) -> the
                                         `outputs` of a JSON reply (ours and KServe v1)
    """

    def decorate(cls):
        if name in _PROCESSORS and _PROCESSORS[name] is not cls:
            raise ValueError(f"processor name {name!r} is registered twice")
        _PROCESSORS[name] = cls
        return cls

    return decorate


def create_processor(name: str, files_dir: Path):
    """The processor registered as `name`, built for the archive's files. Raises
    ArchitectureError naming the registered ones."""
    _discover()
    try:
        cls = _PROCESSORS[name]
    except KeyError:
        raise ArchitectureError(f"unknown processor {name!r}; registered: "
                                f"{', '.join(sorted(_PROCESSORS)) or 'none'}. Register it with "
                                f"@register_processor({name!r}) in a module under {_PACKAGE}/."
                                ) from None
    return cls(files_dir)


def definition_files(name: str, processor: str | None = None) -> list[Path]:
    """The files of this package that architecture `name` (and `processor`) need, sorted: the
    package's __init__.py, this registry, the modules defining them, and every package module they
    import."""
    package_dir = Path(__file__).resolve().parent
    needed = {package_dir / "__init__.py"}
    pending = [Path(__file__).resolve(), get_entry(name).module_file]
    if processor is not None:
        create = _PROCESSORS.get(processor)
        if create is None:
            create_processor(processor, package_dir)  # raises, naming the registered ones
        pending.append(Path(inspect.getfile(create)).resolve())
    while pending:
        path = pending.pop()
        if path in needed:
            continue
        needed.add(path)
        pending.extend(_package_imports(path, package_dir))
    return sorted(needed)


def _package_imports(path: Path, package_dir: Path) -> list[Path]:
    """Modules of this package that the file at `path` imports (absolute or relative imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from .layers import X` or `from . import layers`
                names = [base] if base else [alias.name for alias in node.names]
            elif base == _PACKAGE:  # `from model_defs import layers`
                names = [alias.name for alias in node.names]
            elif base.startswith(_PACKAGE + "."):
                names = [base[len(_PACKAGE) + 1:]]
            else:
                names = []
        elif isinstance(node, ast.Import):
            names = [a.name[len(_PACKAGE) + 1:] for a in node.names if a.name.startswith(_PACKAGE + ".")]
        else:
            continue
        for dotted in names:
            candidate = package_dir.joinpath(*dotted.split(".")).with_suffix(".py")
            if candidate.is_file():
                found.append(candidate)
    return found
