from .layer_decay_constructor import VMambaLayerDecayOptimWrapperConstructor, vmamba_layer_id

__all__ = ['VMambaLayerDecayOptimWrapperConstructor', 'vmamba_layer_id']
