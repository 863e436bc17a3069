"""Training-time parts for VMamba models: a configuration check hook and a layer-wise lr decay constructor."""
from .hooks import VMambaCheckHook
from .optimizers import VMambaLayerDecayOptimWrapperConstructor

__all__ = ['VMambaCheckHook', 'VMambaLayerDecayOptimWrapperConstructor']
