"""Label lists shipped with Clipwise, one class name a line in class-index order.

``kinetics400.txt``: the 400 Kinetics-400 classes in the alphabetical order of the dataset's own list, the order
PyTorchVideo, PySlowFast and mmaction2 train their classifiers in (index 0 ``abseiling`` … 399 ``zumba``).
"""

from __future__ import annotations

from importlib import resources

BUNDLED = ("kinetics400",)


def bundled_labels(name: str) -> list[str]:
    """The class names of the shipped list ``name`` (one of ``BUNDLED``)."""
    if name not in BUNDLED:
        raise ValueError(f"no bundled label list {name!r}; bundled: {', '.join(BUNDLED)}")
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]
