"""Video input shared by the service and training: decoding (PyAV), frame sampling and transforms."""

from clipwise.video.decode import (
    ACCEPTED_FORMATS,
    REASONS,
    DecodedFrames,
    DecodeLimits,
    LoadedClips,
    Reason,
    VideoError,
    VideoInfo,
    load_clips,
    probe,
    read_frames,
)
from clipwise.video.sampling import SAMPLINGS, ClipSpec, dense_indices, segment_indices
from clipwise.video.transforms import CROP_COUNTS, make_views

__all__ = [
    "ACCEPTED_FORMATS",
    "CROP_COUNTS",
    "REASONS",
    "Reason",
    "SAMPLINGS",
    "ClipSpec",
    "DecodeLimits",
    "DecodedFrames",
    "LoadedClips",
    "VideoError",
    "VideoInfo",
    "dense_indices",
    "load_clips",
    "make_views",
    "probe",
    "read_frames",
    "segment_indices",
]
