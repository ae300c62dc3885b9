"""Training end to end on a tiny synthetic dataset, each paper's objective on a fixed batch, and evaluation."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from clipwise.cli import build_parser
from clipwise.cli import main as clipwise
from clipwise.commands.train import config_values
from clipwise.models import create_model
from clipwise.models.checkpoint import list_versions, load_version, save_version
from clipwise.models.fusion import FusionTemplate
from clipwise.training.config import ConfigError, TrainConfig
from clipwise.training.data import Batch
from clipwise.training.distributed import Processes
from clipwise.training.evaluate import ClassTotals, Evaluation, evaluate_version
from clipwise.training.optim import Schedule, make_optimizer
from clipwise.training.phase import Phase
from clipwise.training.run_log import RunLog
from clipwise.training.setup import build_model
from clipwise.training.synthetic import CLASSES
from clipwise.training.train_ada3d import bernoulli_entropy
from clipwise.training.trainer import objective_phases, train_epoch


def options(**values: object) -> list[str]:
    """Command-line options: options(run_dir=d, epochs=2) is ["--run-dir", "d", "--epochs", "2"]."""
    return [item for name, value in values.items() for item in (f"--{name.replace('_', '-')}", str(value))]


TINY = options(frames=4, size=32, batch_size=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """11 classes, 2 train and 1 val clip each, plus one unreadable file in each list."""
    out = tmp_path_factory.mktemp("synth")
    clipwise(["data", "synth", *options(out=out, clips_per_class=2, seed=0, frames=8, size=48)])
    (out / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    for split in ("train", "val"):
        with (out / f"{split}.txt").open("a") as handle:
            handle.write("videos/broken.mp4 static_circle\n")
    return out


def train(synth: Path, out: Path, model: str, **values: object) -> None:
    """``clipwise train`` on tiny clips, its run directory beside ``out``."""
    defaults = {"model": model, "data": synth, "out": out, "run_dir": f"{out}-run", "workers": 0}
    clipwise(["train", *TINY, *options(**{**defaults, **values})])


def test_train_writes_a_version_the_server_loads(synth, tmp_path):
    out = tmp_path / "repo" / "tsm"
    train(synth, out, "tsm_r18_tiny", epochs=2, workers=1)
    loaded = load_version(tmp_path / "repo", "tsm")
    manifest = loaded.manifest
    assert (loaded.version, manifest.architecture, manifest.trained) == (1, "tsm_r18_tiny", True)
    assert manifest.labels == list(CLASSES)
    assert (manifest.preprocessing.frames, manifest.preprocessing.crop_size) == (4, 32)
    assert {"top1", "top5", "mean_executed_gflops", "saving", "clips"} <= set(manifest.metrics)
    assert re.fullmatch(r"[0-9a-f]{64}", manifest.data_fingerprint)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", manifest.git_commit)

    run = tmp_path / "repo" / "tsm-run"
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and {"epoch", "train_loss", "val_top1", "val_gflops", "skipped_files"} <= set(header)
    assert [row.split(",")[header.index("skipped_files")] for row in rows[1:]] == ["1", "1"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    report = evaluate_version(loaded.path, synth, workers=0)
    assert report["top1"] == manifest.metrics["top1"] and report["skipped"] == 1


def test_resume_continues_from_the_saved_epoch(synth, tmp_path, capsys):
    constant_rate = {"schedule": "step", "milestones": 10}  # the same rates however many epochs
    train(synth, tmp_path / "straight" / "m", "tsn_r18_tiny", epochs=2, **constant_rate)
    interrupted = tmp_path / "interrupted" / "m"
    train(synth, interrupted, "tsn_r18_tiny", epochs=1, **constant_rate)
    metrics = Path(f"{interrupted}-run") / "metrics.csv"
    first_epoch = metrics.read_text().splitlines()[1]
    capsys.readouterr()
    clipwise(["train", "--resume", *options(run_dir=f"{interrupted}-run", epochs=2)])
    printed = capsys.readouterr().out
    assert "epoch=2 " in printed and "epoch=1 " not in printed
    assert metrics.read_text().splitlines()[1] == first_epoch
    assert list_versions(interrupted) == [1, 2]
    resumed = load_version(tmp_path / "interrupted", "m", 2).manifest
    straight = load_version(tmp_path / "straight", "m").manifest
    assert resumed.weights_sha256 == straight.weights_sha256


def test_a_config_file_sets_options_flags_win_and_runs_are_never_overwritten(synth, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "tsn_r18_tiny", "data": str(synth), "epochs": 1, "lr": 0.5}))
    out, run = tmp_path / "repo" / "m", tmp_path / "run"
    command = ["train", *TINY, *options(config=config, out=out, run_dir=run, lr=0.02, workers=0)]
    clipwise(command)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["epochs"], saved["lr"], saved["frames"]) == ("tsn_r18_tiny", 1, 0.02, 4)
    assert list_versions(out) == [1]
    with pytest.raises(SystemExit, match="holds a run: pass --resume"):
        clipwise(command)
    with pytest.raises(SystemExit, match="nothing to resume"):
        clipwise(["train", "--resume", *options(run_dir=tmp_path / "none")])


def test_flip_is_refused_for_the_synthetic_labels(synth, tmp_path):
    with pytest.raises(SystemExit, match="horizontal flip refused.*moving_left"):
        clipwise(["train", "--flip", *TINY, *options(model="tsn_r18_tiny", data=synth, out=tmp_path / "m")])


@pytest.mark.parametrize(
    "name, phases",
    [
        ("tsm_r18_tiny", ["train"]),
        ("i3d_r50_tiny", ["train"]),
        ("fusion_densenet121_tiny", ["train"]),
        ("adafuse_tsn_r18_tiny", ["train"]),
        ("fusion_template_densenet121_tiny", ["warmup", "droppath"]),
        ("ada3d_i3d_r50_tiny", ["backbone", "selection", "policy", "joint"]),
    ],
)
def test_the_family_picks_the_objective(name, phases):
    config = TrainConfig(epochs=3, policy_epochs=4, joint_epochs=5, fusion_warmup_epochs=2)
    with torch.device("meta"):
        model = create_model(name, num_classes=3)
    assert [phase.name for phase in objective_phases(model, config, train_clips=10)] == phases


def test_init_loads_a_backbone_into_its_adaptive_model(tmp_path):
    i3d = create_model("i3d_r50_tiny", num_classes=3, frames=4, size=32)
    version = save_version(i3d, ["a", "b", "c"], tmp_path, "i3d", trained=True)
    ada3d = build_model(TrainConfig(model="ada3d_i3d_r50_tiny", frames=4, size=32, init=version), num_classes=3)
    assert all(torch.equal(tensor, ada3d.backbone.state_dict()[key]) for key, tensor in i3d.state_dict().items())
    phases = objective_phases(ada3d, TrainConfig(init=version), train_clips=10)
    assert [phase.epochs for phase in phases] == [0, 5, 10, 10]  # no backbone pre-training from a trained backbone


def test_schedule_warms_up_then_follows_cosine_or_steps():
    cosine = Schedule("cosine", total_steps=110, warmup_steps=10)
    assert [cosine.factor(step) for step in (0, 9)] == [0.1, 1.0]
    assert cosine.factor(10) == 1.0 and cosine.factor(60) == pytest.approx(0.5) and cosine.factor(110) == 0.0
    steps = Schedule("step", total_steps=100, milestone_steps=(40, 80))
    assert [steps.factor(step) for step in (39, 40, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])


# --- each objective on a fixed batch --------------------------------------------------------------------------


def fixed_batch(classes: int, clips: int = 4, frames: int = 4, size: int = 32) -> Batch:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(clips) % classes
    return Batch(torch.randn(clips, 3, frames, size, size, generator=generator), labels, 0)


def run_steps(phase: Phase, batch: Batch, steps: int, config: TrainConfig) -> dict[str, float]:
    """``steps`` optimiser steps of ``phase`` on one batch through the real epoch loop; its mean numbers."""
    torch.manual_seed(0)
    optimizer = make_optimizer(phase, config)
    phase.objective.train()
    for module in phase.frozen:
        module.eval()
    return train_epoch(
        phase.objective,
        [batch] * steps,
        optimizer,
        Schedule("step", steps),
        base_lr=phase.lr,
        first_step=0,
        clip_grad_norm=config.clip_grad_norm,
        processes=Processes(),
        log=RunLog(Path("unused"), writes=False),
        description="test",
    )


def phase_named(model, config: TrainConfig, name: str) -> Phase:
    return next(phase for phase in objective_phases(model, config, train_clips=100) if phase.name == name)


def test_cross_entropy_fits_a_batch():
    torch.manual_seed(0)
    model = create_model("tsn_r18_tiny", num_classes=3, frames=4, size=32)
    config = TrainConfig(lr=0.05)
    phase = phase_named(model, config, "train")
    first, later = run_steps(phase, fixed_batch(3), 1, config), run_steps(phase, fixed_batch(3), 6, config)
    assert later["train_loss"] < 0.5 * first["train_loss"]


@pytest.mark.parametrize("flops_weight", [0.0, 1e4])
def test_adafuse_flops_term_lowers_the_executed_cost(flops_weight):
    """λ per GFLOP as in Eq. 6: on a model of 0.01 GFLOPs, λ = 1e4 weighs like the paper's 0.1 on 33 G ×30."""
    torch.manual_seed(0)
    model = create_model("adafuse_tsn_r18_tiny", num_classes=3, frames=4, size=32)
    config = TrainConfig(lr=0.1, flops_weight=flops_weight, clip_grad_norm=0)
    batch = fixed_batch(3)
    before = sum(model.eval().execute(batch.clips).executed_gflops)
    stats = run_steps(phase_named(model, config, "train"), batch, 3, config)
    after = sum(model.eval().execute(batch.clips).executed_gflops)
    assert stats["train_loss"] == pytest.approx(stats["train_cross_entropy"] + flops_weight * stats["train_gflops"])
    assert (after < 0.5 * before) == (flops_weight > 0)


def test_the_flops_term_moves_a_prefix_policy_to_cheaper_levels():
    batch = fixed_batch(3)
    executed = {}
    for flops_weight in (0.0, 1e4):
        torch.manual_seed(0)
        model = create_model("adafuse_tsn_r18_tiny", num_classes=3, frames=4, size=32, structure="prefix")
        config = TrainConfig(lr=0.1, flops_weight=flops_weight, policy_lr_scale=10, clip_grad_norm=0)
        run_steps(phase_named(model, config, "train"), batch, 4, config)
        executed[flops_weight] = sum(model.eval().execute(batch.clips).executed_gflops)
    assert executed[1e4] < 0.8 * executed[0.0]


def test_a_per_channel_adafuse_converts_to_the_execution_aware_one_through_init(tmp_path):
    """``--init`` of a per-channel AdaFuse version (trained or imported) into the prefix structure: every backbone
    tensor loads, the policy nets start new; ``phases`` then orders the channels by importance."""
    torch.manual_seed(0)
    source = create_model("adafuse_tsn_r18_tiny", num_classes=3, frames=4, size=32)
    version = save_version(source, ["a", "b", "c"], tmp_path, "per_channel", trained=True)
    config = TrainConfig(model="adafuse_tsn_r18_tiny", frames=4, size=32, init=version)
    config.model_args = {"structure": "prefix"}
    converted = build_model(config, num_classes=3)
    backbone = {key: tensor for key, tensor in source.state_dict().items() if ".policy." not in key}
    assert all(torch.equal(tensor, converted.state_dict()[key]) for key, tensor in backbone.items())
    assert converted.config.structure == "prefix"


def test_the_latency_term_of_a_prefix_policy_reads_the_levels_timed_at_calibration():
    """With ``cost="latency"`` the phases calibrate the model here; the term is then, per clip, the blocks'
    timed seconds under the levels drawn over their seconds at full compute."""
    torch.manual_seed(0)
    model = create_model("adafuse_tsn_r18_tiny", num_classes=3, frames=4, size=32, structure="prefix")
    phase_named(model, TrainConfig(cost="latency"), "train")
    blocks = model.gated_blocks()
    tables = [next(iter(block._choice_seconds.values())) for block in blocks]
    assert all(bool((table > 0).all()) for table in tables)  # every level of every block timed
    levels = [torch.tensor(len(block.policy.choices) - 1) for block in blocks]
    clips = fixed_batch(3).clips
    with model.follow_choices(levels):
        model.train()(clips)
    expected = sum(float(table[-1]) for table in tables) / sum(float(table[0]) for table in tables)
    assert model.policy_time_ratio().tolist() == pytest.approx([expected] * len(clips), rel=1e-6)  # float32


def test_adafuse_policy_nets_train_at_their_learning_rate_scale():
    changes = {}
    for scale in (1.0, 10.0):
        torch.manual_seed(0)
        model = create_model("adafuse_tsn_r18_tiny", num_classes=3, frames=4, size=32)
        config = TrainConfig(lr=0.01, policy_lr_scale=scale, clip_grad_norm=0)
        before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
        run_steps(phase_named(model, config, "train"), fixed_batch(3), 1, config)
        changes[scale] = {name: parameter.detach() - before[name] for name, parameter in model.named_parameters()}
    assert any(change.abs().max() > 0 for name, change in changes[1.0].items() if ".policy." in name)
    for name, change in changes[10.0].items():
        torch.testing.assert_close(change, changes[1.0][name] * (10.0 if ".policy." in name else 1.0))


def test_ada3d_policy_stage_learns_to_spend_less_with_the_backbone_frozen():
    """With one class every prediction is right, so Eq. 4 rewards using fewer frames and 3D stages."""
    torch.manual_seed(0)
    # 64² (res5 at 2x2): the joint stage trains batch norms on clips that may keep a single frame
    model = create_model("ada3d_i3d_r50_tiny", num_classes=1, frames=4, size=64)
    config = TrainConfig(policy_lr=0.5, gamma=1.0, clip_grad_norm=0)
    backbone = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    batch = fixed_batch(1, size=64)
    with torch.no_grad():
        before = model.select(batch.clips)
    stats = run_steps(phase_named(model, config, "policy"), batch, 4, config)
    with torch.no_grad():
        after = model.select(batch.clips)
    assert after.frame_probs.mean() < before.frame_probs.mean() - 0.05
    assert after.stage_probs.mean() < before.stage_probs.mean() - 0.05
    assert stats["train_top1"] == 1.0 and stats["train_reward"] > 0
    assert all(torch.equal(value, model.backbone.state_dict()[key]) for key, value in backbone.items())

    run_steps(phase_named(model, config, "joint"), batch, 1, config)
    assert not torch.equal(backbone["stem.conv.weight"], model.backbone.state_dict()["stem.conv.weight"])


def test_bernoulli_entropy_sums_each_actions_entropy():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), -50.0]])  # p = 1/2, 1/2; p = 3/4, ~0
    expected = [2 * math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))]
    assert bernoulli_entropy(logits).tolist() == pytest.approx(expected, abs=1e-6)


def test_ada3d_selection_phase_trains_the_selection_net_as_a_classifier():
    torch.manual_seed(0)
    model = create_model("ada3d_i3d_r50_tiny", num_classes=3, frames=4, size=64)
    config = TrainConfig(lr=0.1, clip_grad_norm=0)
    backbone = {key: value.clone() for key, value in model.backbone.state_dict().items()}
    phase = phase_named(model, config, "selection")
    batch = fixed_batch(3, size=64)
    first, later = run_steps(phase, batch, 1, config), run_steps(phase, batch, 8, config)
    assert later["train_loss"] < 0.5 * first["train_loss"]
    assert all(torch.equal(value, model.backbone.state_dict()[key]) for key, value in backbone.items())


def test_ada3d_policy_gradient_is_zero_when_the_sample_is_what_the_policy_would_do():
    """Self-critical baseline: a sampled action set scored like the greedy one teaches nothing (β = 0)."""
    torch.manual_seed(0)
    model = create_model("ada3d_i3d_r50_tiny", num_classes=3, frames=4, size=64)
    for head in (model.selection.frame_head, model.selection.stage_head):
        torch.nn.init.constant_(head.bias, 30.0)  # p ≈ 1: every sample keeps everything, as greedy does
    config = TrainConfig(policy_lr=0.5, entropy_weight=0.0, clip_grad_norm=0, weight_decay=0.0)
    before = {name: value.detach().clone() for name, value in model.selection.named_parameters()}
    stats = run_steps(phase_named(model, config, "policy"), fixed_batch(3, size=64), 2, config)
    assert stats["train_advantage"] == 0.0
    assert all(torch.equal(value, before[name]) for name, value in model.selection.named_parameters())


def test_fusion_warms_up_without_drop_path_then_learns_the_rates():
    torch.manual_seed(0)
    model = create_model("fusion_template_densenet121_tiny", num_classes=3, frames=4, size=32)
    assert isinstance(model, FusionTemplate)
    config = TrainConfig(lr=0.1, length_scale=1.0)
    rates = model.drop_logits.detach().clone()
    batch = fixed_batch(3, frames=8)  # the template's stem and first transition halve T twice
    warmup = run_steps(phase_named(model, config, "warmup"), batch, 2, config)
    assert torch.equal(model.drop_logits, rates) and "train_prior" not in warmup
    droppath = run_steps(phase_named(model, config, "droppath"), batch, 2, config)
    assert not torch.equal(model.drop_logits, rates)
    assert droppath["train_loss"] == pytest.approx(droppath["train_cross_entropy"] + droppath["train_prior"])


# --- evaluation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, policy_keys",
    [
        ("adafuse_tsn_r18_tiny", {"keep", "reuse", "skip"}),
        ("ada3d_i3d_r50_tiny", {"frame_fraction", "stage_fraction"}),
    ],
)
def test_eval_reports_accuracy_flops_and_policy_per_class(synth, tmp_path, name, policy_keys):
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), frames=4, size=32).eval()
    version = save_version(model, list(CLASSES), tmp_path, "m", trained=False)
    clipwise(["eval", *options(model_dir=version, data=synth, workers=0, json=tmp_path / "eval.json")])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert (report["model"]["version"], report["clips"], report["skipped"]) == (1, len(CLASSES), 1)
    assert 0 <= report["top1"] <= report["top5"] <= 1
    assert 0 < report["mean_executed_gflops"] <= report["full_gflops"]
    assert list(report["per_class"]) == list(CLASSES)
    for per_class in report["per_class"].values():
        assert per_class["clips"] == 1 and set(per_class["policy"]) == policy_keys
    assert set(report["policy"]) == policy_keys
    # the same predictions and costs as the model on each clip, decoded as the service decodes
    hits, gflops = 0, []
    spec = load_version(tmp_path, "m").manifest.preprocessing
    for line in (synth / "val.txt").read_text().splitlines()[: len(CLASSES)]:
        path, label = line.rsplit(maxsplit=1)
        execution = _execute_as_served(model, synth / path, spec)
        hits += int(execution.logits.argmax() == int(label))
        gflops += execution.policy_gflops
    assert report["top1"] == pytest.approx(hits / len(CLASSES))
    # the decisions' cost (the executed one depends on what the batch ran together)
    assert report["mean_policy_gflops"] == pytest.approx(sum(gflops) / len(gflops))
    assert report["mean_policy_gflops"] <= report["mean_executed_gflops"] * (1 + 1e-9)


def _execute_as_served(model, path: Path, spec):
    from clipwise.video import ClipSpec, load_clips

    return model.execute(load_clips(path.read_bytes(), ClipSpec(**spec.to_dict())).clips)


def test_evaluation_sums_classes_and_leaves_out_empty_ones():
    per_class = [ClassTotals(2, 1, 2, gflops=2.0, policy_gflops=1.5), ClassTotals(1, 1, 1, 1.0, 0.6), ClassTotals()]
    evaluation = Evaluation(["a", "b", "c"], full_gflops=2.0, per_class=per_class, skipped=1)
    expected = {"clips": 3, "top1": 2 / 3, "top5": 1.0, "mean_executed_gflops": 1.0, "mean_policy_gflops": 0.7}
    assert evaluation.over(["a", "b"]).means() == pytest.approx(expected)
    report = evaluation.report()
    assert (report["saving"], report["skipped"], list(report["per_class"])) == (0.5, 1, ["a", "b"])


def test_train_flags_are_made_from_the_typed_config(capsys):
    """Every option has a flag in its family's group, typed and checked as the config field is."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    for group, flag in [("AdaFuse options", "--latency-weight LAMBDA"), ("Ada3D options", "--entropy-weight BETA"),
                        ("fusion options", "--length-scale K"), ("data and model options", "--init PATH [PATH ...]")]:
        assert flag in help_text.split(f"{group}:")[1].split("options:")[0]
    args = parser.parse_args(["train", "--milestones", "3", "6", "--frames", "4", "--model-args", '{"a": 1}', "--flip"])
    assert config_values(args) == {"milestones": [3, 6], "frames": 4, "model_args": {"a": 1}, "flip": True}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--cost", "seconds"])
    assert "--cost: invalid choice: 'seconds'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="epoch: Extra inputs are not permitted"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="schedule: Input should be 'cosine' or 'step'"):
        TrainConfig.from_dict({"schedule": "linear"})
