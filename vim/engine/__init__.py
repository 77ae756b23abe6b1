"""Training engine: recipes, optimiser and schedule, the DDP training loop, evaluation, checkpoints."""
from .config import DEFAULTS, ConfigError, load_config
from .evaluate import evaluate, run_evaluation
from .state import CheckpointError, load_checkpoint, save_atomic
from .trainer import NonFiniteLossError, train

__all__ = ['DEFAULTS', 'ConfigError', 'load_config', 'evaluate', 'run_evaluation', 'CheckpointError',
           'load_checkpoint', 'save_atomic', 'NonFiniteLossError', 'train']
