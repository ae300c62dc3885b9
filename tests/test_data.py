"""Annotation lists, the video dataset and its augmentation, and ``clipwise data synth``, on real mp4 files."""

import random
from pathlib import Path

import pytest
import torch

from clipwise.cli import main as clipwise
from clipwise.training.config import ConfigError
from clipwise.training.data import (
    AnnotationError,
    Augmentation,
    DatasetFiles,
    MultiScaleCrop,
    VideoDataset,
    VideoRecord,
    check_flip,
    collate,
    data_fingerprint,
    direction_sensitive,
    eval_loader,
    read_annotations,
    read_labels,
    train_loader,
)
from clipwise.training.synthetic import CLASSES
from clipwise.video import ClipSpec, load_clips

SYNTH_OPTIONS = ["--clips-per-class", "1", "--frames", "8", "--size", "48"]
SPEC = ClipSpec("segments", frames=4, stride=1, short_side=37, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    clipwise(["data", "synth", "--out", str(out), *SYNTH_OPTIONS, "--seed", "7"])
    return out


def records_of(synth: Path, split: str = "train") -> list[VideoRecord]:
    files = DatasetFiles.find(synth)
    return read_annotations(files.split(split), read_labels(files.classes))


def test_synth_writes_the_benchmark_layout(synth):
    assert read_labels(synth / "classes.txt") == list(CLASSES)
    for split in ("train", "val"):
        records = records_of(synth, split)
        assert sorted(record.label for record in records) == list(range(len(CLASSES)))
        assert all(record.path.is_file() and record.path.suffix == ".mp4" for record in records)


def test_synth_is_deterministic_for_a_seed(synth, tmp_path):
    clipwise(["data", "synth", "--out", str(tmp_path / "same"), *SYNTH_OPTIONS, "--seed", "7"])
    clipwise(["data", "synth", "--out", str(tmp_path / "other"), *SYNTH_OPTIONS, "--seed", "8"])
    files = sorted(path.relative_to(synth) for path in synth.rglob("*") if path.is_file())
    assert files == sorted(
        path.relative_to(tmp_path / "same") for path in (tmp_path / "same").rglob("*") if path.is_file()
    )
    assert [f for f in files if (synth / f).read_bytes() != (tmp_path / "same" / f).read_bytes()] == []
    videos = [f for f in files if f.suffix == ".mp4"]
    assert all((synth / f).read_bytes() != (tmp_path / "other" / f).read_bytes() for f in videos)


def test_text_and_csv_lists_parse_alike(tmp_path):
    labels = ["walk", "run", "jump"]
    (tmp_path / "clips").mkdir()
    (tmp_path / "train.txt").write_text("# path label\n\nclips/a b.mp4 2\n  clips/c.mp4 run  \n")
    (tmp_path / "train.csv").write_text("label,path,extra\n2,clips/a b.mp4,x\nrun,clips/c.mp4,y\n")
    expected = [VideoRecord(tmp_path / "clips/a b.mp4", 2), VideoRecord(tmp_path / "clips/c.mp4", 1)]
    assert read_annotations(tmp_path / "train.txt", labels) == expected
    assert read_annotations(tmp_path / "train.csv", labels) == expected
    root = tmp_path / "elsewhere"
    assert read_annotations(tmp_path / "train.txt", labels, root)[0].path == root / "clips/a b.mp4"


@pytest.mark.parametrize(
    "content, message",
    [
        ("a.mp4 3\n", "train.txt:1: label index 3"),
        ("a.mp4 1\nb.mp4 swim\n", "train.txt:2: unknown label"),
        ("lonely\n", "train.txt:1: expected 'path label'"),
        ("# nothing\n", "no videos"),
    ],
)
def test_bad_lists_are_refused_with_their_line(tmp_path, content, message):
    (tmp_path / "train.txt").write_text(content)
    with pytest.raises(AnnotationError, match=message):
        read_annotations(tmp_path / "train.txt", ["walk", "run", "jump"])


def test_a_csv_list_needs_path_and_label_columns(tmp_path):
    (tmp_path / "val.csv").write_text("video,class\na.mp4,0\n")
    with pytest.raises(AnnotationError, match="'path' and 'label'"):
        read_annotations(tmp_path / "val.csv", ["walk"])


def test_a_dataset_directory_needs_one_list_per_split(synth, tmp_path):
    for name in ("classes.txt", "train.txt", "val.txt"):
        (tmp_path / name).write_text((synth / name).read_text())
    assert DatasetFiles.find(tmp_path).val == tmp_path / "val.txt"
    (tmp_path / "val.csv").write_text("path,label\n")
    with pytest.raises(AnnotationError, match="exactly one of val.txt or val.csv"):
        DatasetFiles.find(tmp_path)


def test_flip_is_refused_for_direction_sensitive_labels():
    assert direction_sensitive(CLASSES) == ["moving_left", "moving_right", "rotating_cw", "rotating_ccw"]
    assert direction_sensitive(["Pushing something from left to right", "Waving"]) == [
        "Pushing something from left to right"
    ]
    with pytest.raises(ConfigError, match="moving_left"):
        check_flip(CLASSES)
    check_flip(["walk", "bright_light", "copyright"])  # words, not substrings


def test_multi_scale_crop_draws_tsn_boxes():
    crop, rng = MultiScaleCrop(), random.Random(0)
    boxes = {crop.box(48, 64, 32, rng) for _ in range(1000)}
    # sides: 1, .875, .75, .66 of the short side 48 -> 48, 42, 36, 31 (31 snaps to the output 32)
    sizes = [48, 42, 36, 32]
    shapes = {(height, width) for _, _, height, width in boxes}
    assert shapes == {(h, w) for h in sizes for w in sizes if abs(sizes.index(h) - sizes.index(w)) <= 1}
    for top, left, height, width in boxes:
        assert 0 <= top <= 48 - height and 0 <= left <= 64 - width
    # a full-height crop of a 48x64 frame: 5 of the 13 fixed positions differ (left = 0, 4, 8, 12, 16)
    assert {left for top, left, height, width in boxes if (height, width) == (48, 48)} == {0, 4, 8, 12, 16}


def test_flip_mirrors_every_frame_the_same_way():
    frames = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32).to(torch.uint8)
    rng_seed = next(seed for seed in range(100) if _flips(seed))
    plain = Augmentation(flip=False)(frames, 32, random.Random(rng_seed))
    flipped = Augmentation(flip=True)(frames, 32, random.Random(rng_seed))
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)


def _flips(seed: int) -> bool:
    rng = random.Random(seed)
    MultiScaleCrop().box(32, 32, 32, rng)
    return rng.random() < 0.5


def test_train_clips_depend_on_seed_epoch_and_index_only(synth):
    dataset = VideoDataset(records_of(synth), SPEC, augmentation=Augmentation(), seed=1)
    first = dataset[3].clip
    assert first.shape == (3, 4, 32, 32) and first.dtype == torch.float32
    assert torch.equal(VideoDataset(records_of(synth), SPEC, augmentation=Augmentation(), seed=1)[3].clip, first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3].clip, first)


def test_eval_clips_are_the_services(synth):
    record = records_of(synth, "val")[0]
    sample = VideoDataset([record], SPEC)[0]
    assert torch.equal(sample.clip, load_clips(record.path.read_bytes(), SPEC).clips[0])


def test_broken_files_are_skipped_and_counted(synth, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes((synth / "train.txt").read_bytes() * 20)  # not a video
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(records_of(synth)[0].path.read_bytes()[:300])
    good = records_of(synth)[:2]
    records = [VideoRecord(broken, 0), good[0], VideoRecord(truncated, 0), good[1]]

    train = VideoDataset(records, SPEC, augmentation=Augmentation())
    replaced_by_next = [(good[0].label, 1), (good[0].label, 0), (good[1].label, 1), (good[1].label, 0)]
    assert [(train[i].label, train[i].skipped) for i in range(4)] == replaced_by_next
    batches = list(train_loader(train, batch_size=2, workers=2, seed=0))
    assert [len(batch.labels) for batch in batches] == [2, 2] and sum(batch.skipped for batch in batches) == 2

    evaluation = list(eval_loader(VideoDataset(records, SPEC), batch_size=4, workers=0))
    assert len(evaluation) == 1 and evaluation[0].labels.tolist() == [good[0].label, good[1].label]
    assert evaluation[0].skipped == 2
    assert collate([None, None]).clips.numel() == 0


def test_train_and_eval_loaders_share_the_list_between_processes(synth):
    dataset = VideoDataset(records_of(synth), SPEC)
    shares = [eval_loader(dataset, batch_size=4, workers=0, rank=rank, world_size=2).sampler for rank in (0, 1)]
    assert sorted([*shares[0], *shares[1]]) == list(range(len(dataset)))
    train = [train_loader(dataset, batch_size=4, workers=0, seed=0, rank=rank, world_size=2) for rank in (0, 1)]
    # 11 clips: 6 a process (DistributedSampler repeats one), one full batch of 4 each: the same step count
    assert [len(list(loader.sampler)) for loader in train] == [6, 6] and [len(loader) for loader in train] == [1, 1]
    assert set(train[0].sampler) | set(train[1].sampler) == set(range(len(dataset)))


def test_fingerprint_follows_lists_and_video_sizes(synth, tmp_path):
    files = DatasetFiles.find(synth)
    lists = [files.classes, files.train, files.val]
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x" * 10)
    records = [VideoRecord(video, 0)]
    before = data_fingerprint(lists, records)
    assert data_fingerprint(lists, records) == before
    assert data_fingerprint(lists[:2], records) != before
    video.write_bytes(b"x" * 11)
    assert data_fingerprint(lists, records) != before
