"""mmvmamba: VMamba backbones for OpenMMLab detection (mmdet) and segmentation (mmseg).

Importing the package (``custom_imports=dict(imports=['mmvmamba'])`` in a config) registers ``mmvmamba.VMamba``,
the official ``MM_VSSM`` alias, the engine parts (``mmvmamba.VMambaCheckHook``, ``mmvmamba.LossRecordHook``,
``mmvmamba.VMambaLayerDecayOptimWrapperConstructor``), and allows the types that VMamba and mmengine
checkpoints pickle in ``torch.load(weights_only=True)`` (see :mod:`mmvmamba.checkpoint.safe_load`).
"""
from .checkpoint import register_checkpoint_safe_globals
from .engine import LossRecordHook, VMambaCheckHook, VMambaLayerDecayOptimWrapperConstructor
from .models import VMamba
from .version import __version__

# mmengine's load_from/--resume/test.py load with torch's weights_only=True default; they must be able to read
# the checkpoints mmengine writes without anyone turning weights_only off.
register_checkpoint_safe_globals()

__all__ = ['VMamba', 'LossRecordHook', 'VMambaCheckHook', 'VMambaLayerDecayOptimWrapperConstructor', '__version__']
