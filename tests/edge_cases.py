"""Odd and broken uploads, made with PyAV, and what decoding each must give (test support: the service never
uses it, so it lives beside the tests; ``benchmarks/load.py`` imports it from here too).

The hardening tests send every one through a real server, and the load benchmark mixes them into its
traffic. ``EDGE_CASES`` maps a name to an ``EdgeCase``: a function making its bytes (deterministic, well
under a second), the reason ``load_clips`` refuses it under ``LIMITS`` (None: it decodes) and, for one that
decodes, the frames it holds. Frames show their index code (``clipwise.video.synthetic``) wherever they are large
enough to carry it. ``LIMITS`` are the defaults with a pixel limit low enough for a small "oversized" video.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate, cycle, islice

import av
import numpy as np

from clipwise.video.container import DecodeLimits, Reason
from clipwise.video.synthetic import encode_video, index_coded_frames

LIMITS = DecodeLimits(max_pixels=256 * 256, max_duration_s=600.0, decode_timeout_s=10.0)
SIZE, FRAMES, FPS, GOP = 64, 32, 25, 8
CUT_SIZE, CUT_FRAMES = (120, 160), 64  # files cut or corrupted part-way: large enough to keep some frames
VFR_STEPS = (2, 6)  # variable frame rate: frames 2 and 6 ticks of 1/100 s apart, in turn


@dataclass(frozen=True)
class EdgeCase:
    """An odd upload, and what decoding it under ``LIMITS`` gives."""

    make: Callable[[], bytes]
    refusal: Reason | None = None  # the VideoError reason; None: it decodes
    frames: int = FRAMES  # a decoded one: the frames it holds (truncated: the frames written, of which fewer are left)
    truncated: bool = False
    rotation: int = 0  # counterclockwise degrees of its display matrix
    index_coded: bool = True  # its frames show their index code


def coded_video(frames: int = FRAMES, height: int = SIZE, width: int = SIZE, *, first: int = 0, **options) -> bytes:
    """Index-coded frames ``first`` ... encoded at 25 fps with a keyframe every 8 frames (``options`` override:
    ``container_format``, ``codec``, ``pix_fmt``, ``timestamps``...)."""
    return encode_video(index_coded_frames(frames, height, width, first=first), **{"fps": FPS, "gop": GOP, **options})


def vfr_timestamps(frames: int = FRAMES) -> list[int]:
    """Timestamps in 1/100 s, ``VFR_STEPS`` apart in turn."""
    return list(accumulate(islice(cycle(VFR_STEPS), frames - 1), initial=0))


def _frame(array: np.ndarray, pts: int = 0) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(array, format="rgb24")
    frame.pts = pts
    return frame


def _cut_video(faststart: bool) -> bytes:
    """The first half of an MP4 whose index (moov) is at the end (lost), or at the front (kept)."""
    data = coded_video(CUT_FRAMES, *CUT_SIZE, container_options={"movflags": "faststart"} if faststart else None)
    return data[: len(data) // 2]


def _corrupt_mid_stream() -> bytes:
    """3000 random bytes over the compressed frames, a third of the way into an MP4 (index at the front)."""
    data = coded_video(CUT_FRAMES, *CUT_SIZE, container_options={"movflags": "faststart"})
    start = len(data) // 3
    return data[:start] + np.random.default_rng(1).bytes(3000) + data[start + 3000 :]


def _audio_only() -> bytes:
    """An MP4 holding one second of silent AAC audio, and no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _still_image(codec: str, pix_fmt: str) -> bytes:
    """One index-coded frame as an image file (PNG, or JPEG through the MJPEG encoder)."""
    context = av.CodecContext.create(codec, "w")
    context.width = context.height = SIZE
    context.pix_fmt = pix_fmt
    context.time_base = Fraction(1, FPS)
    frame = _frame(next(index_coded_frames(1, SIZE, SIZE))).reformat(format=pix_fmt)
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])


def _no_frames() -> bytes:
    """An AVI whose header declares an H.264 stream that holds no frame: zero duration."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avi") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        container.start_encoding()
    return buffer.getvalue()


def _tiny() -> bytes:
    """16 frames of 2×2 pixels (too small for the index code)."""
    frames = [np.full((2, 2, 3), 16 * index, np.uint8) for index in range(16)]
    return encode_video(frames, fps=FPS, gop=GOP)


def _one_hour() -> bytes:
    """An hour at 1 fps: 3600 flat 16×16 frames (cheap to encode, long by its header)."""
    return encode_video([np.full((16, 16, 3), 128, np.uint8)] * 3600, fps=1, gop=300)


def _streams(container_format: str, streams: list[tuple[str, str, list[np.ndarray]]]) -> bytes:
    """Several video streams, (encoder, pixel format, frames) each, frame i of every stream at time i / 25."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        encoders = []
        for encoder, pix_fmt, frames in streams:
            stream = container.add_stream(encoder, rate=FPS)
            stream.height, stream.width = frames[0].shape[:2]
            stream.pix_fmt = pix_fmt
            encoders.append(stream)
        for index in range(max(len(frames) for *_, frames in streams)):
            for stream, (*_, frames) in zip(encoders, streams, strict=True):
                if index < len(frames):
                    container.mux(stream.encode(_frame(frames[index], index)))
        for stream in encoders:
            container.mux(stream.encode(None))
    return buffer.getvalue()


def _two_video_streams() -> bytes:
    """Matroska with two H.264 streams of index-coded frames, 64×64 then 96×96: the first is the one decoded."""
    small, large = list(index_coded_frames(FRAMES, SIZE, SIZE)), list(index_coded_frames(FRAMES, 96, 96, first=100))
    return _streams("matroska", [("libx264", "yuv420p", small), ("libx264", "yuv420p", large)])


def _cover_art_first() -> bytes:
    """Matroska whose first video stream is a single picture (as cover art is), then the video."""
    cover = [np.zeros((SIZE, SIZE, 3), np.uint8)]
    frames = list(index_coded_frames(FRAMES, SIZE, SIZE))
    return _streams("matroska", [("mjpeg", "yuvj420p", cover), ("libx264", "yuv420p", frames)])


def _size_change() -> bytes:
    """MPEG-TS whose H.264 frames grow from 64×64 to 320×320 (over ``LIMITS``) half-way: the second half comes
    from another encoder, muxed into the same stream (the header describes the first)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        larger = av.CodecContext.create("libx264", "w")
        larger.width = larger.height = 320
        larger.pix_fmt = "yuv420p"
        larger.time_base = Fraction(1, FPS)
        half = FRAMES // 2
        for context, first, size in ((stream.codec_context, 0, SIZE), (larger, half, 320)):
            frames = enumerate(index_coded_frames(half, size, size, first=first), first)
            packets = [packet for pts, array in frames for packet in context.encode(_frame(array, pts))]
            for packet in packets + context.encode(None):
                packet.stream = stream
                container.mux(packet)
    return buffer.getvalue()


TAG = b"clipwise-tag"


def tagged_video(container_format: str, **options) -> bytes:
    """``coded_video`` with a title tag (``TAG``) on the container and on the stream."""
    return coded_video(container_format=container_format, metadata={"title": TAG.decode()}, **options)


def _tags_not_utf8(container_format: str) -> bytes:
    """Container and stream tags whose bytes are not UTF-8 (PyAV decodes tags as UTF-8 when it opens a file)."""
    return tagged_video(container_format).replace(TAG, b"\xff\xfe" + TAG[2:])


def _codec_without_decoder() -> bytes:
    """An MP4 whose video stream's codec tag ('avc1') is one no decoder knows."""
    return coded_video().replace(b"avc1", b"zzz1")


EDGE_CASES: dict[str, EdgeCase] = {
    "empty": EdgeCase(lambda: b"", "empty"),
    "random_bytes": EdgeCase(lambda: np.random.default_rng(0).bytes(20_000), "not_video"),
    "text": EdgeCase(lambda: b"a text file, not a video\n" * 40, "not_video"),
    "header_only": EdgeCase(lambda: coded_video()[:64], "undecodable"),
    "truncated_index_at_end": EdgeCase(lambda: _cut_video(faststart=False), "undecodable"),
    "truncated_index_at_front": EdgeCase(lambda: _cut_video(faststart=True), frames=CUT_FRAMES, truncated=True),
    "corrupt_mid_stream": EdgeCase(_corrupt_mid_stream, frames=CUT_FRAMES, truncated=True),
    "audio_only": EdgeCase(_audio_only, "not_video"),
    "png": EdgeCase(lambda: _still_image("png", "rgb24"), "not_video"),
    "jpeg": EdgeCase(lambda: _still_image("mjpeg", "yuvj420p"), "not_video"),
    "gif": EdgeCase(lambda: coded_video(16, container_format="gif", codec="gif", pix_fmt="rgb8", gop=None), frames=16),
    "gif_one_frame": EdgeCase(
        lambda: coded_video(1, container_format="gif", codec="gif", pix_fmt="rgb8", gop=None), frames=1
    ),
    "one_frame": EdgeCase(lambda: coded_video(1), frames=1),
    "zero_duration": EdgeCase(_no_frames, "no_frames"),
    "variable_frame_rate": EdgeCase(
        lambda: coded_video(container_format="matroska", fps=100, timestamps=vfr_timestamps())
    ),
    "rotated": EdgeCase(lambda: coded_video(height=SIZE, width=2 * SIZE, rotation=90), rotation=90),
    "tiny_2x2": EdgeCase(_tiny, frames=16, index_coded=False),
    "oversized": EdgeCase(lambda: coded_video(4, 320, 320), "too_many_pixels"),
    "ten_bit": EdgeCase(lambda: coded_video(pix_fmt="yuv420p10le")),
    "yuv444p": EdgeCase(lambda: coded_video(pix_fmt="yuv444p")),
    "alpha_vp9": EdgeCase(lambda: coded_video(container_format="webm", codec="vp9", pix_fmt="yuva420p")),
    "one_hour_at_1_fps": EdgeCase(_one_hour, "too_long", index_coded=False),
    "two_video_streams": EdgeCase(_two_video_streams),
    "cover_art_first": EdgeCase(_cover_art_first),
    "size_change": EdgeCase(_size_change, frames=FRAMES, truncated=True),
    "mkv": EdgeCase(lambda: coded_video(container_format="matroska")),
    "mov": EdgeCase(lambda: coded_video(container_format="mov")),
    "webm": EdgeCase(lambda: coded_video(container_format="webm", codec="vp9")),
    "avi": EdgeCase(lambda: coded_video(container_format="avi")),
    "tags_not_utf8_mkv": EdgeCase(lambda: _tags_not_utf8("matroska")),
    "tags_not_utf8_mp4": EdgeCase(lambda: _tags_not_utf8("mp4")),
    "codec_without_decoder": EdgeCase(_codec_without_decoder, "undecodable"),
}
