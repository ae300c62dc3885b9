"""Mutated uploads for fuzzing the service (test support, shared by ``tests/test_fuzz_uploads.py`` and
``benchmarks/fuzz_uploads.py``).

``corpus()`` makes small videos of several containers and codecs with PyAV (two with metadata tags);
``mutants(corpus, seed)`` yields them mutated, the same mutations for the same seed, one mutation each: bytes
overwritten at random, a metadata tag's bytes replaced, a codec identifier swapped, the file cut at a
random offset, or a header field (frame size, frame count, time scale, duration...) set to an extreme.
``unexpected_answer`` says what is wrong with the server's answer to one: only a 2xx or a JSON 4xx is right.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
from edge_cases import TAG, coded_video, tagged_video

# Muxers write no random ids or dates (libx264's output still varies a little from run to run, so a seed names
# the same mutations of nearly the same videos)
BITEXACT = {"container_options": {"fflags": "+bitexact"}}
CORPUS: dict[str, Callable[[], bytes]] = {
    "mp4_h264": lambda: coded_video(**BITEXACT),
    "mp4_h264_tagged": lambda: tagged_video("mp4", **BITEXACT),
    "mkv_h264_tagged": lambda: tagged_video("matroska", **BITEXACT),
    "mkv_vp8": lambda: coded_video(container_format="matroska", codec="vp8", **BITEXACT),
    "webm_vp9": lambda: coded_video(container_format="webm", codec="vp9", **BITEXACT),
    "mov_h264": lambda: coded_video(container_format="mov", **BITEXACT),
    "avi_mpeg4": lambda: coded_video(container_format="avi", codec="mpeg4", **BITEXACT),
    "ts_h264": lambda: coded_video(container_format="mpegts", **BITEXACT),
    "gif": lambda: coded_video(16, container_format="gif", codec="gif", pix_fmt="rgb8", gop=None, **BITEXACT),
}
# Codec identifiers as containers store them: MP4 sample entries, Matroska codec ids, AVI FourCCs
CODEC_IDS = (b"avc1", b"avcC", b"vp08", b"vp09", b"mp4v", b"hvc1", b"V_MPEG4/ISO/AVC", b"V_VP8", b"V_VP9", b"FMP4")
# Header fields: (marker, offset of the field after the marker's end, width in bytes). ISO BMFF boxes (mvhd /
# mdhd time scale and duration, tkhd and sample entry frame size, sample and time-to-sample counts), Matroska
# elements (time scale, duration, default duration; the Video element's first children: pixel width and
# height), AVI headers (frame period, frame count, frame size).
HEADER_FIELDS = (
    (b"mvhd", 12, 4), (b"mvhd", 16, 4), (b"mdhd", 12, 4), (b"mdhd", 16, 4),
    (b"tkhd", 76, 4), (b"tkhd", 80, 4), (b"avc1", 24, 2), (b"avc1", 26, 2), (b"vp09", 24, 2),
    (b"stsz", 8, 4), (b"stts", 4, 4), (b"stts", 8, 4), (b"stts", 12, 4), (b"stss", 4, 4), (b"stsc", 4, 4),
    (b"\x2a\xd7\xb1", 1, 3), (b"\x44\x89", 1, 8), (b"\x23\xe3\x83", 1, 4), (b"\xe0", 2, 4), (b"\xe0", 5, 4),
    (b"avih", 4, 4), (b"avih", 20, 4), (b"avih", 36, 4), (b"avih", 40, 4), (b"strf", 8, 4), (b"strf", 12, 4),
)  # fmt: skip
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class Mutant:
    source: str  # the corpus entry
    mutation: str  # the MUTATIONS entry
    data: bytes


def corpus() -> dict[str, bytes]:
    return {name: make() for name, make in CORPUS.items()}


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    """1 to 16 bytes overwritten with random values."""
    mutated = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    return bytes(mutated)


def metadata_tag(rng: random.Random, data: bytes) -> bytes:
    """Every tag's text replaced by random bytes (seldom UTF-8); a file without tags gets random bytes."""
    if TAG not in data:
        return random_bytes(rng, data)
    return data.replace(TAG, rng.randbytes(len(TAG)))


def codec_id(rng: random.Random, data: bytes) -> bytes:
    """A codec identifier the file holds swapped for another of its length, or for random bytes."""
    present = [code for code in CODEC_IDS if code in data]
    if not present:
        return random_bytes(rng, data)
    code = rng.choice(present)
    others = [other for other in CODEC_IDS if len(other) == len(code) and other != code]
    return data.replace(code, rng.choice(others) if others and rng.random() < 0.5 else rng.randbytes(len(code)))


def truncation(rng: random.Random, data: bytes) -> bytes:
    """The file cut at a random offset."""
    return data[: rng.randrange(len(data))]


def header_field(rng: random.Random, data: bytes) -> bytes:
    """A header field of the file set to an extreme value (or a random one), big- or little-endian."""
    fields = [(marker, offset, width) for marker, offset, width in HEADER_FIELDS if marker in data]
    if not fields:
        return random_bytes(rng, data)
    marker, offset, width = rng.choice(fields)
    starts = [index for index in range(len(data)) if data.startswith(marker, index)]
    start = rng.choice(starts) + len(marker) + offset
    value = rng.choice([*EXTREMES, rng.getrandbits(8 * width)]) % (1 << 8 * width)
    field = value.to_bytes(width, rng.choice(["big", "little"]))
    return data[:start] + field[: max(len(data) - start, 0)] + data[start + width :]


MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "random_bytes": random_bytes,
    "metadata_tag": metadata_tag,
    "codec_id": codec_id,
    "truncation": truncation,
    "header_field": header_field,
}


def mutants(videos: dict[str, bytes], seed: int) -> Iterator[Mutant]:
    """Endless mutants of ``videos``, the same sequence for the same seed."""
    rng = random.Random(seed)
    names = sorted(videos)
    while True:
        source, mutation = rng.choice(names), rng.choice(sorted(MUTATIONS))
        yield Mutant(source, mutation, MUTATIONS[mutation](rng, videos[source]))


def unexpected_answer(response: httpx.Response) -> str | None:
    """Why the answer to a mutant is wrong (a 5xx, or a 4xx that is not the JSON error body), or None."""
    if response.is_success:
        return None
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}: {response.text[:200]}"
    try:
        error = response.json()["error"]
        assert error["code"] and error["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"status {response.status_code} without the JSON error body: {response.text[:200]}"
    return None
