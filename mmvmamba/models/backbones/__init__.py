from .official import OfficialVMamba, translate_official_kwargs
from .vmamba import VMamba
from .vmamba_arch import ARCH_FIELDS, ARCH_SETTINGS

__all__ = ['VMamba', 'OfficialVMamba', 'translate_official_kwargs', 'ARCH_FIELDS', 'ARCH_SETTINGS']
