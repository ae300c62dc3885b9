"""The benchmarks' target checks: a target whose rows were not produced is NOT MEASURED, and a figure past its
bound is missed (``benchmarks/gpu.py``, ``backends.py``, ``decode.py``; each exits with ``adaptive.finish``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import adaptive, backends, decode, gpu, synthetic  # noqa: E402


def test_gpu_targets_need_their_row_and_check_it() -> None:
    other_saving = gpu.Row("adafuse_tsn_r50", "torch-cuda", "random-60%", 0.5, 1.0, 0.4, 0.4)
    (line,) = gpu.missed_targets([other_saving])
    assert line.startswith("NOT MEASURED: adafuse_tsn_r50 torch-cuda random-40%")
    met = gpu.Row("adafuse_tsn_r50", "torch-cuda", "random-40%", 0.7, 1.0, 0.6, 0.6)
    assert gpu.missed_targets([met]) == []
    slower = gpu.Row("adafuse_tsn_r50", "torch-cuda", "random-40%", 1.1, 1.0, 0.6, 0.6)
    assert len(gpu.missed_targets([slower])) == 2  # slower than dense, and past 1.2 × executed
    assert adaptive.finish(gpu.missed_targets([other_saving])) == 1


def test_backends_need_every_static_preset_and_no_backend_above_sgemm() -> None:
    every = {preset: (2.0, 40.0, "onnxruntime") for preset in backends.STATIC}
    assert backends.static_missed(every, 50.0) == []
    missed = backends.static_missed({**every, "tsn_r50": (2.0, 60.0, "openvino")}, 50.0)
    assert missed == ["tsn_r50: openvino at 60.0 GMAC/s, above the sgemm peak 50.0 GMAC/s"]
    assert backends.static_missed({k: v for k, v in every.items() if k != "x3d_s"}, 50.0) == [
        "NOT MEASURED: x3d_s (--static x3d_s)"
    ]


def test_backends_need_random_and_fixed_adaptive_rows_on_each_backend() -> None:
    rows = [
        adaptive.Row(preset, backend, kind, "-40%", 0.6, 0.6, 0.8, 8.0, 10.0)
        for preset, names in backends.ADAPTIVE.items()
        for backend in names
        for kind in ("random", "fixed")
    ]
    assert backends.adaptive_missed(rows) == []
    (line,) = backends.adaptive_missed(rows[1:])
    assert line.startswith(f"NOT MEASURED: {rows[0].model} random on {rows[0].backend}")
    rows[0].time_ratio = 1.2
    assert backends.adaptive_missed(rows) == [f"{rows[0].model} {rows[0].backend} random -40%: time ratio 1.200"]


def test_decode_targets_per_clip_and_case() -> None:
    sizes = [f"{width}x{height}" for width, height in decode.SIZES]
    measured = {(size, case): 0.5 for size in sizes for case in decode.TARGETS}
    assert decode.missed_targets(measured) == []
    assert decode.missed_targets({**measured, (sizes[0], "dense"): 1.2}) == [
        f"{sizes[0]} dense: clipwise/2 at 1.20 of torchcodec's best median (≤ 1.0)"
    ]
    quick = {key: ratio for key, ratio in measured.items() if key[0] == sizes[0]}
    missed = decode.missed_targets(quick)
    assert [line.split(",")[0] for line in missed] == [f"NOT MEASURED: {sizes[1]} {case}" for case in decode.TARGETS]


def test_ada3d_targets_need_learned_torch_rows_against_the_backbone() -> None:
    def clip(name: str, policy_ms: float, selection_share: float) -> adaptive.Row:
        return adaptive.Row("ada3d_x", "torch", "learned", name, 0.6, 0.6, 0.7, policy_ms, 10.0, selection_share, 10.0)

    model = {"ada3d_x"}
    assert adaptive.ada3d_targets([], model) == ["NOT MEASURED: ada3d_x learned on torch against its I3D backbone"]
    assert adaptive.ada3d_targets([clip("a", 7.0, 0.1), clip("b", 8.5, 0.1)], model) == []
    (slow_clip,) = adaptive.ada3d_targets([clip("a", 5.0, 0.1), clip("b", 10.5, 0.1)], model)
    assert "worst 1.050 (≤ 1.0)" in slow_clip
    (heavy_selection,) = adaptive.ada3d_targets([clip("a", 7.0, 0.2)], model)
    assert "selection net 20.0% of its time" in heavy_selection


def test_synthetic_claims_are_checked_on_the_models_that_ran() -> None:
    def row(name: str, top1: float, frames: tuple[float, float] = (1, 1), stages: tuple[float, float] = (1, 1)):
        groups = {"static": (frames[0], stages[0]), "temporal": (frames[1], stages[1]), "overall": (1, 1)}
        return name, {
            "title": name.upper(),
            **{g: {"top1": top1, "policy": {"frame_fraction": f, "stage_fraction": s}} for g, (f, s) in groups.items()},
        }

    rows = dict([row("i3d", 0.60), row("ada3d", 0.59, frames=(0.5, 0.75), stages=(0.4, 0.5))])
    claims = synthetic.check_claims(rows)
    assert [claim.holds for claim in claims] == [True, True]  # within 2 points; 25 points fewer frames
    assert "frames kept 50% vs 75%" in claims[1].evidence
    rows = dict([row("i3d", 0.60), row("ada3d", 0.57, frames=(0.6, 0.75), stages=(0.4, 0.5))])
    assert [claim.holds for claim in synthetic.check_claims(rows)] == [False, False]
    assert synthetic.check_claims(dict([row("i3d", 0.6)])) == []  # no claim of models that did not run
