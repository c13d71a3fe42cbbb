"""The model zoo: architectures, their registry, and model cards/checkpoints.

``build_model(name, in_channels=, input_size=, num_classes=, mean=, std=)``
returns a model taking [0,1] pixels; ``MODELS`` maps names to entries.
"""

from model_zoo import architectures as _architectures  # noqa: F401  (registers the models)
from model_zoo.layers import BasicBlock, Normalize
from model_zoo.registry import MODELS, UnknownModelError, build_model, count_parameters, get_entry, register_model

__all__ = ["MODELS", "BasicBlock", "Normalize", "UnknownModelError", "build_model", "count_parameters",
           "get_entry", "register_model"]
