"""Decoding only the frames a sampling plan picks, from uploaded bytes, inside one container closed on every path.

A request is opened and its headers checked (``clipwise.video.container``), its video packets indexed without
decoding (``clipwise.video.frame_index``; the duration limit is checked again against the timestamps as they
come), the plan (a sampler) picks frame indices from that exact frame count, and the frames are decoded here.

Decoding: the wanted frames are split into *runs* where decoding seeks: a new run starts at a wanted frame whose
keyframe lies beyond the frame after the previous wanted one (decoding forward is cheaper otherwise). A run is
decoded from its keyframe and stops with the last packet its frames need: the decoder is then drained of the
frames it holds back for reordering rather than fed more. Runs share no decoding work, so they are decoded at
once on as many threads as the caller's ``ThreadBudget`` (``clipwise.video.parallel``) spares, each thread with
its own demuxer and decoder over the same bytes (PyAV releases the GIL while FFmpeg decodes), taking the next
run when done with its last; each decoder runs on one thread. Seeks go to the keyframe's dts (never after its
pts): where the demuxer lands before the keyframe, the packets up to it are skipped undecoded; where it lands
past it (seeking by bisection), it is sent back to the first frame and skips forward from there. For FFmpeg's
decoders of codecs with B-frames, frames that are neither wanted nor a reference for others are not decoded at
all (``skip_frame``, set packet by packet). Decoded frames are matched to indices by their pts (or counted in
decoder output order where the index says the pts are made up, without seeking); only wanted frames are
converted to RGB, by one ``VideoReformatter`` per thread, and when the caller names a short side
(``load_clips``: the model's) they are scaled to it in the same conversion, never made full-size RGB first.
Every frame is converted to the header's size.

Rotation: frames are turned upright as their display matrix says (phones store portrait video as landscape
frames plus a rotation; players, and ``ffmpeg``, turn them). The rotation of the first decoded frame holds for
the whole request, rounded to a quarter turn; mirroring is ignored. The reported size is the stored one, the
rotation is reported beside it.

Timing: the frame rate reported is the average over the frames found (from their timestamps, so a variable
frame rate gives its true average, not the container's nominal rate) and the duration is the frame count over it.

Failures: should the fast path (seeks, skipped frames) miss a wanted frame, it is decoded the plain way, forward
from the start. Should that fail too (a decoding error, or a frame the decoder does not return), the stream ends
there: the frames before it are kept when there are at least ``min_frames`` of them, the sampler plans again
over them and the result is marked ``truncated``. A Matroska file that simply ends early, without an error,
reads as a shorter video: its header has no frame count to compare with. The decode wall time is checked at
every packet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial
from itertools import chain, pairwise

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from clipwise.video.container import (
    AV_ERRORS,
    DEFAULT_LIMITS,
    Buffer,
    Deadline,
    DecodeLimits,
    VideoError,
    VideoInfo,
    open_container,
    stage,
    too_long_message,
    video_stream,
)
from clipwise.video.frame_index import FrameIndex, PacketInfo, frame_locator
from clipwise.video.parallel import SINGLE_THREAD, ThreadBudget, share_work
from clipwise.video.transforms import short_side_size

# ... and, while demuxing, PyAV's IndexError for a packet of a stream that appeared after the header was read
_DEMUX_ERRORS = (*AV_ERRORS, IndexError)
# How frames are scaled while they are converted to RGB (``read_frames(short_side=...)``): of swscale's filters,
# the closest to video.transforms.resize_short_side (antialiased bilinear) on downscaling
SCALING = Interpolation.BILINEAR
# FFmpeg's own decoders of codecs with B-frames, which apply skip_frame to the very packet it is set for
# (libdav1d, for one, applies it frames later and would drop wanted frames)
_SKIPS_PER_PACKET = ("h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4")


@dataclasses.dataclass
class DecodedFrames:
    """The frames a sampling plan asked for."""

    info: VideoInfo
    frame_indices: list[list[int]]  # the plan: per clip, the frame index of each of its frames
    frames: dict[int, np.ndarray]  # frame index -> (H, W, 3) uint8 RGB, every index of the plan
    frames_decoded: int  # frames the decoder produced on the way, converted or not
    truncated: bool  # the stream broke or ended early; the plan covers the frames before that point
    decode_ms: float

    def stacked(self) -> tuple[np.ndarray, list[list[int]]]:
        """The planned frames as one (F, H, W, 3) array in index order, and each clip's positions in it."""
        order = _flatten(self.frame_indices)
        position = {index: i for i, index in enumerate(order)}
        frames = np.stack([self.frames[index] for index in order])
        return frames, [[position[index] for index in clip] for clip in self.frame_indices]


def probe(data: Buffer, limits: DecodeLimits = DEFAULT_LIMITS) -> VideoInfo:
    """The video stream's description from the headers alone (the frame count estimated from duration × fps
    when the header has none); raises ``VideoError`` for input ``load_clips`` would refuse up front."""
    with _open_video(data, limits) as (_, _, info):
        return info


def read_frames(
    data: Buffer,
    plan: Callable[[int], list[list[int]]],
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    min_frames: int = 1,
    seek: bool = True,
    threads: ThreadBudget = SINGLE_THREAD,
    short_side: int | None = None,
) -> DecodedFrames:
    """Decode the frames ``plan(num_frames)`` names, as RGB arrays.

    ``min_frames``: a stream that breaks part-way (a decoding error, or a frame the decoder does not
    return) is used when at least this many frames (or all of a shorter video) come before the break; the
    plan is then made again over those frames. ``seek=False`` decodes every frame forward from the first
    (the plain path the fast one is tested against). ``threads``: the budget the runs of frames between
    seeks are decoded in parallel from (one demuxer and decoder per thread). ``short_side``: the frames are
    scaled to it (the long side floored, as ``clipwise.video.transforms.resize_short_side`` does) while they are
    converted to RGB, instead of converted at their stored size.
    """
    started = time.perf_counter()
    deadline = Deadline(limits.decode_timeout_s)
    with _open_video(data, limits) as (container, stream, header):
        with stage("indexing its packets"):
            index = _read_index(container, stream, limits, deadline)
        if index.count == 0:
            raise VideoError("no_frames", "the video stream holds no decodable frame")
        reader = _FrameReader(container, stream, index, deadline, _converted_size(header, short_side))
        num_frames, fast = index.count, seek and index.timestamps_reliable
        frame_indices = _checked(plan(num_frames), num_frames)
        with stage("decoding its frames"):
            while missing := reader.missing(frame_indices):
                if fast:  # what the shortcuts miss (a keyframe that is none, say) is then read the plain way
                    _read_runs_in_parallel(reader, missing, data, limits, threads)
                    fast = False
                    continue
                broken_at = reader.read(missing, fast=False)
                failed = reader.missing(frame_indices)
                if not failed:
                    break
                # the stream broke, or the decoder did not return a frame: use the frames before that point
                num_frames = min(failed[0], num_frames if broken_at is None else broken_at)
                if num_frames == 0 or num_frames < min(min_frames, index.count):
                    raise VideoError("undecodable", f"the video stream breaks after {num_frames} frame(s)")
                frame_indices = _checked(plan(num_frames), num_frames)
        truncated = not index.complete or num_frames < index.count
    return DecodedFrames(
        info=_stream_info(header, index, num_frames, reader.rotation),
        frame_indices=frame_indices,
        frames={i: reader.frames[i] for i in _flatten(frame_indices)},
        frames_decoded=reader.decoded,
        truncated=truncated,
        decode_ms=(time.perf_counter() - started) * 1000,
    )


class _FrameReader:
    """Decodes chosen frames of one open stream into upright RGB arrays of one size, with one reused converter."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        index: FrameIndex,
        deadline: Deadline,
        size: tuple[int, int],
    ) -> None:
        """``size``: (width, height) every frame is converted to."""
        self.container, self.stream, self.index, self.deadline, self.size = container, stream, index, deadline, size
        self.skips_unreferenced = index.timestamps_reliable and stream.codec_context.name in _SKIPS_PER_PACKET
        self.converter = VideoReformatter()
        self.frames: dict[int, np.ndarray] = {}
        self.decoded = 0  # every frame the decoder returned
        self.rotation: int | None = None  # degrees (0, 90, 180 or 270), from the first frame converted

    def sibling(self, container: av.container.InputContainer, stream: av.VideoStream) -> _FrameReader:
        """A reader of the same stream, index, deadline and size through another open container."""
        return _FrameReader(container, stream, self.index, self.deadline, self.size)

    def absorb(self, other: _FrameReader) -> None:
        """Take the frames a sibling decoded, and count its work."""
        self.frames.update(other.frames)
        self.decoded += other.decoded
        self.rotation = other.rotation if self.rotation is None else self.rotation

    def read(self, targets: list[int], *, fast: bool) -> int | None:
        """Decode the frames ``targets`` (sorted indices) into ``frames``. Plain: forward from the first frame.
        Fast: ``targets`` are one run (``_runs``), decoded from the keyframe before the first, skipping frames
        nothing refers to. Returns None, or when the stream breaks, how many frames come before the break."""
        wanted = set(targets)
        last = -1
        try:
            for position, frame in self._frames_towards(targets, fast=fast):
                last = max(last, position)
                if position in wanted and position not in self.frames:
                    self.frames[position] = self._to_rgb(frame)
        except _DEMUX_ERRORS:
            return last + 1
        return None

    def read_runs(self, runs: Iterator[list[int]]) -> _FrameReader:
        """Decode run after run (the fast way) until ``runs`` ends; returns this reader."""
        for run in runs:
            self.read(run, fast=True)
        return self

    def missing(self, frame_indices: list[list[int]]) -> list[int]:
        return [index for index in _flatten(frame_indices) if index not in self.frames]

    def _frames_towards(self, targets: list[int], *, fast: bool) -> Iterator[tuple[int, av.VideoFrame]]:
        """(frame index, frame) for each frame decoded on the way to ``targets``, stopping after the last. The
        plain way starts at the first keyframe, which need not be frame 0 (frames shown before it may follow it
        in decode order)."""
        start = self.index.keyframe_before(targets[0]) if fast else self.index.keyframes[0]
        locate = frame_locator(self.index)
        for frame in self._decode_from(start, targets, fast=fast):
            position = locate(frame)
            if position is None or (fast and position < start):
                continue  # no frame of the index, or an open GOP's leading frame (its references are gone)
            yield position, frame
            if position >= targets[-1]:
                return

    def _decode_from(self, keyframe: int, targets: list[int], *, fast: bool) -> Iterator[av.VideoFrame]:
        """Frames decoded from keyframe ``keyframe`` on. When ``fast``, frames that are neither a target nor a
        reference for other frames are not decoded at all (``skip_frame``, set packet by packet), and once the
        last packet a target needs is in, the decoder is drained rather than fed the packets after it."""
        context = self.stream.codec_context
        wanted = set(targets)
        skip_unreferenced = fast and self.skips_unreferenced
        last_needed = max(self.index.packet_number(self.index.pts[target]) for target in targets) if fast else None
        for packet in self._packets_from(keyframe):
            self.deadline.check()
            unwanted = skip_unreferenced and self.index.frame_at(packet.pts) not in wanted
            context.skip_frame = "NONREF" if unwanted else "DEFAULT"
            yield from self._counted(packet.decode())
            if last_needed is not None and self.index.packet_number(packet.pts) == last_needed:
                yield from self._counted(context.decode(None))  # frames held back for reordering
                return

    def _counted(self, frames: list[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        for frame in frames:
            self.decoded += 1
            yield frame

    def _packets_from(self, keyframe: int) -> Iterator[av.Packet]:
        """The stream's packets in decode order from keyframe ``keyframe``'s packet on.

        The demuxer may land before that packet (packets up to it are skipped, not decoded) or, where it
        seeks by bisection, past it: then it seeks to the first frame and skips forward from there.
        """
        target = self.index.packet_number(self.index.pts[keyframe])
        for start in dict.fromkeys((keyframe, self.index.keyframes[0])):
            self.container.seek(self.index.seek_timestamp(start), stream=self.stream, backward=True)
            packets = self.container.demux(self.stream)
            for packet in packets:
                self.deadline.check()
                number = self.index.packet_number(packet.pts)
                if number is None or number < target:
                    continue
                if number > target:
                    break
                yield packet
                yield from packets
                return
        raise VideoError("undecodable", "seeking in the video stream does not reach its frames")

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self.rotation is None:
            self.rotation = round(frame.rotation / 90) % 4 * 90
        width, height = self.size
        if (width, height) == (frame.width, frame.height):
            converted = self.converter.reformat(frame, format="rgb24", threads=1)
        else:  # planar RGB: swscale scales into it twice as fast as into rgb24, to the same (H, W, 3) array
            converted = self.converter.reformat(frame, width, height, "gbrp", interpolation=SCALING, threads=1)
        rgb = converted.to_ndarray()
        return np.rot90(rgb, self.rotation // 90) if self.rotation else rgb


def _runs(index: FrameIndex, targets: list[int]) -> list[list[int]]:
    """``targets`` (sorted) split where decoding seeks: before a target whose keyframe lies beyond the frame
    after the previous target. Runs share no decoding work, so they can be decoded in any order, at once."""
    runs = [[targets[0]]]
    for previous, target in pairwise(targets):
        if index.keyframe_before(target) > previous + 1:
            runs.append([target])
        else:
            runs[-1].append(target)
    return runs


def _read_runs_in_parallel(
    reader: _FrameReader, targets: list[int], data: Buffer, limits: DecodeLimits, threads: ThreadBudget
) -> None:
    """Decode the runs of ``targets`` the fast way into ``reader``: on its own thread and, as the budget allows,
    on helper threads that each open the bytes again (one demuxer and decoder per thread)."""
    runs = _runs(reader.index, targets)
    with threads.lease(len(runs)) as count:
        if count > 1:  # the longest runs first, so that the threads finish close together
            runs.sort(key=lambda run: reader.index.keyframe_before(run[0]) - run[-1])
        helpers = [partial(_read_runs_elsewhere, reader, data, limits) for _ in range(count - 1)]
        for helper in share_work(runs, [reader.read_runs, *helpers])[1:]:
            if helper is not None:
                reader.absorb(helper)


def _read_runs_elsewhere(
    reader: _FrameReader, data: Buffer, limits: DecodeLimits, runs: Iterator[list[int]]
) -> _FrameReader | None:
    """``reader.read_runs`` through a container of its own, opened only if a run is left to take; returns the
    reader that holds the frames (None when the others had taken every run)."""
    first = next(runs, None)
    if first is None:
        return None
    with _open_video(data, limits) as (container, stream, _):
        return reader.sibling(container, stream).read_runs(chain([first], runs))


def _converted_size(header: VideoInfo, short_side: int | None) -> tuple[int, int]:
    """(width, height) the frames are converted to: the stored size, or its short side made ``short_side``."""
    if short_side is None:
        return header.width, header.height
    height, width = short_side_size(header.height, header.width, short_side)
    return width, height


def _read_index(
    container: av.container.InputContainer, stream: av.VideoStream, limits: DecodeLimits, deadline: Deadline
) -> FrameIndex:
    """The frame index of the stream, from all its packets up to the end or to the first broken one."""
    packets: list[PacketInfo] = []
    payloads = 0
    complete = False
    longest = limits.max_duration_s / stream.time_base  # in pts units: an int compares fast, a Fraction does not
    try:
        for packet in container.demux(stream):
            deadline.check()
            if packet.is_corrupt:
                break
            payloads += packet.size > 0
            if packet.size == 0 or packet.pts is None or packet.is_discard or not (packets or packet.is_keyframe):
                continue
            packets.append(PacketInfo(packet.pts, packet.dts, packet.is_keyframe))
            if packet.pts - packets[0].pts > longest:
                raise VideoError("too_long", too_long_message(limits))
        else:
            complete = payloads >= stream.frames  # fewer packets than the header counts: cut short
    except _DEMUX_ERRORS:
        pass
    return FrameIndex(packets, stream.time_base, reorders=stream.codec_context.has_b_frames, complete=complete)


@contextlib.contextmanager
def _open_video(
    data: Buffer, limits: DecodeLimits
) -> Iterator[tuple[av.container.InputContainer, av.VideoStream, VideoInfo]]:
    """The open container, its best video stream (decoded on one thread, frames over the pixel limit refused)
    and what its headers say."""
    if not data:
        raise VideoError("empty", "the upload is empty")
    if len(data) > limits.max_upload_bytes:
        raise VideoError("too_large", f"the upload is larger than {limits.max_upload_bytes} bytes")
    with stage("opening it"):
        container = open_container(data)
    with container:
        with stage("reading its headers"):
            stream, info = video_stream(container, limits)
        yield container, stream, info


def _stream_info(header: VideoInfo, index: FrameIndex, num_frames: int, rotation: int | None) -> VideoInfo:
    """The header's description corrected by the first ``num_frames`` frames found: their count, their average
    rate (the header's for a single frame), the duration they play and their rotation."""
    span = index.span_s(num_frames)
    fps = (num_frames - 1) / span if span > 0 else Fraction(header.fps)
    duration = num_frames / fps if fps else header.duration_s
    return dataclasses.replace(
        header, duration_s=float(duration), fps=float(fps), num_frames=num_frames, rotation=rotation or 0
    )


def _checked(frame_indices: list[list[int]], num_frames: int) -> list[list[int]]:
    if not all(0 <= index < num_frames for clip in frame_indices for index in clip):
        raise ValueError(f"the plan names frames outside the video's {num_frames}: {frame_indices}")
    return frame_indices


def _flatten(frame_indices: list[list[int]]) -> list[int]:
    """The distinct frame indices of a plan, sorted."""
    return sorted({index for clip in frame_indices for index in clip})
