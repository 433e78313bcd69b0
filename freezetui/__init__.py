"""freezetui: see and choose which layers of a pretrained model train, then train and compare."""

from .core.errors import FreezeTUIError, PlanError
from .core.lints import Lint, check as lint
from .core.models import ModelInfo, build_model, list_models, model_info
from .core.plan import FreezePlan
from .core.schedule import PlanSchedule
from .core.config import TrainConfig
from .core.events import Callback, TrainResult
from .core.train import train

__version__ = "0.1.0"

__all__ = [
    "Callback", "FreezePlan", "FreezeTUIError", "Lint", "ModelInfo", "PlanError", "PlanSchedule", "TrainConfig",
    "TrainResult", "build_model", "lint", "list_models", "model_info", "train", "__version__",
]
