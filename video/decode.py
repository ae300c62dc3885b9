"""From uploaded bytes to model input, decoding only the frames the sampler picks.

A request goes through four steps, all inside one container that is closed on every path:

1. **Open** the bytes in memory (a read-only file over the caller's buffer, never a copy of it: no file path,
   nothing shared between requests; metadata tags that are not UTF-8 read with their bad bytes replaced), with
   FFmpeg restricted to ``ACCEPTED_FORMATS`` (playlist or script demuxers such as HLS or concat would open
   other files or URLs named inside the upload), and pick the video stream FFmpeg calls best (what ffmpeg
   and ffprobe pick: a moving stream over a still picture such as cover art, then the first). Size,
   duration and pixel limits are checked from the headers before anything is decoded; the decoder itself
   refuses frames over the pixel limit, so a stream that grows mid-way is cut there, and every frame is
   converted to the header's size.
2. **Index**: the video packets are demuxed without decoding (about 1% of the cost of decoding them) to
   learn each frame's presentation timestamp and which frames are keyframes. Frame i is the frame with
   the i-th smallest pts, so a stream that starts at a pts other than 0, B-frame reordering and a header
   without a frame count need no arithmetic on time bases. Packets an edit list discards, packets without
   a timestamp and packets before the first keyframe are not frames the decoder returns, so they are not
   counted. The duration limit is checked again against the timestamps as they come.
3. **Sample**: the plan (a sampler) picks frame indices from that exact frame count.
4. **Decode**: the wanted frames are split into *runs* where decoding seeks: a new run starts at a wanted
   frame whose keyframe lies beyond the frame after the previous wanted one (decoding forward is cheaper
   otherwise). A run is decoded from its keyframe and stops with the last packet its frames need: the
   decoder is then drained of the frames it holds back for reordering rather than fed more. Runs share no
   decoding work, so they are decoded at once on as many threads as the caller's ``ThreadBudget``
   (``clipwise.video.parallel``) spares, each thread with its own demuxer and decoder over the same bytes (PyAV
   releases the GIL while FFmpeg decodes), taking the next run when done with its last; each decoder runs
   on one thread. Seeks go to the keyframe's dts (never after its pts): where the demuxer lands before the
   keyframe, the packets up to it are skipped undecoded; where it lands past it (seeking by bisection), it
   is sent back to the first frame and skips forward from there. For FFmpeg's decoders of codecs with
   B-frames, frames that are neither wanted nor a reference for others are not decoded at all
   (``skip_frame``, set packet by packet). Decoded frames are matched to indices by their pts; only wanted
   frames are converted to RGB, by one ``VideoReformatter`` per thread, and when the caller names a short
   side (``load_clips``: the model's) they are scaled to it in the same conversion, never made full-size
   RGB first. Containers such as AVI store no presentation timestamps and FFmpeg makes pts up from the
   decode order: when the codec reorders frames but the packets' pts never go back, frames are counted in
   decoder output order from the start instead, without seeking.

Rotation: frames are turned upright as their display matrix says (phones store portrait video as
landscape frames plus a rotation; players, and ``ffmpeg``, turn them). The rotation of the first decoded
frame holds for the whole request, rounded to a quarter turn; mirroring is ignored. The reported size is
the stored one, the rotation is reported beside it.

Timing: the frame rate reported is the average over the frames found (from their timestamps, so a
variable frame rate gives its true average, not the container's nominal rate) and the duration is the
frame count over it.

Failures: an error while opening is ``undecodable`` when the bytes start like a container format we
accept and ``not_video`` otherwise (naming the format of a still image: a PNG or JPEG is refused, while a
GIF is a video, of one frame if need be); so is a video stream whose codec has no decoder here, or that has
no time base. Any other exception while reading the container (a bug, of PyAV's or ours, that some upload
reaches) becomes ``unreadable``, naming the stage it came from, with its traceback in ``detail``: an upload
never fails as a server error. Should the fast path (seeks, skipped frames) miss a wanted
frame, it is decoded the plain way, forward from the start. Should that fail too (a decoding error, or a
frame the decoder does not return), the stream ends there: the frames before it are kept when there are at
least ``min_frames`` of them, the sampler plans again over them and the result is marked ``truncated``. In a
stream cut short (a file truncated with its index at the front) the cut is in decode order, which with
B-frames leaves holes in presentation order: the last GOP is cut at its first hole. A Matroska file that
simply ends early, without an error, reads as a shorter video: its header has no frame count to compare
with. The decode wall time is checked at every packet.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import mmap
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial
from itertools import chain, count, pairwise
from typing import Literal, get_args

import av
import numpy as np
import torch
from av.video.reformatter import Interpolation, VideoReformatter

from clipwise.video.parallel import SINGLE_THREAD, ThreadBudget, share_work
from clipwise.video.sampling import ClipSpec
from clipwise.video.transforms import CROP_COUNTS, make_views, short_side_size

# FFmpeg demuxer names ("mov,mp4,m4a,3gp,3g2,mj2" matches "mov"); anything else is refused before its header is read
ACCEPTED_FORMATS = ("mov", "mp4", "matroska", "webm", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "gif")
_OPEN_OPTIONS = {"format_whitelist": ",".join(ACCEPTED_FORMATS)}
Reason = Literal[
    "empty",
    "too_large",
    "not_video",
    "undecodable",
    "too_long",
    "too_many_pixels",
    "timeout",
    "no_frames",
    "unreadable",
    "crashed",
    "overran",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
Buffer = bytes | bytearray | mmap.mmap  # an upload, read in place (never copied to be opened)
_HEAD_BYTES = 256  # what telling a container format or an image by its first bytes reads
_AV_ERRORS = (av.error.FFmpegError, OSError)
# ... and, while demuxing, PyAV's IndexError for a packet of a stream that appeared after the header was read
_DEMUX_ERRORS = (*_AV_ERRORS, IndexError)
# How frames are scaled while they are converted to RGB (``read_frames(short_side=...)``): of swscale's filters,
# the closest to video.transforms.resize_short_side (antialiased bilinear) on downscaling
SCALING = Interpolation.BILINEAR
# FFmpeg's own decoders of codecs with B-frames, which apply skip_frame to the very packet it is set for
# (libdav1d, for one, applies it frames later and would drop wanted frames)
_SKIPS_PER_PACKET = ("h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4")
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}
_ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide")  # first box of an MP4 / QuickTime file
_MAGIC_PREFIXES = (
    b"\x1a\x45\xdf\xa3",  # Matroska / WebM (EBML)
    b"RIFF",  # AVI (checked for "AVI " below)
    b"FLV",
    b"OggS",
    b"GIF8",
    b"\x00\x00\x01\xba",  # MPEG program stream
    b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",  # ASF / WMV
)


class VideoError(Exception):
    """An upload that cannot be made into clips. ``reason`` is one of ``REASONS``; str() explains it.
    ``detail``: for the server's log only (the traceback of an unexpected error), never for the client."""

    def __init__(self, reason: Reason, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.reason, self.detail = reason, detail

    def __reduce__(self) -> tuple[type[VideoError], tuple[Reason, str, str]]:
        return VideoError, (self.reason, str(self), self.detail)  # whole across processes


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """What one request may cost. The service sets them from its settings."""

    max_upload_bytes: int = 200 * 1024 * 1024
    max_duration_s: float = 600.0
    max_pixels: int = 4096 * 2160  # width * height
    decode_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """The video stream as read: from the headers (``probe``) or from its frames (``read_frames``)."""

    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    num_frames: int
    rotation: int = 0  # degrees the frames were turned counterclockwise to show upright; unknown (0) in probe


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


@dataclasses.dataclass
class LoadedClips:
    """Model input made from an upload, with what it took to make it."""

    clips: torch.Tensor  # (clips * crops, 3, T, crop, crop) float32, normalised, clip-major
    info: VideoInfo
    frame_indices: list[list[int]]  # per temporal clip, the frame index of each of its T frames
    frames_decoded: int
    decode_ms: float
    preprocess_ms: float
    truncated: bool = False


@dataclasses.dataclass(frozen=True)
class PacketInfo:
    """What the index keeps of one video packet."""

    pts: int
    dts: int | None
    keyframe: bool


class FrameIndex:
    """A video stream's frames, learnt from its packets without decoding them.

    Frame i is the frame with the i-th smallest pts. ``keyframes`` lists the frames decoding can start
    from; ``timestamps_reliable`` is False when FFmpeg made the pts up (see the module docstring);
    ``complete`` is False when the demuxer stopped at an error.
    """

    def __init__(self, packets: list[PacketInfo], time_base: Fraction, *, reorders: bool, complete: bool) -> None:
        """``packets`` in decode order, timestamps in ``time_base``; ``reorders``: the codec outputs frames in
        another order."""
        self.complete, self.time_base = complete, time_base
        if not complete:
            packets = _cut_at_hole(packets)
        self.pts = sorted({packet.pts for packet in packets})
        self._frame_at = {pts: i for i, pts in enumerate(self.pts)}
        self._packet_number = {packet.pts: number for number, packet in enumerate(packets)}
        self._seek_timestamp = {
            self._frame_at[packet.pts]: packet.pts if packet.dts is None else packet.dts
            for packet in packets
            if packet.keyframe
        }
        self.keyframes = sorted(self._seek_timestamp)
        goes_back = any(later.pts < earlier.pts for earlier, later in pairwise(packets))
        self.timestamps_reliable = goes_back or not reorders

    @property
    def count(self) -> int:
        return len(self.pts)

    def span_s(self, num_frames: int) -> Fraction:
        """Seconds from the first frame to frame ``num_frames - 1``."""
        return (self.pts[num_frames - 1] - self.pts[0]) * self.time_base

    def frame_at(self, pts: int | None) -> int | None:
        """The index of the frame with this pts; None when no frame has it."""
        return self._frame_at.get(pts)

    def packet_number(self, pts: int | None) -> int | None:
        """The decode-order number of the packet of the frame with this pts; None when no frame has it."""
        return self._packet_number.get(pts)

    def keyframe_before(self, index: int) -> int:
        """The last keyframe at or before frame ``index`` (the first keyframe for frames before it)."""
        return self.keyframes[max(bisect.bisect_right(self.keyframes, index) - 1, 0)]

    def seek_timestamp(self, keyframe: int) -> int:
        """The timestamp to seek to for keyframe ``keyframe``: its dts, never after its pts, so demuxers that
        seek by either land at or before the keyframe (the reader skips packets up to it without decoding)."""
        return self._seek_timestamp[keyframe]


def probe(data: Buffer, limits: DecodeLimits = DecodeLimits()) -> VideoInfo:
    """The video stream's description from the headers alone (the frame count estimated from duration × fps
    when the header has none); raises ``VideoError`` for input ``load_clips`` would refuse up front."""
    with _open_video(data, limits) as (_, _, info):
        return info


def load_clips(
    data: Buffer,
    spec: ClipSpec,
    *,
    clips: int = 1,
    crops: int = 1,
    limits: DecodeLimits = DecodeLimits(),
    threads: ThreadBudget = SINGLE_THREAD,
) -> LoadedClips:
    """Decode an upload into ``clips`` temporal clips × ``crops`` spatial crops of model input, the frames
    converted straight to the model's short side (see ``read_frames``).

    Raises ``VideoError`` for input that cannot be used and ``ValueError`` for bad ``clips`` / ``crops``.
    """
    if clips < 1 or crops not in CROP_COUNTS:
        raise ValueError(f"clips must be positive and crops one of {CROP_COUNTS}; got {clips} and {crops}")
    decoded = read_frames(
        data,
        lambda num_frames: spec.frame_indices(num_frames, clips=clips),
        limits=limits,
        min_frames=spec.frames,
        threads=threads,
        short_side=spec.short_side,
    )
    started = time.perf_counter()
    frames, positions = decoded.stacked()
    views = make_views(frames, positions, spec, crops)
    return LoadedClips(
        clips=views,
        info=decoded.info,
        frame_indices=decoded.frame_indices,
        frames_decoded=decoded.frames_decoded,
        decode_ms=decoded.decode_ms,
        preprocess_ms=(time.perf_counter() - started) * 1000,
        truncated=decoded.truncated,
    )


def read_frames(
    data: Buffer,
    plan: Callable[[int], list[list[int]]],
    *,
    limits: DecodeLimits = DecodeLimits(),
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
    deadline = _Deadline(limits.decode_timeout_s)
    with _open_video(data, limits) as (container, stream, header):
        with _stage("indexing its packets"):
            index = _read_index(container, stream, limits, deadline)
        if index.count == 0:
            raise VideoError("no_frames", "the video stream holds no decodable frame")
        reader = _FrameReader(container, stream, index, deadline, _converted_size(header, short_side))
        num_frames, fast = index.count, seek and index.timestamps_reliable
        frame_indices = _checked(plan(num_frames), num_frames)
        with _stage("decoding its frames"):
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


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """The safety net of reading a container: any exception other than a ``VideoError`` raised inside becomes
    one, ``unreadable``, naming the stage ``name`` (an upload must never fail as a server error; the traceback
    goes to ``detail`` for the log)."""
    try:
        yield
    except VideoError:
        raise
    except Exception as error:
        message = f"the video could not be read while {name} ({type(error).__name__})"
        raise VideoError("unreadable", message, traceback.format_exc()) from error


class _BufferFile(io.RawIOBase):
    """A read-only file over a buffer, without copying it (``io.BytesIO`` copies a bytearray): each thread's
    container opens its own over the same upload."""

    def __init__(self, data: Buffer) -> None:
        self._view = memoryview(data).cast("B")
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:
        chunk = self._view[self._position : self._position + len(target)]
        target[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = (0, self._position, len(self._view))[whence]
        self._position = max(origin + offset, 0)
        return self._position

    def tell(self) -> int:
        return self._position


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise VideoError("timeout", f"decoding took longer than the {self.seconds:g} s limit")


class _FrameReader:
    """Decodes chosen frames of one open stream into upright RGB arrays of one size, with one reused converter."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.VideoStream,
        index: FrameIndex,
        deadline: _Deadline,
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
        locate = _locator(self.index)
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


def _cut_at_hole(packets: list[PacketInfo]) -> list[PacketInfo]:
    """The packets of a stream cut short, less the frames of its last GOP that follow a hole.

    The cut is in decode order; with B-frames it leaves holes in presentation order, found as a pts step
    more than 1.5 times the usual one. Earlier GOPs were read whole (their packets precede the last keyframe).
    """
    steps = Counter(later - earlier for earlier, later in pairwise(sorted(packet.pts for packet in packets)))
    if not steps:
        return packets
    usual_step = steps.most_common(1)[0][0]
    last_key = max(number for number, packet in enumerate(packets) if packet.keyframe)
    tail = sorted(packet.pts for packet in packets[last_key:])
    holes = [earlier for earlier, later in pairwise(tail) if later - earlier > 1.5 * usual_step]
    if not holes:
        return packets
    return packets[:last_key] + [packet for packet in packets[last_key:] if packet.pts <= holes[0]]


def _locator(index: FrameIndex) -> Callable[[av.VideoFrame], int | None]:
    """Frame -> frame index: by pts, or by counting from the first frame when the pts are made up."""
    if index.timestamps_reliable:
        return lambda frame: index.frame_at(frame.pts)
    counter = count()
    return lambda frame: next(counter)


def _read_index(
    container: av.container.InputContainer, stream: av.VideoStream, limits: DecodeLimits, deadline: _Deadline
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
                raise VideoError("too_long", _too_long_message(limits))
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
    with _stage("opening it"):
        container = _open_container(data)
    with container:
        with _stage("reading its headers"):
            stream, info = _video_stream(container, limits)
        yield container, stream, info


def _open_container(data: Buffer) -> av.container.InputContainer:
    """The bytes opened by one of ``ACCEPTED_FORMATS``' demuxers; metadata that is not UTF-8 is read with its
    bad bytes replaced (PyAV decodes every tag strictly while opening, otherwise)."""
    try:
        return av.open(_BufferFile(data), mode="r", container_options=_OPEN_OPTIONS, metadata_errors="replace")
    except _AV_ERRORS as error:
        head = bytes(data[:_HEAD_BYTES])
        if _looks_like_container(head):
            raise VideoError("undecodable", f"the video container cannot be read ({error})") from error
        raise VideoError("not_video", _not_video_message(head)) from error


def _video_stream(container: av.container.InputContainer, limits: DecodeLimits) -> tuple[av.VideoStream, VideoInfo]:
    """The best video stream, set to decode on one thread with frames over the pixel limit refused, and what
    its headers say; ``undecodable`` for a stream without a decoder or a time base."""
    stream = container.streams.best("video")
    if stream is None:
        raise VideoError("not_video", "the upload has no video stream")
    if stream.codec_context is None:
        raise VideoError("undecodable", "the video stream's codec has no decoder here")
    if not stream.time_base:
        raise VideoError("undecodable", "the video stream has no time base")
    # one thread per decoder: parallelism comes from decoding runs at once (``read_frames(threads=...)``);
    # FFmpeg's frame threads only add latency to each seek, and their count would escape the budget
    stream.codec_context.thread_count = 1
    stream.codec_context.options = {"max_pixels": str(limits.max_pixels)}
    info = _header_info(container, stream)
    _check_header(info, limits)
    return stream, info


def _header_info(container: av.container.InputContainer, stream: av.VideoStream) -> VideoInfo:
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if stream.duration:
        duration = float(stream.duration * stream.time_base)
    else:
        duration = (container.duration or 0) / av.time_base
    context = stream.codec_context
    num_frames = stream.frames or round(duration * fps)
    return VideoInfo(duration, fps, context.width, context.height, context.name, num_frames)


def _check_header(info: VideoInfo, limits: DecodeLimits) -> None:
    if info.width * info.height == 0:
        raise VideoError("undecodable", "the video stream has no frame size")
    if info.width * info.height > limits.max_pixels:
        raise VideoError(
            "too_many_pixels", f"{info.width}x{info.height} frames exceed the limit of {limits.max_pixels} pixels"
        )
    if info.duration_s > limits.max_duration_s:
        raise VideoError("too_long", _too_long_message(limits))


def _too_long_message(limits: DecodeLimits) -> str:
    return f"the video is longer than the {limits.max_duration_s:g} s limit"


def _stream_info(header: VideoInfo, index: FrameIndex, num_frames: int, rotation: int | None) -> VideoInfo:
    """The header's description corrected by the first ``num_frames`` frames found: their count, their average
    rate (the header's for a single frame), the duration they play and their rotation."""
    span = index.span_s(num_frames)
    fps = (num_frames - 1) / span if span > 0 else Fraction(header.fps)
    duration = num_frames / fps if fps else header.duration_s
    return dataclasses.replace(
        header, duration_s=float(duration), fps=float(fps), num_frames=num_frames, rotation=rotation or 0
    )


def _not_video_message(data: bytes) -> str:
    image = next((name for signature, name in _IMAGE_SIGNATURES.items() if data.startswith(signature)), None)
    if image is not None:
        return f"the upload is a still image ({image}), not a video"
    return "the upload is not a video in a container format Clipwise reads"


def _looks_like_container(data: bytes) -> bool:
    """Whether the bytes start like a file of one of ``ACCEPTED_FORMATS`` (a broken video, not another file)."""
    if data[4:8] in _ISO_BOX_TYPES:
        return True
    if data.startswith(b"RIFF"):
        return data[8:12] == b"AVI "
    is_transport_stream = data[:1] == b"G" and data[188:189] == b"G"
    return is_transport_stream or data.startswith(_MAGIC_PREFIXES)


def _checked(frame_indices: list[list[int]], num_frames: int) -> list[list[int]]:
    if not all(0 <= index < num_frames for clip in frame_indices for index in clip):
        raise ValueError(f"the plan names frames outside the video's {num_frames}: {frame_indices}")
    return frame_indices


def _flatten(frame_indices: list[list[int]]) -> list[int]:
    """The distinct frame indices of a plan, sorted."""
    return sorted({index for clip in frame_indices for index in clip})
