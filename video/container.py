"""Opening an upload and reading what its headers say, before anything is decoded.

The bytes are opened in memory (a read-only file over the caller's buffer, never a copy of it: no file path,
nothing shared between requests; metadata tags that are not UTF-8 read with their bad bytes replaced), with
FFmpeg restricted to ``ACCEPTED_FORMATS`` (playlist or script demuxers such as HLS or concat would open other
files or URLs named inside the upload), and the video stream FFmpeg calls best is picked (what ffmpeg and
ffprobe pick: a moving stream over a still picture such as cover art, then the first). Size, duration and pixel
limits are checked from the headers; the decoder itself refuses frames over the pixel limit, so a stream that
grows mid-way is cut there.

Failures: an error while opening is ``undecodable`` when the bytes start like a container format we accept and
``not_video`` otherwise (naming the format of a still image: a PNG or JPEG is refused, while a GIF is a video,
of one frame if need be); so is a video stream whose codec has no decoder here, or that has no time base. Any
other exception while reading the container (a bug, of PyAV's or ours, that some upload reaches) becomes
``unreadable`` through ``stage``, naming the stage it came from, with its traceback in ``detail``: an upload
never fails as a server error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import mmap
import time
import traceback
from collections.abc import Iterator
from typing import Literal, get_args

import av

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
AV_ERRORS = (av.error.FFmpegError, OSError)
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


DEFAULT_LIMITS = DecodeLimits()  # the default of every decoding function's ``limits``


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


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
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


class BufferFile(io.RawIOBase):
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


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise VideoError("timeout", f"decoding took longer than the {self.seconds:g} s limit")


def open_container(data: Buffer) -> av.container.InputContainer:
    """The bytes opened by one of ``ACCEPTED_FORMATS``' demuxers; metadata that is not UTF-8 is read with its
    bad bytes replaced (PyAV decodes every tag strictly while opening, otherwise)."""
    try:
        return av.open(BufferFile(data), mode="r", container_options=_OPEN_OPTIONS, metadata_errors="replace")
    except AV_ERRORS as error:
        head = bytes(data[:_HEAD_BYTES])
        if _looks_like_container(head):
            raise VideoError("undecodable", f"the video container cannot be read ({error})") from error
        raise VideoError("not_video", _not_video_message(head)) from error


def video_stream(container: av.container.InputContainer, limits: DecodeLimits) -> tuple[av.VideoStream, VideoInfo]:
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
        raise VideoError("too_long", too_long_message(limits))


def too_long_message(limits: DecodeLimits) -> str:
    return f"the video is longer than the {limits.max_duration_s:g} s limit"


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
