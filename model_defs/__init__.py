"""Model definitions: every module in this folder registers its architectures (and processors)
with the registry, which imports them all the first time it is asked (list_models, create_model).

Inside an archive only the modules a model needs are present, so only those are imported.
"""

from model_defs.registry import (create_model, create_processor, definition_files, get_entry,
                                 list_models, register_model, register_processor)

__all__ = ["create_model", "create_processor", "definition_files", "get_entry", "list_models",
           "register_model", "register_processor"]
