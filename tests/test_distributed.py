"""``torchrun --nproc-per-node 2 -m clipwise.cli train``: two CPU processes (gloo) train one model with DDP."""

import json
import os
import subprocess
import sys

from clipwise.models.checkpoint import load_version
from clipwise.training.synthetic import SynthConfig, generate


def test_two_processes_share_the_data_and_keep_identical_weights(tmp_path):
    generate(tmp_path / "data", clips_per_class=2, seed=0, cfg=SynthConfig(frames=8, size=48))
    run_dir = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    train = {
        "model": "tsn_r18_tiny",
        "data": tmp_path / "data",
        "out": tmp_path / "repo" / "ddp",
        "run_dir": run_dir,
        "epochs": 2,
        "batch_size": 4,
        "frames": 4,
        "size": 32,
        "workers": 0,
    }
    options = [item for name, value in train.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    command = [*torchrun, "-m", "clipwise.cli", "train", *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]

    processes = json.loads((run_dir / "processes.json").read_text())
    assert (processes["world_size"], processes["backend"]) == (2, "gloo")
    assert processes["train_clips"] == [11, 11]  # 22 training clips, half each
    first, second = processes["parameter_sha256"]
    assert first == second and len(first) == 64
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3  # process 0 alone writes
    loaded = load_version(tmp_path / "repo", "ddp")
    assert loaded.manifest.trained and loaded.version == 1
