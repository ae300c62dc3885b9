"""Video input shared by the service and training: decoding (PyAV), frame sampling and transforms."""

from clipwise.video.clips import LoadedClips, load_clips
from clipwise.video.container import ACCEPTED_FORMATS, REASONS, DecodeLimits, Reason, VideoError, VideoInfo
from clipwise.video.decode import DecodedFrames, probe, read_frames
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
