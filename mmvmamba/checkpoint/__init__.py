from .convert import convert_vmamba_official
from .files import CheckpointFileError, check_checkpoint_file
from .load import load_backbone_checkpoint, load_backbone_state_dict
from .resume import resume_checkpoint
from .safe_load import CheckedArray, PickledConfig, register_checkpoint_safe_globals, safe_load

__all__ = [
    'CheckedArray', 'CheckpointFileError', 'check_checkpoint_file', 'convert_vmamba_official',
    'load_backbone_checkpoint', 'load_backbone_state_dict', 'PickledConfig', 'register_checkpoint_safe_globals',
    'resume_checkpoint', 'safe_load'
]
