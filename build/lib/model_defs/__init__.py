"""Model definitions: every module in this folder registers its architectures on import.

Inside an archive only the modules a model needs are present, so only those are imported.
"""

import importlib
import pkgutil

from model_defs.registry import (create_model, create_processor, definition_files, get_entry,
                                 list_models, register_model, register_processor)

__all__ = ["create_model", "create_processor", "definition_files", "get_entry", "list_models",
           "register_model", "register_processor"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
