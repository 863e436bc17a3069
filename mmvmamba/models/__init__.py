from .backbones import ARCH_SETTINGS, VMamba

__all__ = ['VMamba', 'ARCH_SETTINGS']
