from .formats import CheckpointError, canonical_state, detect_format, read_state_dict
from .hf import from_hf_state_dict, hf_config_kwargs, to_hf_state_dict
from .load import Checkpoint, LoadReport, load_checkpoint, open_checkpoint
