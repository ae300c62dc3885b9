"""The sources Clipwise imports from, what their checkpoints were trained as, and putting tensors in place.

A ``Source`` is a code base's checkpoint format: the entry holding the state dict, the layout of its names
(``clipwise.models.imports.layouts``) and, per Clipwise family, a ``Recipe``: the config fields that build the network
its
checkpoints were trained as and the clips they were trained and tested on, which the manifest records.

Recipes (from the sources' Kinetics-400 configs; PyTorchVideo's hub models are PySlowFast's):

* PySlowFast / PyTorchVideo, I3D and Slow-only (``SLOW_8x8_R50``, ``I3D_8x8_R50``): 8 frames every 8th, 224²
  training crops, test short side 256; the ``i3d`` arch pools 2×1×1 after res2. X3D (``X3D_S/M/L``): the presets'
  clips (13×160² every 6th, 16×224² and 16×312² every 5th), short side = crop (their 1-crop test);
  PyTorchVideo's X3D lacks one shortcut BN (``strided_shortcut_norm``). Mean 0.45, std 0.225 (``DATA.MEAN/STD``).
* mmaction2: TSN / TSM ``1x1x8`` (8 segments), I3D ``32x2x1`` (32 frames every 2nd; conv1 and pool1 stride 2 in
  time, pool2 after layer1), Slow-only ``8x8x1``; resize to short side 256, centre crop 224 (``val_pipeline``).
  Its mean / std are in 0–255 pixel units (123.675, 116.28, 103.53 / 58.395, 57.12, 57.375): divided by 255
  here, Clipwise's 0–1 convention (ImageNet's 0.485, 0.456, 0.406 / 0.229, 0.224, 0.225).
* torchvision's ImageNet ResNets as a TSN (1000 ImageNet classes, a frame at a time): 8 segments, short side
  256, crop 224, ImageNet mean / std.
* the AdaFuse authors' Something-Something V1 checkpoints (``zz_eval.sh``, ``ops/models_gate.py``): 8 segments,
  crop 224 of short side 256, ImageNet mean / std, the per-channel policy (``structure="channel"``, one decision
  per channel). Their three logits per channel are ordered [skip, reuse, keep] (``fuse_out_with_mask`` keeps
  with ``mask[..., -1]`` and reuses with ``mask[..., -2]``), Clipwise's [keep, reuse, skip]: the rows of each
  policy net's last FC are reordered. Their shared policy FCs (``--shared_policy_net``) are stored under every
  block and once more under ``gate_fc{0,1}s``: each such copy must equal the blocks' of its dimensions, and a
  preset that ties its FCs takes only a file whose FCs are shared. Their blocks shift ``x`` before both conv1
  and ``downsample0(x)`` (``ops/batenet.py``, ``Bottleneck.forward``): the shortcut's projection reads the
  shifted input, so the recipe sets ``shift_shortcut`` (a no-op without the shift: their TSN). Their TSM files
  import as ``adafuse_tsm_r50``, TSM-Last (``--enabled_stages 3 --gate_hidden_dim 1024``, unshared FCs) as
  ``adafuse_tsm_last_r50``.

Test-time crops equal the training crops: there the sources' fixed-size head pools (PySlowFast, PyTorchVideo)
cover the whole feature map, so Clipwise's global average pool computes exactly what they compute.

``place_by_role`` puts a source state dict's tensors into a model by role: a tensor goes where the source's name
for the role of a model tensor is that tensor's name, converted to the model's dtype; a 1×1(×1) convolution's
kernel fills a linear layer (X3D's ``lin_5`` / ``post_conv``). ``import_checkpoint`` demands a perfect fit (BN
``num_batches_tracked`` counters excepted: they do not change inference); training's ``--init`` takes what fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

import clipwise.models.imports.layouts as layouts
from clipwise.models.base import IMAGENET_MEAN, IMAGENET_STD, ClipModelConfig, Preprocessing, VideoClassifier
from clipwise.models.checkpoint import SourceCheckpoint, save_version, sha256_file
from clipwise.models.gating_partitions import KEEP, REUSE, SKIP
from clipwise.models.imports.reading import CheckpointImportError, listed, read_state_dict
from clipwise.models.registry import create_model, get_preset

Triple = tuple[float, float, float]
KINETICS_MEAN: Triple = (0.45, 0.45, 0.45)  # PySlowFast's DATA.MEAN, PyTorchVideo's hub transforms
KINETICS_STD: Triple = (0.225, 0.225, 0.225)
MMACTION2_MEAN_255: Triple = (123.675, 116.28, 103.53)  # mmaction2's data_preprocessor, 0–255 pixel units
MMACTION2_STD_255: Triple = (58.395, 57.12, 57.375)
COUNTERS = ("num_batches_tracked",)  # BN training counters: absent from some files, no effect on inference


def from_255(values: Triple) -> Triple:
    """0–255 pixel units (mmaction2) in Clipwise's 0–1 convention."""
    return tuple(round(value / 255, 6) for value in values)


@dataclass(frozen=True)
class Recipe:
    """What a source's checkpoints of one family are: config fields of the network they were trained as, the
    test short side as a multiple of the crop, and the normalisation (0–1 convention)."""

    config: Mapping[str, Any]
    short_side: float
    mean: Triple
    std: Triple

    def preprocessing(self, model: VideoClassifier) -> Preprocessing:
        """``model``'s sampling, frames, stride and crop with this recipe's short side and normalisation."""
        own = model.preprocessing()
        return replace(own, short_side=round(own.crop_size * self.short_side), mean=self.mean, std=self.std)


def _slowfast_resnet(config: ClipModelConfig) -> Recipe:
    i3d = config.stem_temporal_kernel > 1
    fields = {"frames": 8, "sample_stride": 8, "size": 224, "res2_temporal_pool": i3d}
    return Recipe(fields, 256 / 224, KINETICS_MEAN, KINETICS_STD)


def _slowfast_x3d(config: ClipModelConfig) -> Recipe:
    return Recipe({}, 1.0, KINETICS_MEAN, KINETICS_STD)


def _pytorchvideo_x3d(config: ClipModelConfig) -> Recipe:
    return replace(_slowfast_x3d(config), config={"strided_shortcut_norm": False})


MMACTION2_MEAN, MMACTION2_STD = from_255(MMACTION2_MEAN_255), from_255(MMACTION2_STD_255)
MMACTION2_I3D = {"frames": 32, "sample_stride": 2, "stem_temporal_stride": 2, "stem_pool_temporal_stride": 2}


def _mmaction2_tsn(config: ClipModelConfig) -> Recipe:
    return Recipe({"frames": 8, "size": 224}, 256 / 224, MMACTION2_MEAN, MMACTION2_STD)


def _mmaction2_resnet3d(config: ClipModelConfig) -> Recipe:
    i3d = config.stem_temporal_kernel > 1
    fields = {**MMACTION2_I3D, "res2_temporal_pool": True} if i3d else {"frames": 8, "sample_stride": 8}
    return Recipe({**fields, "size": 224}, 256 / 224, MMACTION2_MEAN, MMACTION2_STD)


def _torchvision_tsn(config: ClipModelConfig) -> Recipe:
    return Recipe({"size": 224}, 256 / 224, IMAGENET_MEAN, IMAGENET_STD)


def _adafuse(config: ClipModelConfig) -> Recipe:
    fields = {"frames": 8, "size": 224, "structure": "channel", "decision_group": 1, "shift_shortcut": True}
    return Recipe(fields, 256 / 224, IMAGENET_MEAN, IMAGENET_STD)


Adapter = Callable[[str, torch.Tensor], torch.Tensor]
"""(model key, the source's tensor for it) → the tensor in the model's convention."""
Preparer = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
"""(the file's tensors, the model) → the tensors to place, once the source's own redundancy is checked away."""


@dataclass(frozen=True)
class Source:
    """A checkpoint format: the entry holding the state dict, its names, per family the recipe, and where the
    format needs them, a conversion of tensors (``adapt``) and a check of the file before placing (``prepare``)."""

    name: str
    container: str | None
    layout: layouts.Layout
    recipes: Mapping[str, Callable[[ClipModelConfig], Recipe]]
    suffix: str  # the usual file name suffix
    adapt: Adapter | None = None
    prepare: Preparer | None = None


AUTHORS_ACTIONS = ("skip", "reuse", "keep")  # the AdaFuse authors' order of a channel's logits
CLIPWISE_ACTIONS = {KEEP: "keep", REUSE: "reuse", SKIP: "skip"}
POLICY_OUTPUT = ("policy.fc_out.weight", "policy.fc_out.bias")
SHARED_FCS = re.compile(rf"{re.escape(layouts.ADAFUSE_RESNET)}\.gate_fc(?P<fc>[01])s\.(?P<dims>\d+_\d+)\.(?P<leaf>\w+)")
BLOCK_FCS = re.compile(r"(?P<block>.+)\.policy_net\.gate_fc(?P<fc>[01])\.(?P<leaf>\w+)")


def adafuse_actions(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A policy net's last FC with its three rows per channel in Clipwise's order of actions."""
    if not key.endswith(POLICY_OUTPUT):
        return tensor
    order = [AUTHORS_ACTIONS.index(CLIPWISE_ACTIONS[action]) for action in sorted(CLIPWISE_ACTIONS)]
    return tensor.unflatten(0, (-1, len(order)))[:, order].flatten(0, 1)


def adafuse_prepare(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors less its shared policy FCs (``gate_fc{0,1}s.<in>_<out>``), each checked equal to the
    FCs of every block of its dimensions; refused where the model ties FCs the file does not share, and where a
    TSM's shortcut projection would read the unshifted input (``shift_shortcut`` overridden off): their blocks
    feed it the shifted one, so such a model would answer differently."""
    if getattr(model.config, "temporal_shift", False) and not model.config.shift_shortcut:
        raise CheckpointImportError(
            "the AdaFuse authors' TSM blocks feed the shortcut's downsample conv the temporally shifted input: "
            "import their TSM files with shift_shortcut true (the recipe's), not overridden off"
        )
    shared = {key: match for key in state if (match := SHARED_FCS.fullmatch(key))}
    copies: dict[str, list[str]] = {key: [] for key in shared}
    for key in state:
        if (match := BLOCK_FCS.fullmatch(key)) and f"{match['block']}.policy_net.gate_fc0.weight" in state:
            dims = _policy_dims(state, match["block"])
            copy = f"{layouts.ADAFUSE_RESNET}.gate_fc{match['fc']}s.{dims}.{match['leaf']}"
            if copy in copies:
                copies[copy].append(key)
    unequal = sorted(f"{key} ≠ {copy}" for copy, keys in copies.items() for key in keys if not _same(state, copy, key))
    if unequal:
        raise CheckpointImportError(f"shared policy FCs that differ from a block's: {listed(unequal)}")
    unused = sorted(key for key, keys in copies.items() if not keys)
    if unused:
        raise CheckpointImportError(f"shared policy FCs no block of their dimensions uses: {listed(unused)}")
    if getattr(model.config, "share_policy_fcs", False) and not shared and any(BLOCK_FCS.fullmatch(k) for k in state):
        raise CheckpointImportError(
            "the file's policy FCs are per block, the preset's shared: import with --model-args "
            "'{\"share_policy_fcs\": false}'"
        )
    return {key: tensor for key, tensor in state.items() if key not in shared}


def _policy_dims(state: Mapping[str, torch.Tensor], block: str) -> str:
    """The authors' key of a block's policy FCs: their input and output widths."""
    inputs = state[f"{block}.policy_net.gate_fc0.weight"].shape[1]
    outputs = state.get(f"{block}.policy_net.gate_fc1.weight", torch.empty(0)).shape[0]
    return f"{inputs}_{outputs}"


def _same(state: Mapping[str, torch.Tensor], key: str, other: str) -> bool:
    return state[key].shape == state[other].shape and torch.equal(state[key], state[other])


SOURCES = {
    source.name: source
    for source in (
        Source(
            "pytorchvideo",
            "model_state",
            layouts.pytorchvideo,
            {"resnet3d": _slowfast_resnet, "x3d": _pytorchvideo_x3d},
            ".pyth",
        ),
        Source(
            "pyslowfast",
            "model_state",
            layouts.pyslowfast,
            {"resnet3d": _slowfast_resnet, "x3d": _slowfast_x3d},
            ".pyth",
        ),
        Source(
            "mmaction2",
            "state_dict",
            layouts.mmaction2,
            {"tsn": _mmaction2_tsn, "resnet3d": _mmaction2_resnet3d},
            ".pth",
        ),
        Source("torchvision", None, layouts.torchvision, {"tsn": _torchvision_tsn}, ".pth"),
        Source(
            "adafuse",
            "state_dict",
            layouts.adafuse,
            {"adafuse": _adafuse},
            ".pth.tar",
            adapt=adafuse_actions,
            prepare=adafuse_prepare,
        ),
    )
}


def source_named(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise CheckpointImportError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None


@dataclass
class Placement:
    """A source state dict's tensors placed in a model by role (model key → tensor), and what did not fit."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # model tensors the source has no tensor for
    misshaped: list[str] = field(default_factory=list)  # model tensors whose source tensor has another shape
    unused: list[str] = field(default_factory=list)  # source tensors no model tensor takes

    def problems(self) -> list[str]:
        """One line per kind of misfit, naming the tensors."""
        kinds = (
            ("missing from the file", self.missing),
            ("of another shape in the file", self.misshaped),
            ("in the file without a place in the model", self.unused),
        )
        return [f"{title} ({len(names)}): {listed(names)}" for title, names in kinds if names]


def place_by_role(
    model: nn.Module, state: Mapping[str, torch.Tensor], layout: layouts.Layout, adapt: Adapter | None = None
) -> Placement:
    """Put ``state``'s tensors where ``layout`` says their roles are in ``model``, converted by ``adapt``."""
    placement, taken = Placement(), set()
    holder_roles = layouts.roles(model)
    for key, reference in model.state_dict().items():
        holder, _, leaf = key.rpartition(".")
        role = holder_roles[holder]
        module = layout(*role) if role else None
        source_key = f"{module}.{leaf}" if module else None
        if source_key not in state:
            if leaf not in COUNTERS:
                placement.missing.append(f"{key} ← {source_key}" if source_key else f"{key} (no counterpart)")
            continue
        taken.add(source_key)
        tensor = _fitted(adapt(key, state[source_key]) if adapt else state[source_key], reference)
        if tensor is None:
            placement.misshaped.append(f"{key} {list(reference.shape)} ← {source_key} {list(state[source_key].shape)}")
        else:
            placement.tensors[key] = tensor
    placement.unused = sorted(set(state) - taken)
    return placement


def place_by_name(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Placement:
    """Put a Clipwise version's tensors where their names are in ``model``: directly, or under the submodule that
    takes the most of them (an I3D's weights into an Ada3D's ``backbone``); shapes must be equal."""
    target = model.state_dict()
    prefixes = [""] + [f"{name}." for name, _ in model.named_modules() if name]
    prefix = max(prefixes, key=lambda candidate: sum(candidate + key in target for key in state))
    placement = Placement()
    for key, tensor in state.items():
        name = prefix + key
        if name not in target:
            placement.unused.append(key)
        elif target[name].shape != tensor.shape:
            placement.misshaped.append(f"{name} {list(target[name].shape)} ← {key} {list(tensor.shape)}")
        else:
            placement.tensors[name] = tensor
    return placement


def _fitted(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` in ``reference``'s shape and dtype: as it is, or a 1×1(×1) conv kernel as a linear weight."""
    shape = reference.shape
    if tensor.shape != shape:
        pointwise_conv = tensor.dim() > len(shape) == 2 and tensor.shape[:2] == shape
        if not (pointwise_conv and all(size == 1 for size in tensor.shape[2:])):
            return None
        tensor = tensor.reshape(shape)
    return tensor.to(reference.dtype)


@dataclass
class ImportedCheckpoint:
    """A source checkpoint as a Clipwise model, with the clips it expects and where it came from."""

    model: VideoClassifier
    preprocessing: Preprocessing
    source: SourceCheckpoint
    tensors: int  # tensors taken from the file


def import_checkpoint(
    source: str,
    checkpoint: Path,
    architecture: str,
    labels: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
) -> ImportedCheckpoint:
    """The model ``architecture`` (a preset, with the source's recipe, the labels' class count and ``overrides``
    of its config) holding every tensor of ``checkpoint``; any tensor missing, misshaped or left over is an error."""
    layout_source = source_named(source)
    recipe = _recipe(layout_source, architecture)
    state = read_state_dict(checkpoint, layout_source.container)
    try:
        model = create_model(architecture, **{**recipe.config, "num_classes": len(labels), **(overrides or {})})
    except (TypeError, ValueError) as error:
        raise CheckpointImportError(str(error)) from None
    if layout_source.prepare is not None:
        state = layout_source.prepare(state, model)
    placement = place_by_role(model, state, layout_source.layout, layout_source.adapt)
    problems = placement.problems()
    if problems:
        hint = [] if placement.tensors else [f"nothing fits: is it a {source} checkpoint of {architecture}?"]
        raise CheckpointImportError(
            "\n  ".join([f"{checkpoint} does not fit {architecture} laid out as {source}:", *problems, *hint])
        )
    model.load_state_dict(placement.tensors, strict=False)  # all but counters the file lacks (checked above)
    model.eval()
    provenance = SourceCheckpoint(format=source, file=checkpoint.name, sha256=sha256_file(checkpoint))
    return ImportedCheckpoint(model, recipe.preprocessing(model), provenance, len(placement.tensors))


def _recipe(source: Source, architecture: str) -> Recipe:
    """The source's recipe for the preset ``architecture``'s family."""
    try:
        preset = get_preset(architecture)
    except KeyError as error:
        raise CheckpointImportError(error.args[0]) from None
    family = preset.model_cls.family
    if family not in source.recipes:
        raise CheckpointImportError(
            f"{source.name} checkpoints import into presets of the families {', '.join(source.recipes)}; "
            f"{architecture} is a {family}"
        )
    return source.recipes[family](preset.config)


def import_version(
    source: str,
    checkpoint: Path,
    architecture: str,
    labels: Sequence[str],
    out: Path,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Import ``checkpoint`` (``import_checkpoint``) and write it as the next version of ``out`` (``REPO/NAME``)."""
    imported = import_checkpoint(source, checkpoint, architecture, labels, overrides)
    return save_version(
        imported.model,
        list(labels),
        out.parent,
        out.name,
        trained=True,
        preprocessing=imported.preprocessing,
        source=imported.source,
    )
