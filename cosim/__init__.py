"""Co-simulation of DT-assisted task offloading in ISAC-enabled IoV (Ly-DTMPPO)."""

from .config import Config, ConfigError, CosimError, load_config
from .env import BatchCoSim, CoSimParallelEnv, make_batch_env, make_env
from .gym_env import CoSimGymEnv, make_gym_env

__all__ = ["Config", "ConfigError", "CosimError", "load_config", "BatchCoSim", "CoSimParallelEnv",
           "make_env", "make_batch_env", "CoSimGymEnv", "make_gym_env"]
