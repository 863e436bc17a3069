"""mmvmamba's registries: children of mmengine's root, so mmdet and mmseg configs reach them as ``mmvmamba.X``."""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmvmamba', locations=['mmvmamba.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmvmamba', locations=['mmvmamba.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmvmamba',
    locations=['mmvmamba.engine'])
