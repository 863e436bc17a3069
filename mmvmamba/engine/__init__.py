"""Training-time parts for VMamba models: a configuration check hook, a cross-rank loss record hook and a
layer-wise lr decay constructor."""
from .hooks import LossRecordHook, VMambaCheckHook
from .optimizers import VMambaLayerDecayOptimWrapperConstructor

__all__ = ['LossRecordHook', 'VMambaCheckHook', 'VMambaLayerDecayOptimWrapperConstructor']
