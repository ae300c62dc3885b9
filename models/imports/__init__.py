"""Importing published checkpoints (PyTorchVideo, PySlowFast, mmaction2, torchvision, the AdaFuse authors') as
Clipwise models.

``reading`` reads a file without running code in it, ``layouts`` knows where each source keeps each tensor,
``sources`` holds what each source's checkpoints were trained as and places tensors by role.
"""

from clipwise.models.imports.reading import CheckpointImportError, read_state_dict
from clipwise.models.imports.sources import (
    SOURCES,
    ImportedCheckpoint,
    Placement,
    Recipe,
    Source,
    import_checkpoint,
    import_version,
    place_by_name,
    place_by_role,
    source_named,
)

__all__ = [
    "SOURCES",
    "CheckpointImportError",
    "ImportedCheckpoint",
    "Placement",
    "Recipe",
    "Source",
    "import_checkpoint",
    "import_version",
    "place_by_name",
    "place_by_role",
    "read_state_dict",
    "source_named",
]
