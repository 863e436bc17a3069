"""mmvmamba's registries: children of mmengine's root, so mmdet and mmseg configs reach them as ``mmvmamba.X``."""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmvmamba', locations=['mmvmamba.models'])
