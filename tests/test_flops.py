"""The MAC counter itself: hooks, explicit records, nesting, meta-device counting, and fvcore agreement."""

import pytest
import torch
from flops_reference import fvcore_gflops
from torch import nn

from clipwise.models.base import ClipModelConfig, VideoClassifier
from clipwise.models.flops import conv_macs, count_flops, record_macs, track_macs


class TinyNet(VideoClassifier):
    """A 3D conv, a grouped 2D conv over folded frames and a classifier: every counted layer type."""

    def __init__(self, config: ClipModelConfig) -> None:
        super().__init__(config)
        self.conv3d = nn.Conv3d(3, 8, (3, 3, 3), padding=1, bias=False)
        self.bn = nn.BatchNorm3d(8)
        self.conv2d = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
        self.fc = nn.Linear(16, config.num_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv3d(clips)))
        n, c, t, h, w = x.shape
        x = self.conv2d(x.transpose(1, 2).reshape(n * t, c, h, w))
        x = x.mean(dim=(2, 3)).reshape(n, t, -1).mean(dim=1)
        return self.fc(x)


def expected_macs(frames: int, size: int, classes: int) -> int:
    half = (size + 1) // 2
    return (
        conv_macs((8, frames, size, size), 3, (3, 3, 3))
        + conv_macs((16, frames, half, half), 8 // 4, (3, 3))
        + 16 * classes
    )


def test_tracked_forward_counts_every_layer_once_per_clip():
    model = TinyNet(ClipModelConfig(num_classes=5, frames=4, size=16)).eval()
    with torch.no_grad(), track_macs(3) as tracker:
        model(torch.randn(3, 3, 4, 16, 16))
    assert tracker.per_clip.tolist() == [expected_macs(4, 16, 5)] * 3


def test_meta_count_matches_real_run_and_fvcore():
    model = TinyNet(ClipModelConfig(num_classes=7, frames=6, size=20))
    counted = count_flops(model, 6, 20)
    assert counted.gflops * 1e9 == pytest.approx(expected_macs(6, 20, 7))
    assert counted.gflops == pytest.approx(fvcore_gflops(model, 6, 20), rel=1e-9)
    assert counted.params_m * 1e6 == sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters()), "counting must not move the weights"


def test_recorded_macs_go_to_their_clips_and_nested_trackers_stay_separate():
    with track_macs(2) as outer:
        record_macs(torch.tensor([10.0, 30.0]))
        with track_macs(1) as inner:
            record_macs(5.0)
        record_macs(4.0)
    assert inner.per_clip.tolist() == [5.0]
    assert outer.per_clip.tolist() == [12.0, 32.0]


def test_nothing_is_counted_outside_a_tracker():
    record_macs(1e9)  # no tracker active: must be a no-op, not an error
    model = TinyNet(ClipModelConfig(num_classes=3, frames=2, size=8)).eval()
    execution = model.execute(torch.randn(2, 3, 2, 8, 8))
    assert execution.executed_gflops == pytest.approx([expected_macs(2, 8, 3) / 1e9] * 2)
    assert execution.full_gflops == pytest.approx(expected_macs(2, 8, 3) / 1e9)
    assert execution.policy is None


def test_concurrent_trackers_in_threads_each_count_only_their_own_forward():
    import threading

    model = TinyNet(ClipModelConfig(num_classes=5, frames=4, size=16)).eval()
    start, results = threading.Barrier(4), []

    def run() -> None:
        start.wait()
        for _ in range(5):
            with torch.no_grad(), track_macs(1) as tracker:
                model(torch.randn(1, 3, 4, 16, 16))
            results.append(tracker.per_clip.item())

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected_macs(4, 16, 5)] * 20
