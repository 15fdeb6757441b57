"""Video decoding behind one small interface: decord (default), PyAV and torchcodec (optional).

    reader = open_video("clip.mp4")            # or bytes, or backend="pyav"
    len(reader), reader.fps
    frames = reader.get_frames([0, 2, 4])      # uint8 numpy (T, H, W, C), RGB

`open_video` falls back to PyAV when decord is not installed, or when decord or torchcodec cannot
open the file; a file that no backend reads raises `VideoDecodeError` naming it.

`VideoDecodeError` is the one exception that means "this file is not a usable video": every reader
wraps its backend's errors into it, and `require_frames` raises its subclass `VideoTooShort` for
stills and clips shorter than a minimum. The training loader counts exactly these as bad videos;
any other exception while loading (an `IndexError` from a sampler, a `ValueError` from a
transform) is a bug in the code and is not swallowed.
"""
from __future__ import annotations

import io
import os
from typing import Sequence, Union

import numpy as np

Source = Union[str, os.PathLike, bytes]


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""


class VideoTooShort(VideoDecodeError):
    """A file that decodes but has fewer frames than a clip needs (a still image renamed .mp4, a
    3-frame clip)."""


def require_frames(reader: "VideoReader", min_frames: int, what: str = "DATA.MIN_FRAMES") -> None:
    """`VideoTooShort` when `reader` has fewer than `min_frames` frames."""
    n = len(reader)
    if n < min_frames:
        kind = "a still image" if n == 1 else f"{n} frames"
        raise VideoTooShort(f"{reader.name} has {kind}, fewer than {what}={min_frames}")


def _name(source: Source) -> str:
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _as_file(source: Source):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def short_side_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, aspect kept, sizes even."""
    if not short_side or min(height, width) == short_side:
        return height, width
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, int(round(width * scale / 2) * 2)
    return int(round(height * scale / 2) * 2), short_side


class VideoReader:
    """Interface: `len(reader)`, `reader.fps`, `reader.get_frames(indices)`. A reader sets `_len`
    (and `_fps`, unless it overrides `fps`) when it opens its source."""

    backend = "base"
    name = "<video>"
    _len, _fps = 0, 0.0

    def __len__(self) -> int:
        return self._len

    @property
    def fps(self) -> float:
        return self._fps

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def _check(self, indices) -> list[int]:
        indices = [int(i) for i in indices]
        n = len(self)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"{self.name}: frame indices {bad[:5]} outside [0, {n})")
        return indices

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DecordReader(VideoReader):
    backend = "decord"

    def __init__(self, source: Source, short_side: int | None = None, num_threads: int = 1):
        import decord

        self.name = _name(source)
        size = {}
        if short_side:
            height, width = probe_size(source)
            h, w = short_side_size(height, width, short_side)
            size = dict(height=h, width=w)
        try:
            # one thread per reader: loaders run many readers in parallel workers
            self._vr = decord.VideoReader(_as_file(source), ctx=decord.cpu(0), num_threads=num_threads, **size)
            self._len = len(self._vr)
        except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
            raise VideoDecodeError(f"decord cannot open {self.name}: {err}") from err
        if self._len == 0:
            raise VideoDecodeError(f"{self.name} has no video frames")

    @property
    def fps(self) -> float:
        return float(self._vr.get_avg_fps())

    def get_frames(self, indices) -> np.ndarray:
        indices = self._check(indices)
        try:
            return self._vr.get_batch(indices).asnumpy()
        except Exception as err:
            raise VideoDecodeError(f"decord cannot decode frames {indices[:4]}... of {self.name}: {err}") from err

    def close(self) -> None:
        # readers live for one item: dropping decord's reader frees its frame buffers (long-lived
        # readers are what makes decord's memory grow)
        self._vr = None


class PyAVReader(VideoReader):
    """PyAV decoding. Frames are numbered in presentation order; a request seeks to the nearest
    keyframe before the first wanted frame and decodes forward, so re-encoding with a short
    keyframe interval (datasets/reencode.py) makes random access cheap."""

    backend = "pyav"

    def __init__(self, source: Source, short_side: int | None = None, num_threads: int = 1):
        import av

        self.name = _name(source)
        self._export_mvs = False
        try:
            self._container = av.open(_as_file(source))
            if not self._container.streams.video:
                raise VideoDecodeError(f"{self.name} has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO" if num_threads != 1 else "SLICE"
            # FFmpeg's default (0) starts a thread per core in every loader worker
            self._stream.thread_count = max(num_threads, 0)
            self._len = self._count_frames()
        except VideoDecodeError:
            raise
        except Exception as err:
            raise VideoDecodeError(f"PyAV cannot open {self.name}: {err}") from err
        if self._len == 0:
            raise VideoDecodeError(f"{self.name} has no video frames")
        height, width = self._stream.codec_context.height, self._stream.codec_context.width
        self._size = short_side_size(height, width, short_side)

    def _count_frames(self) -> int:
        # headers of webm (SSv2) and some mp4s carry no frame count: count packets (no decoding)
        self._pts = sorted(p.pts for p in self._container.demux(self._stream) if p.pts is not None and p.size)
        self._container.seek(0)
        return len(self._pts)

    @property
    def fps(self) -> float:
        rate = self._stream.average_rate or self._stream.guessed_rate
        return float(rate) if rate else 0.0

    def _to_rgb(self, frame) -> np.ndarray:
        h, w = self._size
        if (h, w) != (frame.height, frame.width):
            return frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="BILINEAR")
        return frame.to_ndarray(format="rgb24")

    def get_frames(self, indices, on_frame=None) -> np.ndarray:
        indices = self._check(indices)
        wanted = sorted(set(indices))
        index_of_pts = {pts: i for i, pts in enumerate(self._pts)}
        out: dict[int, np.ndarray] = {}
        try:
            self._container.seek(self._pts[wanted[0]], stream=self._stream, backward=True, any_frame=False)
            for frame in self._container.decode(self._stream):
                i = index_of_pts.get(frame.pts)
                if i is None:
                    continue
                if i in wanted and i not in out:
                    out[i] = self._to_rgb(frame)
                    if on_frame is not None:
                        on_frame(i, frame)
                if i >= wanted[-1]:
                    break
        except Exception as err:
            raise VideoDecodeError(f"PyAV cannot decode {self.name}: {err}") from err
        missing = [i for i in wanted if i not in out]
        if missing:
            raise VideoDecodeError(f"{self.name}: frames {missing[:5]} could not be decoded (truncated file?)")
        return np.stack([out[i] for i in indices])

    def get_frames_and_motion(self, indices):
        """(frames, motion): the frames of `get_frames` and per frame the codec's motion vector
        magnitudes as float32 (T, H, W) at the frames' size, in pixels of that size -- or None when
        no sampled frame carries motion vectors (an intra-only clip). A sampled frame without
        vectors (a keyframe) takes the map of the nearest sampled frame that has them."""
        from ..masking.motion import motion_vector_map

        if not self._export_mvs:
            # the decoder reads its options when it opens, on the first decoded packet
            self._stream.codec_context.options = {**self._stream.codec_context.options, "flags2": "+export_mvs"}
            self._export_mvs = True
        maps: dict[int, np.ndarray | None] = {}

        def keep(i, frame):
            side = frame.side_data.get("MOTION_VECTORS") if hasattr(frame.side_data, "get") else None
            if side is None:
                maps[i] = None
                return
            magnitude = motion_vector_map(side.to_ndarray(), frame.height, frame.width)
            h, w = self._size
            if (h, w) != magnitude.shape:
                import torch
                import torch.nn.functional as F
                magnitude = F.interpolate(torch.from_numpy(magnitude)[None, None], size=(h, w),
                                          mode="area" if h < frame.height else "nearest")[0, 0].numpy()
                magnitude *= w / frame.width   # vectors in pixels of the output size
            maps[i] = magnitude

        frames = self.get_frames(indices, on_frame=keep)
        have = [i for i in sorted(maps) if maps[i] is not None]
        if not have:
            return frames, None
        near = {i: maps[i] if maps[i] is not None else maps[min(have, key=lambda j: (abs(j - i), j))]
                for i in maps}
        return frames, np.stack([near[i] for i in self._check(indices)])

    def close(self) -> None:
        self._container.close()


class TorchCodecReader(VideoReader):
    """torchcodec: FFmpeg through torch's own bindings (needs FFmpeg's shared libraries, e.g.
    Debian's `ffmpeg` package). Frames come straight into a uint8 tensor; `seek_mode="approximate"`
    takes the frame count and positions from the header instead of scanning the file, and falls
    back to an exact scan where the header has no frame count (some webm files). A short side
    given is applied by FFmpeg while decoding."""

    backend = "torchcodec"

    def __init__(self, source: Source, short_side: int | None = None, num_threads: int = 1):
        from torchcodec.decoders import VideoDecoder

        self.name = _name(source)
        self._open = lambda mode, transforms=None: VideoDecoder(
            source if isinstance(source, (bytes, bytearray)) else os.fspath(source), seek_mode=mode,
            dimension_order="NHWC", num_ffmpeg_threads=num_threads, transforms=transforms)
        try:
            mode = "approximate"
            self._dec = self._open(mode)
            meta = self._dec.metadata
            if not meta.num_frames:
                mode = "exact"
                self._dec = self._open(mode)
                meta = self._dec.metadata
            if short_side:
                from torchcodec.transforms import Resize

                size = short_side_size(meta.height, meta.width, short_side)
                if size != (meta.height, meta.width):
                    self._dec = self._open(mode, [Resize(size)])
            self._len, self._fps = int(meta.num_frames or 0), float(meta.average_fps or 0.0)
        except Exception as err:
            raise VideoDecodeError(f"torchcodec cannot open {self.name}: {err}") from err
        if self._len == 0:
            raise VideoDecodeError(f"{self.name} has no video frames")

    def get_frames(self, indices) -> np.ndarray:
        indices = self._check(indices)
        try:
            return self._dec.get_frames_at(indices).data.numpy()
        except Exception as err:
            raise VideoDecodeError(f"torchcodec cannot decode frames {indices[:4]}... of {self.name}: {err}") from err

    def close(self) -> None:
        self._dec = None


def probe_size(source: Source) -> tuple[int, int]:
    """(height, width) of the first video stream, read from the container header."""
    import av

    try:
        with av.open(_as_file(source)) as container:
            ctx = container.streams.video[0].codec_context
            return ctx.height, ctx.width
    except Exception as err:
        raise VideoDecodeError(f"cannot read the size of {_name(source)}: {err}") from err


BACKENDS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchCodecReader}


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401 -- raises RuntimeError where FFmpeg's libraries are missing
    except (ImportError, RuntimeError, OSError):
        return False
    return True


def describe_backend(backend: str) -> str:
    """One line naming the library that will decode the videos, for the run's log."""
    if backend == "decord":
        if not decord_available():
            import av
            return (f"video decoding: decord is not installed, PyAV {av.__version__} decodes instead "
                    "(pip install decord2 for the faster decoder)")
        import decord
        version = getattr(decord, "__version__", "?")
        fork = " (decord2)" if not version.startswith("0.") else ""
        return f"video decoding: decord {version}{fork}"
    if backend == "pyav":
        import av
        return f"video decoding: PyAV {av.__version__}"
    import torchcodec
    return f"video decoding: torchcodec {getattr(torchcodec, '__version__', '?')}"


def open_video(source: Source, backend: str = "decord", short_side: int | None = None,
               fallback: bool = True, num_threads: int = 1) -> VideoReader:
    """Open a video file or in-memory bytes. With `fallback`, a decord failure (or decord not
    installed) retries with PyAV before giving up."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {sorted(BACKENDS)}")
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise VideoDecodeError(f"video file not found: {source}")
        if os.path.getsize(source) == 0:
            raise VideoDecodeError(f"video file is empty (0 bytes): {source}")
    if backend == "decord" and not decord_available():
        if not fallback:
            raise ImportError("decord is not installed; use backend='pyav'")
        backend = "pyav"
    if backend == "torchcodec" and not torchcodec_available():
        raise ImportError("DATA.BACKEND torchcodec: torchcodec is not installed or cannot load FFmpeg's shared "
                          "libraries; pip install 'videomae[torchcodec]' and install FFmpeg (Debian: apt-get "
                          "install ffmpeg), or choose decord or pyav")
    try:
        return BACKENDS[backend](source, short_side=short_side, num_threads=num_threads)
    except VideoDecodeError as first:
        if backend == "pyav" or not fallback:
            raise
        try:
            return PyAVReader(source, short_side=short_side, num_threads=num_threads)
        except VideoDecodeError as second:
            raise VideoDecodeError(f"{first}; PyAV fallback: {second}") from second


def decode_frames(source: Source, indices: Sequence[int], backend: str = "decord",
                  short_side: int | None = None) -> np.ndarray:
    """Open, decode the given frames (uint8 (T, H, W, C)), close."""
    with open_video(source, backend, short_side) as reader:
        return reader.get_frames(indices)




class FrameFolderReader(VideoReader):
    """Raw frames in a folder (`img_00001.jpg`, ...; VideoMAE V2's SSv2 layout)."""

    backend = "rawframes"

    def __init__(self, folder: str, num_frames: int, template: str = "img_{:05}.jpg", start: int = 1,
                 short_side: int | None = None, fps: float = 12.0):
        self.name, self._len, self._template, self._start = folder, num_frames, template, start
        self._short_side, self._fps = short_side, fps
        if not os.path.isdir(folder):
            raise VideoDecodeError(f"frame folder not found: {folder}")

    def get_frames(self, indices) -> np.ndarray:
        from PIL import Image

        out = []
        for i in self._check(indices):
            path = os.path.join(self.name, self._template.format(i + self._start))
            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    if self._short_side:
                        h, w = short_side_size(image.height, image.width, self._short_side)
                        image = image.resize((w, h), Image.BILINEAR)
                    out.append(np.asarray(image))
            except Exception as err:
                raise VideoDecodeError(f"cannot read frame {path}: {err}") from err
        return np.stack(out)
