"""Export: ONNX graphs of every family against PyTorch on real clips, the gating operators, the ONNX Runtime
backend, frozen fusion strategies and the TensorRT entry point."""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from partitions import executing_partitions
from randomised import assert_branches_live, randomise_batch_norms
from torch import nn

from clipwise.commands import export as export_command
from clipwise.export.calibration import set_union_thresholds
from clipwise.export.frame_convs import fold_frame_convs
from clipwise.export.graphs import FRAMES_KEPT, LOGITS, STAGES_3D
from clipwise.export.onnx import export_version, save_onnx, to_onnx
from clipwise.export.ops import DOMAIN, attach_functions, gated_conv_pair
from clipwise.export.runtime import (
    CLIPS,
    MODEL_FILE,
    BackendUnavailable,
    OnnxBackend,
    OpenVinoBackend,
    TorchBackend,
    interleaved_ms,
    open_backend,
)
from clipwise.export.tensorrt import ENGINE_FILE, expand_gating
from clipwise.models import Execution, VideoClassifier, create_model
from clipwise.models.adafuse import REUSE, SKIP, AdaFuse
from clipwise.models.adafuse import gated_conv_pair as eager_gated_conv_pair
from clipwise.models.checkpoint import LoadedVersion, load_version, save_version
from clipwise.models.folding import FoldedConv
from clipwise.models.fusion import FusionDenseNet, FusionTemplate, format_strategy, parse_strategy
from clipwise.models.resnet3d import is_temporal
from clipwise.video import ClipSpec, load_clips

RELATIVE = 1e-3
STATIC_PRESETS = [
    "tsn_r18_tiny",
    "tsm_r18_tiny",
    "ctnet_r50_tiny",
    "i3d_r50_tiny",
    "slowonly_r50_tiny",
    "x3d_s_tiny",
    "e3d_s_tiny",
    "fusion_densenet121_tiny",
]


def cli(*argv: str) -> int:
    """Run ``clipwise export ...`` through the command module's own parser."""
    parser = argparse.ArgumentParser(prog="clipwise")
    export_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.run(args)


def save(model: VideoClassifier, repository: Path) -> LoadedVersion:
    labels = [f"class_{index}" for index in range(model.config.num_classes)]
    version_dir = save_version(model, labels, repository, model.preset, trained=False)
    return load_version(repository, model.preset, int(version_dir.name))


def real_clips(loaded: LoadedVersion, video: Path, clips: int = 2) -> torch.Tensor:
    spec = ClipSpec(**loaded.manifest.preprocessing.to_dict())
    return load_clips(video.read_bytes(), spec, clips=clips).clips


def assert_live(model: VideoClassifier, clips: torch.Tensor) -> None:
    """Silencing a residual branch of ``model`` moves its logits on ``clips`` by more than the parity tolerance."""
    logits = model.execute(clips).logits
    assert_branches_live(model, lambda m: m.execute(clips).logits, rtol=0, atol=RELATIVE * logits.abs().max())


def assert_same_execution(got: Execution, expected: Execution, *, executed: bool = True) -> None:
    """The same logits, policies and FLOPs; ``executed`` False: the two ran the policy differently (AdaFuse's
    torch executor and its graph choose their computations each by its own calibration), so only what the
    policy asked for must agree."""
    scale = expected.logits.abs().max()
    assert (got.logits - expected.logits).abs().max() <= RELATIVE * scale
    if executed:
        assert got.executed_gflops == pytest.approx(expected.executed_gflops, rel=1e-9)
    assert got.policy_gflops == pytest.approx(expected.policy_gflops, rel=1e-6)
    assert got.full_gflops == pytest.approx(expected.full_gflops, rel=1e-9)
    without_execution = {"executed", "gflops"}  # gflops: compared as policy_gflops, within float error
    assert [p.model_dump(exclude=without_execution) for p in got.policy or []] == [
        p.model_dump(exclude=without_execution) for p in expected.policy or []
    ]


def onnx_model(loaded: LoadedVersion) -> onnx.ModelProto:
    return onnx.load(loaded.path / MODEL_FILE)


def nodes_of(model: onnx.ModelProto, op_type: str, domain: str = "") -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == op_type and node.domain == domain]


def subgraph(node: onnx.NodeProto, attribute: str) -> onnx.GraphProto:
    return next(entry.g for entry in node.attribute if entry.name == attribute)


# --- static families --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", STATIC_PRESETS)
def test_static_family_exports_with_dynamic_batch_and_matches_pytorch_on_real_clips(name, tmp_path, h264_video):
    torch.manual_seed(0)
    loaded = save(randomise_batch_norms(create_model(name)), tmp_path)
    export_version(loaded.path, check=False)  # compared below, on real clips
    model = onnx_model(loaded)
    assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    clips = real_clips(loaded, h264_video)
    got = OnnxBackend(loaded.path / MODEL_FILE, loaded).execute(clips)
    expected = TorchBackend(loaded.model).execute(clips)
    assert_same_execution(got, expected)
    assert_live(loaded.model, clips)
    assert got.executed_gflops == [loaded.manifest.full_gflops] * len(clips)
    assert (got.policy is not None) == name.startswith("fusion")  # a frozen strategy reports itself


def test_export_command_writes_model_onnx_into_the_version_directory(tmp_path, capsys):
    torch.manual_seed(0)
    loaded = save(create_model("x3d_s_tiny"), tmp_path)
    assert cli("onnx", "--model-dir", str(loaded.path.parent)) == 0  # REPO/NAME: its newest version
    assert (loaded.path / MODEL_FILE).is_file()
    assert "checked against PyTorch" in capsys.readouterr().out


def test_export_command_explains_a_path_that_is_no_version(tmp_path):
    with pytest.raises(SystemExit, match="clipwise export onnx: .*no versions|neither"):
        cli("onnx", "--model-dir", str(tmp_path / "missing"))


# --- the ONNX Runtime backend -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tsn_version(tmp_path_factory) -> LoadedVersion:
    """A TSN-R18 with random batch norms, exported; every test comparing runtimes on it can see its branches."""
    torch.manual_seed(0)
    loaded = save(randomise_batch_norms(create_model("tsn_r18_tiny")), tmp_path_factory.mktemp("repository"))
    export_version(loaded.path)
    assert_live(loaded.model, torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(5)))
    return loaded


def test_open_backend_gives_each_backend_behind_one_interface(tsn_version):
    backends = [open_backend(tsn_version, name) for name in ("torch", "onnxruntime", "openvino")]
    assert [backend.name for backend in backends] == ["torch", "onnxruntime", "openvino"]
    assert backends[1].providers[-1] == "CPUExecutionProvider"
    assert backends[2].device == "CPU"
    clips = torch.randn(3, 3, 8, 64, 64)
    expected = backends[0].execute(clips)
    for backend in backends[1:]:
        assert_same_execution(backend.execute(clips), expected)
    with pytest.raises(ValueError, match="unknown backend"):
        open_backend(tsn_version, "tvm")


def test_onnx_backend_refuses_a_graph_exported_from_other_weights(tsn_version, tmp_path):
    torch.manual_seed(1)
    other = save(create_model("tsn_r18_tiny"), tmp_path)
    with pytest.raises(BackendUnavailable, match="clipwise export onnx"):
        OnnxBackend(other.path / MODEL_FILE, other)
    shutil.copy(tsn_version.path / MODEL_FILE, other.path / MODEL_FILE)
    for backend in (OnnxBackend, OpenVinoBackend):
        with pytest.raises(BackendUnavailable, match="other weights"):
            backend(other.path / MODEL_FILE, other)


# --- 3D convs as 2D convs over frames, for ONNX Runtime -----------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "groups", "rewritten"),
    [
        ((1, 1, 1), (1, 1, 1), (0, 0, 0), 1, True),  # pointwise
        ((1, 3, 3), (1, 2, 2), (0, 1, 1), 1, True),  # spatial only, strided
        ((1, 5, 5), (1, 1, 1), (0, 2, 2), 12, True),  # depthwise, one frame deep
        ((3, 3, 3), (1, 2, 2), (1, 1, 1), 12, True),  # depthwise over 3 frames: 3 shifted 2D convs
        ((3, 1, 1), (1, 1, 1), (1, 0, 0), 1, True),  # dense over 3 frames: one 2D conv of the stacked shifts
        ((3, 3, 3), (2, 1, 1), (1, 1, 1), 1, False),  # temporal stride: left as it is
        ((3, 3, 3), (1, 1, 1), (1, 1, 1), 3, False),  # grouped but not depthwise over frames: left
    ],
)
def test_frame_conv_rewrite_computes_the_3d_conv(kernel, stride, padding, groups, rewritten):
    conv = nn.Conv3d(12, 12, kernel, stride, padding, groups=groups, bias=True).eval()
    x = torch.randn(2, 12, 5, 9, 9, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    torch.onnx.export(conv, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    graph = fold_frame_convs(onnx.load_from_string(buffer.getvalue()))
    conv_ranks = {len(next(t for t in graph.graph.initializer if t.name == node.input[1]).dims)
                  for node in graph.graph.node if node.op_type == "Conv"}  # fmt: skip
    assert conv_ranks == ({4} if rewritten else {5})
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = conv(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)


# --- the OpenVINO backend ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tsm_r18_tiny", "x3d_s_tiny", "fusion_densenet121_tiny"])
def test_openvino_runs_the_exported_graph_as_pytorch_on_real_clips(name, tmp_path, h264_video):
    torch.manual_seed(0)
    loaded = save(randomise_batch_norms(create_model(name)), tmp_path)
    export_version(loaded.path, check=False)
    clips = real_clips(loaded, h264_video)
    got = OpenVinoBackend(loaded.path / MODEL_FILE, loaded).execute(clips)
    assert_same_execution(got, TorchBackend(loaded.model).execute(clips))
    assert_live(loaded.model, clips)
    assert (got.policy is not None) == name.startswith("fusion")


def test_openvino_runs_concurrent_jobs_each_on_its_own_infer_request(tsn_version):
    backend = OpenVinoBackend(tsn_version.path / MODEL_FILE, tsn_version, concurrency=3)
    batches = [torch.randn(size, 3, 8, 64, 64, generator=torch.Generator().manual_seed(size)) for size in (1, 2, 3)]
    expected = [TorchBackend(tsn_version.model).execute(clips).logits for clips in batches]
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            got = list(pool.map(lambda clips: backend.execute(clips).logits, batches))
            for logits, reference in zip(got, expected, strict=True):
                assert (logits - reference).abs().max() <= RELATIVE * reference.abs().max()


def test_interleaved_timing_stops_at_its_budget_after_one_round_at_least():
    slow = lambda: time.sleep(0.05)  # noqa: E731
    timings, rounds = interleaved_ms({"a": slow, "b": lambda: None}, rounds=50, budget_s=0.01)
    assert rounds == 1 and timings["a"] >= 50 > timings["b"]
    timings, rounds = interleaved_ms({"a": lambda: None}, rounds=4)
    assert rounds == 4 and set(timings) == {"a"}


# --- the gating operators ---------------------------------------------------------------------------------


def gated_pair_graph(first: FoldedConv, second: FoldedConv, x: torch.Tensor, codes: torch.Tensor) -> bytes:
    """A graph of one ``clipwise::GatedConvPair`` node with inputs ``x`` and ``codes``."""

    class Pair(nn.Module):
        def forward(self, frames, decisions):
            return gated_conv_pair(frames, decisions, first, second)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(
            Pair(),
            (x, codes),
            buffer,
            dynamo=False,
            opset_version=18,
            input_names=["x", "codes"],
            dynamic_axes={"x": {0: "frames"}, "codes": {0: "clips"}},
        )
    return attach_functions(onnx.load_from_string(buffer.getvalue())).SerializeToString()


def random_folded(in_channels: int, out_channels: int, kernel: int, stride: int, seed: int) -> FoldedConv:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) / math.sqrt(in_channels)
    bias = torch.randn(out_channels, generator=generator)
    return FoldedConv(weight, bias, (stride, stride), (kernel // 2, kernel // 2), (1, 1))


@pytest.mark.parametrize("union_below", [0.0, 0.5, 1.01])  # always dense, the default, always the union
def test_gated_conv_pair_operator_computes_what_the_eager_gating_computes(union_below):
    first, second = random_folded(8, 6, 1, 1, seed=0), random_folded(6, 10, 3, 2, seed=1)
    clips, frames = 2, 4
    x = torch.randn(clips * frames, 8, 9, 9, generator=torch.Generator().manual_seed(2))
    codes = torch.randint(0, 3, (clips, frames, 6), generator=torch.Generator().manual_seed(3))
    codes[0, 2] = 2  # a frame that skips every channel: conv2 gives its bias
    codes[1, 1] = 1  # a frame that reuses every channel
    codes[1, 2] = 0  # one that keeps every channel
    codes[:, :, 5] = 2  # a channel no frame needs: the union leaves it out
    codes[:, 0][codes[:, 0] == REUSE] = SKIP  # nothing to reuse before a clip's first frame
    model = onnx.load_from_string(gated_pair_graph(first, second, x, codes))
    set_union_thresholds(model, [(union_below, union_below)])
    graph = model.SerializeToString()
    session = onnxruntime.InferenceSession(graph, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy(), "codes": codes.numpy()})[0]
    with torch.no_grad():
        expected = eager_gated_conv_pair(x, codes, first, second)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    expanded = expand_gating(onnx.load_from_string(graph))  # the form TensorRT parses: standard ops only
    assert all(node.domain != DOMAIN for node in expanded.graph.node) and not expanded.functions
    session = onnxruntime.InferenceSession(expanded.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x.numpy(), "codes": codes.numpy()})[0], got, rtol=1e-6)


def test_gated_conv_pair_everything_skipped_runs_no_convolution():
    first, second = random_folded(8, 6, 1, 1, seed=0), random_folded(6, 10, 3, 2, seed=1)
    x = torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(2))
    codes = torch.full((1, 4, 6), SKIP)
    model = onnx.load_from_string(gated_pair_graph(first, second, x, codes))
    set_union_thresholds(model, [(1.01, 1.01)])  # an empty union is below any threshold
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy(), "codes": codes.numpy()})[0]
    np.testing.assert_allclose(got, second.bias.view(1, -1, 1, 1).expand(4, -1, 5, 5).numpy(), rtol=1e-6)


def test_gated_conv_pair_function_chooses_gathered_or_dense_convolutions():
    function = next(f for f in onnx.load_from_string(gated_pair_graph(*_pair_for_structure())).functions)
    assert function.domain == DOMAIN and function.name == "GatedConvPair"
    assert "Scan" not in [node.op_type for node in function.node]  # no loop over frames
    branches = [node for node in function.node if node.op_type == "If"]
    assert len(branches) == 2  # conv1, then conv2: each runs its union or every channel
    for branch, weight in zip(branches, ("w1", "w2"), strict=True):
        (dense,) = [node for node in subgraph(branch, "else_branch").node if node.op_type == "Conv"]
        assert dense.input[1] == weight  # every channel: the constant weight itself
        (nonempty,) = [node for node in subgraph(branch, "then_branch").node if node.op_type == "If"]
        computing = subgraph(nonempty, "then_branch")
        (conv,) = [node for node in computing.node if node.op_type == "Conv"]
        weight_producer = next(node for node in computing.node if conv.input[1] in node.output)
        assert weight_producer.op_type == "Gather" and weight_producer.input[0] == weight  # gathered by index
        assert "Conv" not in [node.op_type for node in subgraph(nonempty, "else_branch").node]


def _pair_for_structure() -> tuple[FoldedConv, FoldedConv, torch.Tensor, torch.Tensor]:
    first, second = random_folded(4, 4, 1, 1, seed=0), random_folded(4, 4, 3, 1, seed=1)
    return first, second, torch.randn(2, 4, 5, 5), torch.zeros(1, 2, 4, dtype=torch.long)


# --- AdaFuse ----------------------------------------------------------------------------------------------


def decisive_adafuse(name: str, clips: torch.Tensor) -> AdaFuse:
    """An AdaFuse whose policy nets decide by clear margins, with all three decisions in use, and random batch
    norms (statistics measured on ``clips``)."""
    torch.manual_seed(0)
    model = create_model(name)
    for block in model.gated_blocks():
        nn.init.normal_(block.policy.fc_out.weight, std=0.3)
        nn.init.uniform_(block.policy.fc_out.bias, -1, 1)
    return randomise_batch_norms(model, clips)


@pytest.fixture(scope="module", params=["adafuse_tsn_r18_tiny", "adafuse_tsm_r50_tiny"])
def adafuse_version(request, tmp_path_factory, h264_video) -> tuple[LoadedVersion, torch.Tensor]:
    repository = tmp_path_factory.mktemp("repository")
    probe = save(create_model(request.param), repository)
    clips = real_clips(probe, h264_video)
    loaded = save(decisive_adafuse(request.param, clips), repository)
    export_version(loaded.path, check=False)  # the tests compare it on real clips
    assert_live(loaded.model, clips)
    return loaded, clips


def test_adafuse_graph_runs_each_gated_pair_as_one_clipwise_operator(adafuse_version):
    loaded, _ = adafuse_version
    model = onnx_model(loaded)
    blocks = len(loaded.model.gated_blocks())
    assert len(nodes_of(model, "GatedConvPair", DOMAIN)) == blocks
    assert {function.name for function in model.functions} == {"GatedConvPair"}
    convs = sum(isinstance(module, nn.Conv2d) for module in loaded.model.modules())
    assert len(nodes_of(model, "Conv")) == convs - 2 * blocks  # conv1 and conv2 run only inside the operator
    assert [output.name for output in model.graph.output] == [LOGITS, *(f"codes.{i}" for i in range(blocks))]


def test_openvino_refuses_adafuse_rather_than_run_it_densely(adafuse_version):
    loaded, _ = adafuse_version
    with pytest.raises(BackendUnavailable, match="AdaFuse's gated convolutions"):
        OpenVinoBackend(loaded.path / MODEL_FILE, loaded)


def test_adafuse_graph_matches_pytorch_decisions_logits_and_flops_on_real_clips(adafuse_version):
    loaded, clips = adafuse_version
    got = OnnxBackend(loaded.path / MODEL_FILE, loaded).execute(clips)
    expected = loaded.model.execute(clips)
    assert_same_execution(got, expected, executed=False)
    usage = got.policy[0].overall
    assert min(usage.keep, usage.reuse, usage.skip) > 0.05  # every kind of decision was exercised
    assert max(got.policy_gflops) < got.full_gflops


@pytest.mark.parametrize(("union_below", "partition"), [(0.0, "dense"), (1.01, "union")])
def test_adafuse_graph_reports_what_its_nodes_ran(adafuse_version, tmp_path, union_below, partition):
    """Thresholds that make every node run dense, or its union: the graph's executed GFLOPs are then those of
    the torch executor running that partition (which fvcore checks in test_models_adafuse)."""
    loaded, clips = adafuse_version
    graph = onnx_model(loaded)
    set_union_thresholds(graph, [(union_below, union_below)] * len(loaded.model.gated_blocks()))
    got = OnnxBackend(save_onnx(graph, tmp_path / MODEL_FILE), loaded).execute(clips)
    with executing_partitions(partition, partition):
        expected = loaded.model.execute(clips)
    assert_same_execution(got, expected)
    assert {entry for policy in got.policy for entry in policy.executed} == {f"{partition}/{partition}"}


def test_adafuse_graph_exported_under_a_forced_saving_executes_it(adafuse_version, tmp_path):
    loaded, clips = adafuse_version
    model = loaded.model
    with model.force_saving(0.4, reuse=False) as saved:
        proto = to_onnx(model, weights_sha256=loaded.manifest.weights_sha256)
        with executing_partitions("union", "union"):
            expected = model.execute(clips)
    set_union_thresholds(proto, [(1.01, 1.01)] * len(model.gated_blocks()))  # every node runs its union
    got = OnnxBackend(save_onnx(proto, tmp_path / MODEL_FILE), loaded).execute(clips)
    assert_same_execution(got, expected)  # the graph's union is the torch executor's, in whole 16-channel blocks
    assert got.policy_gflops[0] / got.full_gflops == pytest.approx(1 - saved, abs=1e-6)


# --- Ada3D ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ada3d_version(tmp_path_factory, h264_video) -> tuple[LoadedVersion, torch.Tensor]:
    """A decisive Ada3D and a batch of two real clips that it treats differently (the clip and its negative):
    its heads' biases centre their logits between the two, so each keeps what the other drops."""
    repository = tmp_path_factory.mktemp("repository")
    torch.manual_seed(0)
    model = create_model("ada3d_i3d_r50_tiny")
    clip = real_clips(save(model, repository), h264_video, clips=1)
    clips = torch.cat([clip, -clip])
    randomise_batch_norms(model, clips)
    with torch.no_grad():
        for head in (model.selection.frame_head, model.selection.stage_head):
            nn.init.normal_(head.weight, std=0.5)
            nn.init.zeros_(head.bias)
        selection = model.select(clips)
        model.selection.frame_head.bias.sub_(selection.frame_logits.mean(dim=0))
        model.selection.stage_head.bias.sub_(selection.stage_logits.mean(dim=0))
    loaded = save(model, repository)
    export_version(loaded.path, check=False)  # the tests compare it on real clips
    assert_live(loaded.model, clips)
    return loaded, clips


def test_ada3d_graph_selects_with_clipwise_operators_in_a_loop_over_clips(ada3d_version):
    loaded, _ = ada3d_version
    model = onnx_model(loaded)
    assert [node.op_type for node in model.graph.node if node.op_type == "Loop"] == ["Loop"]
    body = subgraph(nodes_of(model, "Loop")[0], "body")
    backbone = loaded.model.backbone
    switchable = sum(
        is_temporal(module) for index in backbone.switchable_stages for module in backbone.trunk[index].modules()
    )
    ops = [(node.domain, node.op_type) for node in body.node]
    assert ops.count((DOMAIN, "SelectFrames")) == 1
    assert ops.count((DOMAIN, "SwitchableConv3d")) == switchable
    assert [output.name for output in model.graph.output] == [LOGITS, FRAMES_KEPT, STAGES_3D]


def test_ada3d_graph_matches_pytorch_plans_logits_and_flops_on_real_clips(ada3d_version):
    loaded, clips = ada3d_version
    got = OnnxBackend(loaded.path / MODEL_FILE, loaded).execute(clips)
    expected = loaded.model.execute(clips)
    assert_same_execution(got, expected)
    first, second = got.policy
    assert first != second  # two plans in one batch: the Loop gives each clip its own shapes
    assert any(len(policy.frames_kept) < clips.shape[2] for policy in got.policy)
    assert not all(all(policy.stages_3d) for policy in got.policy)


def test_ada3d_graph_runs_on_openvino_with_each_clip_s_plan(ada3d_version):
    loaded, clips = ada3d_version
    got = OpenVinoBackend(loaded.path / MODEL_FILE, loaded).execute(clips)
    assert_same_execution(got, loaded.model.execute(clips))
    assert got.policy[0] != got.policy[1]


# --- frozen fusion strategies -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fusion_data(tmp_path_factory) -> Path:
    """A validation list of the synthetic benchmark as ``clipwise data`` writes it, cut to four videos."""
    from clipwise.training.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, clips_per_class=1, seed=0, val_fraction=1.0, cfg=SynthConfig(frames=16, size=80))
    short_list = out / "val_short.txt"
    short_list.write_text("".join((out / "val.txt").read_text().splitlines(keepends=True)[::3]))
    return short_list


@pytest.fixture(scope="module")
def template_version(tmp_path_factory) -> LoadedVersion:
    from clipwise.training.synthetic import CLASSES

    torch.manual_seed(0)
    template = randomise_batch_norms(create_model("fusion_template_densenet121_tiny", num_classes=len(CLASSES)))
    with torch.no_grad():  # learned rates: layers prefer different units, with some uncertainty
        template.drop_logits.copy_(torch.randn(template.drop_logits.shape, generator=torch.Generator().manual_seed(1)))
    repository = tmp_path_factory.mktemp("repository")
    version_dir = save_version(template, list(CLASSES), repository, "fusion_template", trained=False)
    return load_version(repository, "fusion_template", int(version_dir.name))


def test_export_fusion_ranks_strategies_and_freezes_the_best_as_a_servable_version(
    template_version, fusion_data, tmp_path
):
    out = tmp_path / "fusion_frozen"
    args = ["--model-dir", str(template_version.path), "--data", str(fusion_data), "--out", str(out)]
    assert cli("fusion", *args, "--samples", "3", "--workers", "0") == 0
    frozen = load_version(tmp_path, "fusion_frozen")
    report = json.loads((frozen.path / "fusion_ranking.json").read_text())
    ranking = report["ranking"]
    assert {"S", "ST", "S+ST"} <= {entry["strategy"] for entry in ranking}
    assert sum(entry["origin"] == "sampled" for entry in ranking) >= 1
    keys = [(-e["metrics"]["top1"], -e["metrics"]["top5"], e["metrics"]["mean_executed_gflops"]) for e in ranking]
    assert keys == sorted(keys)
    assert isinstance(frozen.model, FusionDenseNet)
    assert frozen.model.config.strategy == ranking[0]["strategy"] == report["frozen"]["strategy"]
    assert frozen.manifest.metrics == pytest.approx(ranking[0]["metrics"])
    template: FusionTemplate = template_version.model
    marginals = torch.tensor([list(layer["path_marginals"].values()) for layer in report["layers"]])
    assert torch.allclose(marginals, template.marginals().detach())
    assert (frozen.path / "fusion_marginals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_fusion_freezes_a_named_strategy_that_runs_as_the_template_did(template_version, fusion_data, tmp_path):
    layers = len(template_version.model.layers)
    named = format_strategy(["S"] * (layers // 2) + ["S+ST"] * (layers - layers // 2))
    out = tmp_path / "named"
    args = ["--model-dir", str(template_version.path), "--data", str(fusion_data), "--out", str(out)]
    assert cli("fusion", *args, "--samples", "0", "--strategy", named, "--workers", "0") == 0
    frozen = load_version(tmp_path, "named")
    assert parse_strategy(frozen.model.config.strategy, layers) == parse_strategy(named, layers)
    clips = torch.randn(1, 3, 16, 64, 64)
    template = template_version.model

    def under_the_strategy(model: FusionTemplate) -> Execution:
        with model.use_strategy(named):
            return model.execute(clips)

    expected = under_the_strategy(template)
    got = frozen.model.execute(clips)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    assert got.executed_gflops == pytest.approx(expected.executed_gflops)
    assert_branches_live(template, lambda model: under_the_strategy(model).logits, rtol=1e-4, atol=1e-5)


# --- TensorRT -----------------------------------------------------------------------------------------------


@pytest.mark.gpu_only
def test_tensorrt_export_builds_an_engine_that_computes_what_onnx_runtime_computes(tsn_version, tmp_path):
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (an NVIDIA GPU with CUDA)")
    version = tmp_path / "version"
    shutil.copytree(tsn_version.path, version)  # the engine is written beside model.onnx
    assert cli("tensorrt", "--model-dir", str(version), "--max-batch", "2") == 0
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((version / ENGINE_FILE).read_bytes())
    context = engine.create_execution_context()
    clips = torch.randn(2, *tuple(engine.get_tensor_shape(CLIPS))[1:])
    context.set_input_shape(CLIPS, tuple(clips.shape))
    on_gpu = clips.cuda().contiguous()
    logits = torch.empty(tuple(context.get_tensor_shape(LOGITS)), device="cuda")
    context.set_tensor_address(CLIPS, on_gpu.data_ptr())
    context.set_tensor_address(LOGITS, logits.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    expected = open_backend(tsn_version, "onnxruntime").execute(clips).logits
    torch.testing.assert_close(logits.cpu(), expected, rtol=1e-2, atol=1e-2)  # TensorRT may use TF32


def test_tensorrt_export_says_clearly_that_tensorrt_is_missing(tsn_version, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, installed or not
    with pytest.raises(SystemExit, match="TensorRT is not installed: `pip install tensorrt`"):
        cli("tensorrt", "--model-dir", str(tsn_version.path))
