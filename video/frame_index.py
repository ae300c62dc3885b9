"""A video stream's frames, learnt from its packets without decoding them.

The video packets are demuxed without decoding (about 1% of the cost of decoding them) to learn each frame's
presentation timestamp and which frames are keyframes. Frame i is the frame with the i-th smallest pts, so a
stream that starts at a pts other than 0, B-frame reordering and a header without a frame count need no
arithmetic on time bases. Containers such as AVI store no presentation timestamps and FFmpeg makes pts up from
the decode order: when the codec reorders frames but the packets' pts never go back, the index says its
timestamps are not reliable and frames are counted in decoder output order instead. In a stream cut short (a
file truncated with its index at the front) the cut is in decode order, which with B-frames leaves holes in
presentation order: the last GOP is cut at its first hole.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from itertools import count, pairwise

import av


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


def frame_locator(index: FrameIndex) -> Callable[[av.VideoFrame], int | None]:
    """Frame -> frame index: by pts, or by counting from the first frame when the pts are made up."""
    if index.timestamps_reliable:
        return lambda frame: index.frame_at(frame.pts)
    counter = count()
    return lambda frame: next(counter)
