"""video/: samplers, decoding (seek vs decode-all), transforms, limits and broken input."""

from __future__ import annotations

import dataclasses
import io
import pickle
import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from edge_cases import EDGE_CASES, LIMITS, coded_video, vfr_timestamps

import clipwise.video.decode as video_decode
from clipwise.video import (
    ClipSpec,
    DecodeLimits,
    VideoError,
    dense_indices,
    load_clips,
    make_views,
    probe,
    read_frames,
    segment_indices,
)
from clipwise.video.frame_index import PacketInfo
from clipwise.video.parallel import ThreadBudget
from clipwise.video.synthetic import encode_video, index_coded_frames, read_frame_index
from clipwise.video.transforms import crop_origins, resize_short_side

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TSN_SPEC = ClipSpec("segments", frames=8, stride=1, short_side=128, crop_size=112, mean=MEAN, std=STD)
DENSE_SPEC = ClipSpec("dense", frames=4, stride=4, short_side=128, crop_size=112, mean=MEAN, std=STD)


def decode_all(data: bytes) -> list[np.ndarray]:
    """Every frame, decoded the plain PyAV way: the reference for the seeking reader."""
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def codes(frames: dict[int, np.ndarray]) -> dict[int, int]:
    return {index: read_frame_index(frame) for index, frame in frames.items()}


# --- samplers ---------------------------------------------------------------------------------------


def test_segments_take_the_centre_frame_of_each_segment():
    assert segment_indices(64, 8) == [4, 12, 20, 28, 36, 44, 52, 60]
    assert segment_indices(10, 4) == [1, 3, 6, 8]  # segments of 2.5 frames: centres 1.25, 3.75, 6.25, 8.75


def test_segment_clips_spread_their_offsets_within_each_segment():
    assert segment_indices(64, 8, clip=0, clips=2) == [2, 10, 18, 26, 34, 42, 50, 58]
    assert segment_indices(64, 8, clip=1, clips=2) == [6, 14, 22, 30, 38, 46, 54, 62]


def test_segments_of_a_short_video_repeat_frames_evenly():
    assert segment_indices(3, 8) == [0, 0, 0, 1, 1, 2, 2, 2]  # int(0.375 * (k + 0.5))


def test_training_segments_stay_in_their_segment_and_follow_the_seed():
    num_frames, segments = 50, 8
    tick = num_frames / segments
    for seed in range(50):
        indices = segment_indices(num_frames, segments, train=True, rng=random.Random(seed))
        assert all(int(k * tick) <= index < (k + 1) * tick for k, index in enumerate(indices))
        assert indices == segment_indices(num_frames, segments, train=True, rng=random.Random(seed))
    draws = {tuple(segment_indices(num_frames, segments, train=True, rng=random.Random(seed))) for seed in range(5)}
    assert len(draws) > 1


def test_dense_clip_sits_at_the_centre():
    # 8 frames at stride 8 span 57 of 64 frames: 7 frames of room, 3 before the clip
    assert dense_indices(64, 8, 8) == [3, 11, 19, 27, 35, 43, 51, 59]


def test_dense_clips_are_evenly_spaced():
    # span 29 of 100 frames: 71 frames of room, clip j starts at int(71 * (j + 0.5) / 3)
    starts = [dense_indices(100, 8, 4, clip=clip, clips=3)[0] for clip in range(3)]
    assert starts == [11, 35, 59]
    assert dense_indices(100, 8, 4, clip=2, clips=3) == [59, 63, 67, 71, 75, 79, 83, 87]


def test_dense_clip_of_a_short_video_repeats_the_last_frame():
    assert dense_indices(20, 8, 4) == [0, 4, 8, 12, 16, 19, 19, 19]


def test_training_dense_clips_start_anywhere_in_the_room_and_follow_the_seed():
    starts = set()
    for seed in range(200):
        indices = dense_indices(40, 4, 5, train=True, rng=random.Random(seed))  # span 16: starts 0..24
        assert np.diff(indices).tolist() == [5, 5, 5]
        assert indices == dense_indices(40, 4, 5, train=True, rng=random.Random(seed))
        starts.add(indices[0])
    assert starts == set(range(25))


@pytest.mark.parametrize(
    "call",
    [
        lambda: segment_indices(0, 8),
        lambda: segment_indices(10, 8, clip=2, clips=2),
        lambda: dense_indices(10, 0, 2),
        lambda: dense_indices(10, 4, 0),
    ],
)
def test_samplers_refuse_impossible_requests(call):
    with pytest.raises(ValueError):
        call()


def test_clip_spec_reads_a_json_manifest_and_dispatches_to_its_sampler():
    spec = ClipSpec(**{**dataclasses.asdict(TSN_SPEC), "mean": list(MEAN), "std": list(STD)})
    assert spec == TSN_SPEC and hash(spec) == hash(TSN_SPEC)
    assert TSN_SPEC.frame_indices(64, clips=2) == [segment_indices(64, 8, clip=c, clips=2) for c in range(2)]
    assert DENSE_SPEC.frame_indices(64) == [dense_indices(64, 4, 4)]


@pytest.mark.parametrize(
    "change", [{"sampling": "random"}, {"crop_size": 200}, {"frames": 0}, {"std": (1.0, 0.0, 1.0)}]
)
def test_clip_spec_refuses_bad_fields(change):
    with pytest.raises(ValueError):
        ClipSpec(**{**dataclasses.asdict(TSN_SPEC), **change})


# --- decoding ---------------------------------------------------------------------------------------

VARIANTS = {
    "mp4": {},
    "webm": {"container_format": "webm", "codec": "vp9"},
    "mpegts": {"container_format": "mpegts"},  # seeks by bisection; first pts 1.4 s
    "mkv_offset": {"container_format": "matroska", "timestamps": range(100, 164)},  # first pts 4 s
    "avi": {"container_format": "avi"},  # no pts stored: FFmpeg makes them up, B-frames out of order
}


@pytest.fixture(params=VARIANTS, scope="module")
def variant_bytes(request, video_bytes_factory) -> bytes:
    return video_bytes_factory(**VARIANTS[request.param])


def test_fixture_files_decode_to_their_frame_indices(h264_video: Path, vp9_video: Path):
    for path in (h264_video, vp9_video):
        frames = decode_all(path.read_bytes())
        assert [read_frame_index(frame) for frame in frames] == list(range(64))


@pytest.mark.parametrize("spec", [TSN_SPEC, DENSE_SPEC], ids=["segments", "dense"])
def test_returned_frames_are_the_sampled_frames(variant_bytes: bytes, spec: ClipSpec):
    decoded = read_frames(variant_bytes, lambda num_frames: spec.frame_indices(num_frames, clips=3))
    assert decoded.frame_indices == spec.frame_indices(64, clips=3)
    assert codes(decoded.frames) == {index: index for index in decoded.frames}
    assert sorted(decoded.frames) == sorted({i for clip in decoded.frame_indices for i in clip})
    assert not decoded.truncated


@pytest.mark.parametrize("plan", [[[0, 5, 17, 31, 32, 47, 60, 63]], [list(range(1, 64, 3))]], ids=["sparse", "dense"])
def test_seeking_returns_the_decode_all_frames_pixel_for_pixel(variant_bytes: bytes, plan: list[list[int]]):
    reference = decode_all(variant_bytes)
    decoded = read_frames(variant_bytes, lambda _: plan)
    parallel = read_frames(variant_bytes, lambda _: plan, threads=ThreadBudget(3))
    forward = read_frames(variant_bytes, lambda _: plan, seek=False)
    for index in plan[0]:
        for read in (decoded, parallel, forward):
            assert np.array_equal(read.frames[index], reference[index])
    assert parallel.frames_decoded == decoded.frames_decoded  # the same runs, each decoded once


def test_seeking_skips_the_groups_of_pictures_between_wanted_frames(h264_video: Path, vp9_video: Path):
    plan = [[5, 40]]  # keyframes at 0, 16, 32, 48: decode 0..5, seek to 32, decode 32..40
    for path in (h264_video, vp9_video):
        seeking = read_frames(path.read_bytes(), lambda _: plan)
        forward = read_frames(path.read_bytes(), lambda _: plan, seek=False)
        assert codes(seeking.frames) == {5: 5, 40: 40}
        assert seeking.frames_decoded <= 6 + 9 < forward.frames_decoded


def test_frames_nothing_refers_to_are_not_decoded_unless_wanted(h264_video: Path):
    # H.264 with B-frames: of frames 32..40 only the reference frames and frame 40 need decoding
    assert read_frames(h264_video.read_bytes(), lambda _: [[40]]).frames_decoded < 9


@pytest.mark.parametrize("fixture", ["h264_video", "vp9_video"])
def test_a_container_that_calls_every_frame_a_keyframe_still_gives_the_right_frames(monkeypatch, request, fixture):
    # seeking straight to a frame that is no keyframe: H.264 returns nothing for it, VP9 raises an error;
    # either way the frames come from decoding forward, and the stream is not taken for a broken one
    monkeypatch.setattr(video_decode, "PacketInfo", lambda pts, dts, _: PacketInfo(pts, dts, keyframe=True))
    data = request.getfixturevalue(fixture).read_bytes()
    reference = decode_all(data)
    decoded = read_frames(data, lambda _: [[5, 20, 40, 59]])
    assert codes(decoded.frames) == {5: 5, 20: 20, 40: 40, 59: 59} and not decoded.truncated
    assert all(np.array_equal(frame, reference[index]) for index, frame in decoded.frames.items())


def test_a_plan_outside_the_video_is_refused(h264_video: Path):
    with pytest.raises(ValueError):
        read_frames(h264_video.read_bytes(), lambda num_frames: [[0, num_frames]])


def test_info_counts_the_frames_found(vp9_video: Path):
    decoded = read_frames(vp9_video.read_bytes(), TSN_SPEC.frame_indices)
    assert (decoded.info.num_frames, decoded.info.fps, decoded.info.codec) == (64, 25.0, "vp9")
    assert decoded.info.duration_s == pytest.approx(64 / 25)
    assert (decoded.info.width, decoded.info.height) == (160, 120)


def test_probe_reads_the_headers_and_estimates_a_missing_frame_count(h264_video: Path, vp9_video: Path):
    h264 = probe(h264_video.read_bytes())
    assert (h264.num_frames, h264.fps, h264.width, h264.height, h264.codec) == (64, 25.0, 160, 120, "h264")
    assert h264.duration_s == pytest.approx(2.56)
    assert probe(vp9_video.read_bytes()).num_frames == 64  # WebM has no count: 2.56 s × 25 fps


def test_a_video_shorter_than_the_clip_repeats_frames(video_bytes_factory):
    clips = load_clips(video_bytes_factory(num_frames=5), TSN_SPEC)
    assert clips.frame_indices == [[0, 0, 1, 2, 2, 3, 4, 4]]
    assert clips.clips.shape == (1, 3, 8, 112, 112)


# --- load_clips and transforms -----------------------------------------------------------------------


def test_load_clips_shapes_clip_major_views(h264_video: Path):
    clips = load_clips(h264_video.read_bytes(), TSN_SPEC, clips=2, crops=3)
    assert clips.clips.shape == (6, 3, 8, 112, 112) and clips.clips.dtype == torch.float32
    assert clips.frame_indices == TSN_SPEC.frame_indices(64, clips=2)
    # views 0-2: clip 0 cropped at columns 0, 29 and 58 of its 170-wide frames
    left, centre, right = clips.clips[:3]
    assert torch.equal(centre[..., :16], left[..., 29:45]) and torch.equal(centre[..., 29:], right[..., :83])
    assert clips.decode_ms > 0 and clips.preprocess_ms > 0 and clips.frames_decoded >= 16


def test_load_clips_scales_the_frames_close_to_resizing_the_reference_frames(h264_video: Path):
    # load_clips scales while converting to RGB (swscale); the reference resizes full-size RGB frames (torch)
    spec = dataclasses.replace(DENSE_SPEC, short_side=60, crop_size=48)
    data = h264_video.read_bytes()
    clips = load_clips(data, spec)
    reference = decode_all(data)
    frames = torch.from_numpy(np.stack([reference[i] for i in clips.frame_indices[0]])).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(frames, size=(60, 80), mode="bilinear", antialias=True)
    expected = resized[..., 6:54, 16:64].transpose(0, 1)  # ceil((60 - 48) / 2), ceil((80 - 48) / 2)
    std, mean = torch.tensor(STD).view(3, 1, 1, 1), torch.tensor(MEAN).view(3, 1, 1, 1)
    difference = ((clips.clips[0] * std + mean) * 255 - expected).abs()
    # measured: mean 3.7, max 26 levels; swscale's other filters differ more (area 4.9 / 42, fast bilinear 7.7 / 190)
    assert difference.mean() < 4.5 and difference.max() < 36


def test_normalise_maps_the_mean_colour_to_zero_and_one_std_up_to_one():
    mean_colour = np.array(MEAN) * 255
    frames = np.stack([np.full((16, 16, 3), mean_colour), np.full((16, 16, 3), mean_colour + np.array(STD) * 255)])
    spec = ClipSpec("segments", frames=2, stride=1, short_side=16, crop_size=8, mean=MEAN, std=STD)
    views = make_views(np.round(frames).astype(np.uint8), [[0, 1]], spec)
    assert views.shape == (1, 3, 2, 8, 8)
    assert torch.allclose(views[0, :, 0], torch.zeros(3, 8, 8), atol=0.01)
    assert torch.allclose(views[0, :, 1], torch.ones(3, 8, 8), atol=0.01)


def test_resize_keeps_the_aspect_ratio_and_crops_run_along_the_long_side():
    frames = torch.zeros(2, 3, 120, 160, dtype=torch.uint8)
    assert resize_short_side(frames, 96).shape == (2, 3, 96, 128)
    assert resize_short_side(frames.transpose(2, 3), 96).shape == (2, 3, 128, 96)
    assert crop_origins(256, 341, 224, 1) == [(16, 59)]
    assert crop_origins(256, 341, 224, 3) == [(16, 0), (16, 59), (16, 117)]
    assert crop_origins(341, 256, 224, 3) == [(0, 16), (59, 16), (117, 16)]


def test_load_clips_refuses_bad_view_counts(h264_video: Path):
    for clips, crops in [(0, 1), (1, 2)]:
        with pytest.raises(ValueError):
            load_clips(h264_video.read_bytes(), TSN_SPEC, clips=clips, crops=crops)


# --- limits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        (DecodeLimits(max_upload_bytes=1000), "too_large"),
        (DecodeLimits(max_duration_s=2.0), "too_long"),
        (DecodeLimits(max_pixels=160 * 120 - 1), "too_many_pixels"),
        (DecodeLimits(decode_timeout_s=0.0), "timeout"),
    ],
)
def test_limits_are_enforced(h264_video: Path, limits: DecodeLimits, reason: str):
    with pytest.raises(VideoError) as error:
        load_clips(h264_video.read_bytes(), TSN_SPEC, limits=limits)
    assert error.value.reason == reason


def test_header_limits_are_checked_by_probe(vp9_video: Path):
    with pytest.raises(VideoError) as error:
        probe(vp9_video.read_bytes(), DecodeLimits(max_duration_s=1.0))
    assert error.value.reason == "too_long"


# --- broken and odd input ------------------------------------------------------------------------------

REFUSED = [name for name, case in EDGE_CASES.items() if case.refusal]
DECODED = [name for name, case in EDGE_CASES.items() if not case.refusal]


def upright_codes(frames: dict[int, np.ndarray], rotation: int) -> dict[int, int]:
    """The index codes of frames turned upright by ``rotation`` degrees, read as they were stored."""
    return codes({index: np.rot90(frame, -rotation // 90) for index, frame in frames.items()})


@pytest.mark.parametrize("name", REFUSED)
def test_unusable_input_is_refused_for_its_reason(edge_case_bytes: dict[str, bytes], name: str):
    with pytest.raises(VideoError) as error:
        load_clips(edge_case_bytes[name], TSN_SPEC, limits=LIMITS)
    assert error.value.reason == EDGE_CASES[name].refusal
    assert str(error.value)


@pytest.mark.parametrize("name", DECODED)
def test_odd_input_decodes_to_its_frames(edge_case_bytes: dict[str, bytes], name: str):
    case = EDGE_CASES[name]
    decoded = read_frames(edge_case_bytes[name], TSN_SPEC.frame_indices, limits=LIMITS, min_frames=TSN_SPEC.frames)
    info = decoded.info
    assert decoded.truncated == case.truncated
    if case.truncated:  # the frames before the break, at least a clip's worth
        assert TSN_SPEC.frames <= info.num_frames < case.frames
    else:
        assert info.num_frames == case.frames
    assert decoded.frame_indices == TSN_SPEC.frame_indices(info.num_frames)
    assert info.rotation == case.rotation
    assert info.duration_s == pytest.approx(info.num_frames / info.fps)
    if case.index_coded:
        assert upright_codes(decoded.frames, info.rotation) == {index: index for index in decoded.frames}
    assert load_clips(edge_case_bytes[name], TSN_SPEC, limits=LIMITS).clips.shape == (1, 3, 8, 112, 112)
    parallel = read_frames(
        edge_case_bytes[name],
        TSN_SPEC.frame_indices,
        limits=LIMITS,
        min_frames=TSN_SPEC.frames,
        threads=ThreadBudget(2),
    )
    assert (parallel.info, parallel.frame_indices, parallel.truncated) == (info, decoded.frame_indices, case.truncated)
    assert all(np.array_equal(parallel.frames[index], frame) for index, frame in decoded.frames.items())


@pytest.mark.parametrize(("name", "image"), [("png", "PNG"), ("jpeg", "JPEG")])
def test_a_still_image_is_refused_by_name(edge_case_bytes: dict[str, bytes], name: str, image: str):
    with pytest.raises(VideoError, match=rf"still image \({image}\)"):
        load_clips(edge_case_bytes[name], TSN_SPEC)


def blank_payload(mp4: bytes) -> bytes:
    """The MP4 with every byte of its compressed frames (the mdat box's payload) zeroed: only headers are left."""
    start = mp4.index(b"mdat") + 4
    size = int.from_bytes(mp4[start - 8 : start - 4], "big") - 8
    return mp4[:start] + bytes(size) + mp4[start + size :]


@pytest.mark.parametrize("name", ["one_hour_at_1_fps", "oversized"])
def test_duration_and_frame_size_are_refused_from_the_headers(edge_case_bytes: dict[str, bytes], name: str):
    # the frames are gone: a refusal for the duration or the size can only come from the headers
    with pytest.raises(VideoError) as blank_error:
        load_clips(blank_payload(edge_case_bytes[name]), TSN_SPEC, limits=LIMITS)
    assert blank_error.value.reason == EDGE_CASES[name].refusal
    with pytest.raises(VideoError) as within_limits:  # the same blanking leaves nothing to decode
        load_clips(blank_payload(coded_video()), TSN_SPEC, limits=LIMITS)
    assert within_limits.value.reason == "no_frames"


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_frames_are_turned_as_the_display_matrix_says(rotation: int):
    data = coded_video(8, height=64, width=128, rotation=rotation)
    stored = decode_all(data)  # PyAV's frames as stored, not turned
    decoded = read_frames(data, lambda num_frames: [list(range(num_frames))])
    assert decoded.info.rotation == rotation % 360
    for index, frame in decoded.frames.items():  # PyAV's rotation is counterclockwise, as np.rot90's
        assert np.array_equal(frame, np.rot90(stored[index], rotation // 90))


def test_a_variable_frame_rate_reports_its_average_rate_and_the_time_it_plays():
    timestamps = vfr_timestamps()  # in 1/100 s
    data = coded_video(container_format="matroska", fps=100, timestamps=timestamps)
    info = read_frames(data, TSN_SPEC.frame_indices).info
    span_s = timestamps[-1] / 100
    assert info.fps == pytest.approx((len(timestamps) - 1) / span_s)
    assert info.duration_s == pytest.approx(len(timestamps) * span_s / (len(timestamps) - 1))


def test_frames_that_grow_mid_stream_within_the_limit_are_converted_to_the_header_size(
    edge_case_bytes: dict[str, bytes],
):
    decoded = read_frames(edge_case_bytes["size_change"], lambda num_frames: [list(range(num_frames))])
    assert (decoded.info.num_frames, decoded.truncated) == (32, False)
    assert {frame.shape for frame in decoded.frames.values()} == {(64, 64, 3)}
    assert codes(decoded.frames) == {index: index for index in range(32)}


@pytest.fixture(scope="module")
def faststart_mp4(coded_frames: np.ndarray) -> bytes:
    """H.264 MP4 with its index at the front: cut short, the index still lists every frame."""
    return encode_video(coded_frames, gop=16, container_options={"movflags": "faststart"})


def test_a_cut_that_leaves_holes_in_presentation_order_ends_the_video_at_the_first_hole(faststart_mp4: bytes):
    with av.open(io.BytesIO(faststart_mp4)) as container:
        packet_ends = [packet.pos + packet.size for packet in container.demux(video=0) if packet.size]
    for end in packet_ends[12:24]:  # around the keyframe at 16, B-frames decoded after the P-frames they precede
        decoded = read_frames(faststart_mp4[:end], lambda num_frames: [list(range(num_frames))])
        assert decoded.truncated
        assert codes(decoded.frames) == {index: index for index in range(decoded.info.num_frames)}
        # sampled frames in two groups of pictures: decoded at once, they are the same
        plan = DENSE_SPEC.frame_indices
        alone, parallel = (read_frames(faststart_mp4[:end], plan, threads=ThreadBudget(n)) for n in (1, 2))
        assert (parallel.info, parallel.frame_indices, parallel.truncated) == (alone.info, alone.frame_indices, True)
        assert codes(parallel.frames) == {index: index for index in parallel.frames}


def test_every_bit_of_the_frame_code_survives_compression():
    first = 0b1010_1010_1010_1010 - 2
    frames = list(index_coded_frames(5, first=first))
    data = encode_video(frames, container_format="mp4", gop=16)
    assert [read_frame_index(frame) for frame in decode_all(data)] == list(range(first, first + 5))


def test_an_unexpected_error_while_reading_is_unreadable_naming_the_stage(monkeypatch: pytest.MonkeyPatch):
    def broken_index(*args: object) -> None:
        raise KeyError("a bug of the reader")

    monkeypatch.setattr(video_decode, "_read_index", broken_index)
    with pytest.raises(VideoError) as error:
        load_clips(coded_video(), TSN_SPEC, limits=LIMITS)
    assert error.value.reason == "unreadable"
    assert "while indexing its packets (KeyError)" in str(error.value)
    assert "a bug of the reader" in error.value.detail and "a bug of the reader" not in str(error.value)


def test_a_video_error_crosses_processes_whole():
    error = pickle.loads(pickle.dumps(VideoError("unreadable", "the message", "the traceback")))
    assert (error.reason, str(error), error.detail) == ("unreadable", "the message", "the traceback")
