"""Prepare the process before Megatron-Bridge is imported or run (called by every entry point)."""

from __future__ import annotations

import importlib.util
import logging
import warnings

from lucie_nemo import cpu_support, torch_adam

_NOISY_LOGGERS = (
    "megatron.bridge.utils.fusions",
    "megatron.bridge.models.gemma.gemma2_provider",
    "megatron.core.utils",
    "megatron.core.dist_checkpointing.strategies.common",  # "load_common is deprecated" on a common.pt (.nemo files)
    "megatron.core.models.gpt.gpt_model",
    "torch.utils.cpp_extension",  # "No CUDA runtime is found" on every CPU machine with a CUDA toolkit
)


# Megatron-Bridge's safe_import_from logs this one with its traceback at INFO wherever Transformer Engine is absent.
FP8_STATE_MANAGER_IMPORT = "Import of FP8GlobalStateManager from megatron.core.extensions.transformer_engine failed"
_IMPORT_UTILS_LOGGER = "megatron.bridge.utils.import_utils"


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _not_the_fp8_state_manager_import(record: logging.LogRecord) -> bool:
    return not (record.levelno < logging.ERROR and record.getMessage().startswith(FP8_STATE_MANAGER_IMPORT))


def quiet_imports() -> None:
    """Megatron logs a traceback for every optional import it cannot resolve (FP8 managers,
    Apex, ...) and warns about each missing fused kernel; keep the console for real news."""
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _errors_only not in logger.filters:  # a filter, not a level: some modules reset their level on import
            logger.addFilter(_errors_only)
    import_utils = logging.getLogger(_IMPORT_UTILS_LOGGER)
    if _not_the_fp8_state_manager_import not in import_utils.filters:
        import_utils.addFilter(_not_the_fp8_state_manager_import)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|transformer-engine|Apex|APEX|experimental).*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    # megatron-core 0.19 warns about its own default (cuda_graph_modules="full") in every config it finalizes
    warnings.filterwarnings("ignore", message="full scope is deprecated")


def use_prebuilt_dataset_helpers() -> None:
    """initialize_megatron runs `make` in megatron/core/datasets to build the index helpers;
    wheel installs ship the compiled ``helpers_cpp`` but no Makefile, so the build fails and
    the run exits. Skip the build when the compiled helpers import."""
    if importlib.util.find_spec("megatron.core.datasets.helpers_cpp") is None:
        return
    import megatron.bridge.training.initialize as initialize

    initialize.compile_helpers = lambda: None


def prepare() -> None:
    """Make megatron-core and Megatron-Bridge usable here (GPU as is, torch Adam's checkpoints fixed where
    neither Transformer Engine nor Apex is installed; CPU through cpu_support)."""
    quiet_imports()
    cpu_support.install_import_hook()
    use_prebuilt_dataset_helpers()
    cpu_support.activate()
    torch_adam.activate()
    from lucie_nemo.training import keep_batch_rampup

    keep_batch_rampup()
