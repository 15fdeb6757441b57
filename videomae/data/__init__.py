from .annotations import AnnotationError, VideoRecord, read_video_list, write_video_list
from .datasets import (ClipConfig, EvalVideoError, FaultPolicy, TooManyBadVideos, VideoDataset, collate_clips,
                       make_loader, read_failure_log)
from .decoding import VideoDecodeError, decode_frames, open_video
