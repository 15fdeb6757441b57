from .hf import from_hf_state_dict, hf_config_kwargs, to_hf_state_dict
