"""``tera.adapters``: TeRA, VeRA, HiRA and LoRA on one engine, one factory, one save format.

Examples
--------
>>> import torch
>>> from torch import nn
>>> from tera.adapters import TeRAConfig, adapt
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
>>> model = adapt(model, TeRAConfig(in_mode=64, out_mode=4, target_modules=["0"]))
>>> model.print_trainable_parameters()   # d vectors for modes (64 | 4, 4, 4)
trainable params: 76 || all params: 4,886 || trainable%: 1.5555
"""

from tera.adapters.batch import BANK_CACHE, BASE_ADAPTER, RowAdapters
from tera.adapters.config import (
    DEFAULT_TARGET_MODULES,
    AdapterConfig,
    HiRAConfig,
    LoRAConfig,
    TeRAConfig,
    VeRAConfig,
)
from tera.adapters.layer import AdapterLinear, ExecutionPolicy, execution_policy
from tera.adapters.model import (
    AdaptedModel,
    ParameterReport,
    adapt,
    find_targets,
    load_adapter_weights,
    parameter_report,
    save_adapter,
)
from tera.adapters.model import load_adapter as from_pretrained
from tera.adapters.quantized import (
    QuantizedMergeWarning,
    dequantize_model,
    dequantize_weight,
    is_quantized,
    quantize_model,
    weight_bytes,
)
from tera.adapters.registry import config_from_dict
from tera.adapters.store import AdapterStore, StoreWarning
from tera.adapters.trace import PathTrace, trace_paths

__all__ = [
    "BANK_CACHE",
    "BASE_ADAPTER",
    "DEFAULT_TARGET_MODULES",
    "AdaptedModel",
    "AdapterConfig",
    "AdapterLinear",
    "AdapterStore",
    "ExecutionPolicy",
    "HiRAConfig",
    "LoRAConfig",
    "ParameterReport",
    "PathTrace",
    "QuantizedMergeWarning",
    "RowAdapters",
    "StoreWarning",
    "TeRAConfig",
    "VeRAConfig",
    "adapt",
    "config_from_dict",
    "dequantize_model",
    "dequantize_weight",
    "execution_policy",
    "find_targets",
    "from_pretrained",
    "is_quantized",
    "load_adapter_weights",
    "parameter_report",
    "quantize_model",
    "save_adapter",
    "trace_paths",
    "weight_bytes",
]
