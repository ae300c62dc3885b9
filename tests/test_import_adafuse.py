"""``clipwise import --source adafuse``: the AdaFuse authors' checkpoints, round-tripped through their layout.

No checkpoint of theirs can be downloaded here, so ``authors_checkpoint`` writes random weights (BN statistics
included, so that every decision and every branch shows) under the names their code gives its modules
(``mengyuest/AdaFuse``, ``ops/batenet.py``, ``ops/models_gate.py``, ``main_gate.py``), and ``authors_logits``
computes what their ``TSN_Gate`` computes in eval mode, written out from their code with plain torch
functionals: the Bottleneck with its policy net between conv1 and conv2, logits per channel ordered [skip,
reuse, keep], the fused map ``out·keep + previous frame's out·reuse``, and with ``--shift`` the temporal shift
of ``x`` before conv1, the policy net and ``downsample0`` — with the argmax in place of their Gumbel sample.
Imported AdaFuse-TSN, AdaFuse-TSM and TSM-Last versions must give the same logits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipwise.cli import main
from clipwise.models.checkpoint import load_version, read_manifest
from clipwise.models.imports import CheckpointImportError, import_checkpoint
from clipwise.models.registry import create_model

ROOT = "module.base_model"
CLASSES = 7
LABELS = [f"action {index}" for index in range(CLASSES)]
FRAMES, SIZE = 8, 64


@dataclass(frozen=True)
class AuthorsNet:
    """What the authors' flags make of a ResNet-50-shaped BateNet, scaled down as the ``_tiny`` presets are."""

    preset: str
    width: int = 16  # their 64
    layers: tuple[int, ...] = (2, 2, 2, 2)  # their 3, 4, 6, 3
    gated_stages: tuple[int, ...] = (1, 2, 3, 4)  # --enabled_stages (0-based there)
    hidden_quota: int = 3072  # --hidden_quota (196608 there)
    hidden_dim: int = 0  # --gate_hidden_dim, used without a quota (TSM-Last: 1024 there)
    shared: bool = True  # --shared_policy_net
    shift: bool = False  # --shift (with their default --shift_div 8)

    def hidden(self, planes: int) -> int:
        return self.hidden_quota // planes if self.hidden_quota > 0 else self.hidden_dim

    def blocks(self) -> Iterator[tuple[str, int, int, int, bool]]:
        """(key prefix, input channels, planes, stride, gated) of every Bottleneck in order."""
        inplanes = self.width
        for stage, count in enumerate(self.layers, start=1):
            planes = self.width * 2 ** (stage - 1)
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                yield f"{ROOT}.layer{stage}.{index}", inplanes, planes, stride, stage in self.gated_stages
                inplanes = planes * 4


TSN = AuthorsNet("adafuse_tsn_r50_tiny")
TSM = AuthorsNet("adafuse_tsm_r50_tiny", shift=True)
TSM_LAST = AuthorsNet(
    "adafuse_tsm_last_r50_tiny", gated_stages=(4,), hidden_quota=-1, hidden_dim=64, shared=False, shift=True
)


def _bn(state: dict, prefix: str, channels: int, generator: torch.Generator) -> None:
    state[f"{prefix}.weight"] = 1 + 0.2 * torch.randn(channels, generator=generator)
    state[f"{prefix}.bias"] = 0.2 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_mean"] = 0.2 * torch.randn(channels, generator=generator)
    state[f"{prefix}.running_var"] = 0.5 + torch.rand(channels, generator=generator)
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)


def _weight(state: dict, key: str, shape: tuple[int, ...], generator: torch.Generator, bias: bool = False) -> None:
    fan_in = torch.Size(shape[1:]).numel()
    state[f"{key}.weight"] = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
    if bias:
        state[f"{key}.bias"] = 0.1 * torch.randn(shape[0], generator=generator)


def authors_checkpoint(net: AuthorsNet, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights named as ``DataParallel(TSN_Gate).state_dict()`` names them."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _weight(state, f"{ROOT}.conv1", (net.width, 3, 7, 7), generator)
    _bn(state, f"{ROOT}.bn1", net.width, generator)
    for prefix, inplanes, planes, _, gated in net.blocks():
        _weight(state, f"{prefix}.conv1", (planes, inplanes, 1, 1), generator)
        _bn(state, f"{prefix}.bn1", planes, generator)
        _weight(state, f"{prefix}.conv2", (planes, planes, 3, 3), generator)
        _bn(state, f"{prefix}.bn2", planes, generator)
        _weight(state, f"{prefix}.conv3", (planes * 4, planes, 1, 1), generator)
        _bn(state, f"{prefix}.bn3", planes * 4, generator)
        if prefix.endswith(".0"):
            _weight(state, f"{prefix}.downsample0", (planes * 4, inplanes, 1, 1), generator)
            _bn(state, f"{prefix}.downsample1", planes * 4, generator)
        if gated:
            _policy(state, net, prefix, inplanes, planes, generator)
    _weight(state, "module.new_fc", (CLASSES, net.width * 8 * 4), generator, bias=True)
    return state


def _policy(state: dict, net: AuthorsNet, prefix: str, inplanes: int, planes: int, generator: torch.Generator) -> None:
    """A block's policy net; shared FCs are stored under ``gate_fc{0,1}s.<in>_<out>`` and under every block."""
    hidden, dims = net.hidden(planes), f"{2 * inplanes}_{3 * planes}"
    for fc, shape in (("0", (hidden, 2 * inplanes)), ("1", (3 * planes, hidden))):
        shared = f"{ROOT}.gate_fc{fc}s.{dims}"
        if net.shared and f"{shared}.weight" not in state:
            _weight(state, shared, shape, generator, bias=True)
        source = shared if net.shared else None
        if source is None:
            _weight(state, f"{prefix}.policy_net.gate_fc{fc}", shape, generator, bias=True)
        else:
            for leaf in ("weight", "bias"):
                state[f"{prefix}.policy_net.gate_fc{fc}.{leaf}"] = state[f"{source}.{leaf}"]
    _bn(state, f"{prefix}.policy_net.gate_bn", hidden, generator)


# ---------------------------------------------------------------- their forward, written out


def _conv_bn(x: torch.Tensor, state: dict, conv: str, bn: str, stride: int = 1, padding: int = 0) -> torch.Tensor:
    out = F.conv2d(x, state[f"{conv}.weight"], stride=stride, padding=padding)
    return F.batch_norm(
        out, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"], state[f"{bn}.bias"]
    )


def _shift(x: torch.Tensor, fold_div: int = 8) -> torch.Tensor:
    """Their ``shift``: channels [0, c/8) take frame t+1, [c/8, c/4) frame t−1, zeros at the clip ends."""
    clips = x.view(-1, FRAMES, *x.shape[1:])
    fold = x.shape[1] // fold_div
    out = torch.zeros_like(clips)
    out[:, :-1, :fold] = clips[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = clips[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = clips[:, :, 2 * fold :]
    return out.view_as(x)


def _previous_frame(x: torch.Tensor) -> torch.Tensor:
    clips = x.view(-1, FRAMES, *x.shape[1:])
    return torch.cat([torch.zeros_like(clips[:, :1]), clips[:, :-1]], 1).view_as(x)


def _mask(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    """``PolicyBlock.forward`` with the argmax for the Gumbel sample: (N·T, C, 3) one-hot, [skip, reuse, keep]."""
    pooled = x.mean((2, 3))
    hidden = F.linear(torch.cat([_previous_frame(pooled), pooled], -1), *_fc(state, f"{prefix}.policy_net.gate_fc0"))
    bn = f"{prefix}.policy_net.gate_bn"
    hidden = F.batch_norm(
        hidden, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"], state[f"{bn}.bias"]
    )
    logits = F.linear(F.relu(hidden), *_fc(state, f"{prefix}.policy_net.gate_fc1")).view(len(x), -1, 3)
    return F.one_hot(logits.argmax(-1), 3).to(x.dtype)


def _fc(state: dict, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    return state[f"{key}.weight"], state[f"{key}.bias"]


def _bottleneck(x: torch.Tensor, state: dict, block: tuple, decisions: list, shift: bool) -> torch.Tensor:
    prefix, _, _, stride, gated = block
    identity = x
    if shift:
        x = _shift(x)
    out = F.relu(_conv_bn(x, state, f"{prefix}.conv1", f"{prefix}.bn1"))
    if gated:
        mask = _mask(x, state, prefix)
        decisions.append(mask)
        out = out * mask[..., 2, None, None] + _previous_frame(out) * mask[..., 1, None, None]
    out = F.relu(_conv_bn(out, state, f"{prefix}.conv2", f"{prefix}.bn2", stride, 1))
    out = _conv_bn(out, state, f"{prefix}.conv3", f"{prefix}.bn3")
    if f"{prefix}.downsample0.weight" in state:
        identity = _conv_bn(x, state, f"{prefix}.downsample0", f"{prefix}.downsample1", stride)
    return F.relu(out + identity)


def authors_logits(state: dict, net: AuthorsNet, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TSN_Gate.forward`` in eval mode with argmax decisions: (N, classes) logits, and the count of each
    decision [skip, reuse, keep] over every gated (frame, channel)."""
    x = clips.transpose(1, 2).flatten(0, 1)  # (N·T, 3, H, W)
    x = F.max_pool2d(F.relu(_conv_bn(x, state, f"{ROOT}.conv1", f"{ROOT}.bn1", 2, 3)), 3, 2, 1)
    decisions: list[torch.Tensor] = []
    for block in net.blocks():
        x = _bottleneck(x, state, block, decisions, net.shift)
    frame_logits = F.linear(x.mean((2, 3)), *_fc(state, "module.new_fc"))
    counts = torch.stack([mask.sum((0, 1)) for mask in decisions]).sum(0)
    return frame_logits.view(len(clips), FRAMES, -1).mean(1), counts


def write(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save({"state_dict": state}, path)
    return path


def clips(count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("net", [TSN, TSM, TSM_LAST], ids=["tsn", "tsm", "tsm_last"])
def test_an_authors_checkpoint_gives_their_logits(net: AuthorsNet, tmp_path: Path) -> None:
    state = authors_checkpoint(net)
    imported = import_checkpoint("adafuse", write(state, tmp_path / "ckpt.best.pth.tar"), net.preset, LABELS)
    assert imported.tensors == len([key for key in state if ".gate_fc0s." not in key and ".gate_fc1s." not in key])
    values = clips()
    expected, counts = authors_logits(state, net, values)
    assert (counts > 0).all(), f"a decision never taken ([skip, reuse, keep]: {counts.tolist()}): weaker test"
    with torch.no_grad():
        executed = imported.model(values)
        with imported.model.masked_execution():  # the module-by-module path training takes
            masked = imported.model(values)
    torch.testing.assert_close(executed, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(masked, expected, rtol=1e-4, atol=1e-4)
    assert imported.model.config.structure == "channel"
    assert (imported.preprocessing.crop_size, imported.preprocessing.short_side) == (224, 256)


def test_their_tsm_is_refused_with_an_unshifted_shortcut(tmp_path: Path) -> None:
    path = write(authors_checkpoint(TSM), tmp_path / "tsm.pth.tar")
    with pytest.raises(CheckpointImportError, match="shifted input"):
        import_checkpoint("adafuse", path, TSM.preset, LABELS, overrides={"shift_shortcut": False})


@pytest.mark.parametrize("preset", ["tsm_r50_tiny", "tsm_r18_tiny", "adafuse_tsm_r50_tiny"])
def test_shift_shortcut_is_off_by_default_and_changes_the_answer_when_set(preset: str) -> None:
    torch.manual_seed(0)
    default, shifted = create_model(preset).eval(), create_model(preset, shift_shortcut=True).eval()
    assert default.config.shift_shortcut is False
    for module in default.modules():  # statistics away from 0 / 1, so the shortcut's input shows in the logits
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    shifted.load_state_dict(default.state_dict())
    values = clips(1)
    with torch.no_grad():
        executed, gap = shifted(values), (default(values) - shifted(values)).abs().max()
    assert gap > 1e-3, f"shift_shortcut=True answers as the default (max |Δ| {gap:.2e})"
    torch.testing.assert_close(shifted(values).detach(), executed, rtol=1e-4, atol=1e-4)  # the module-by-module path


def test_the_command_writes_a_version_that_serves_their_logits(tmp_path: Path) -> None:
    state = authors_checkpoint(TSN, seed=3)
    checkpoint = write(state, tmp_path / "sthv1_adatsn50.pth.tar")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    out = tmp_path / "repository" / "adafuse_sthv1"
    command = ["import", "--source", "adafuse", "--checkpoint", str(checkpoint), "--architecture", TSN.preset]
    assert main([*command, "--labels", str(labels), "--out", str(out), "--model-args", '{"size": 64}']) == 0
    manifest = read_manifest(out / "1")
    assert (manifest.labels, manifest.source.format) == (LABELS, "adafuse")
    model = load_version(out.parent, out.name).model
    assert model.config.structure == "channel"  # the paper's per-channel executor
    values = clips(1)
    served = model.execute(values)
    torch.testing.assert_close(served.logits, authors_logits(state, TSN, values)[0], rtol=1e-4, atol=1e-4)
    assert served.policy is not None and served.policy[0].model_dump()  # the per-channel policy is reported


# ---------------------------------------------------------------- misfits, each named


def _refusal(state: dict[str, torch.Tensor], tmp_path: Path, preset: str = TSN.preset) -> str:
    with pytest.raises(CheckpointImportError) as refused:
        import_checkpoint("adafuse", write(state, tmp_path / "bad.pth.tar"), preset, LABELS)
    return str(refused.value)


def test_a_missing_a_misshaped_and_a_spare_tensor_are_each_named(tmp_path: Path) -> None:
    state = authors_checkpoint(TSN)
    del state[f"{ROOT}.layer2.1.bn2.running_var"]
    state["module.new_fc.weight"] = state["module.new_fc.weight"][:, :-1]
    state[f"{ROOT}.layer9.0.conv1.weight"] = torch.zeros(1)
    message = _refusal(state, tmp_path)
    assert f"backbone.layer2.1.bn2.running_var ← {ROOT}.layer2.1.bn2.running_var" in message
    assert f"fc.weight [{CLASSES}, 512] ← module.new_fc.weight [{CLASSES}, 511]" in message
    assert f"{ROOT}.layer9.0.conv1.weight" in message


def test_shared_policy_fcs_must_equal_every_blocks_copy(tmp_path: Path) -> None:
    state = authors_checkpoint(TSN)
    key = f"{ROOT}.layer2.1.policy_net.gate_fc1.bias"
    state[key] = state[key] + 1
    assert f"{key} ≠ {ROOT}.gate_fc1s.256_96.bias" in _refusal(state, tmp_path)
    state = authors_checkpoint(TSN)
    state[f"{ROOT}.gate_fc0s.1_2.weight"] = torch.zeros(2, 1)
    assert f"no block of their dimensions uses: {ROOT}.gate_fc0s.1_2.weight" in _refusal(state, tmp_path)


def test_per_block_fcs_into_a_preset_that_ties_them_are_refused(tmp_path: Path) -> None:
    unshared = authors_checkpoint(AuthorsNet("adafuse_tsn_r50_tiny", shared=False))
    assert "share_policy_fcs" in _refusal(unshared, tmp_path)


def test_the_authors_file_is_read_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth.tar"
    torch.save({"state_dict": authors_checkpoint(TSN), "args": Path("not a tensor")}, path)
    with pytest.raises(CheckpointImportError, match="weights_only"):
        import_checkpoint("adafuse", path, TSN.preset, LABELS)
