from .config import ConfigError, get_defaults, load_config, save_config
