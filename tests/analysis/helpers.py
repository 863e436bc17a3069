"""Configs for the tests of tools/analysis.

The repository's configs (configs/det, configs/seg) are used when they exist; until then, equivalent minimal ones
(the official recipes: mmdet's Swin-T Mask R-CNN and mmseg's Swin-T UperNet with the backbone replaced) are written
to a temporary folder.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_NECK = {'tiny': [96, 192, 384, 768], 'small': [96, 192, 384, 768], 'base': [128, 256, 512, 1024]}
_LETTER = {'tiny': 't', 'small': 's', 'base': 'b'}

_DET = """_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='mmvmamba.VMamba', arch='{arch}', out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels={channels}))
"""
_SEG = """_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)
model = dict(
    backbone=dict(_delete_=True, type='mmvmamba.VMamba', arch='{arch}', out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels={channels}, num_classes=150),
    auxiliary_head=dict(in_channels={channels[2]}, num_classes=150))
"""


def config_path(task: str, arch: str, tmp_dir: Path) -> Path:
    """The repository's config for ``task`` ('det'/'seg') and ``arch`` if it exists, else a minimal equivalent."""
    letter = _LETTER[arch]
    if task == 'det':
        real = REPO_ROOT / 'configs' / 'det' / f'mask-rcnn_vmamba-{letter}_fpn_1x_coco.py'
        template = _DET
    else:
        real = REPO_ROOT / 'configs' / 'seg' / f'upernet_vmamba-{letter}_8xb2-160k_ade20k-512x512.py'
        template = _SEG
    if real.is_file():
        return real
    path = tmp_dir / f'{task}_vmamba-{letter}.py'
    path.write_text(template.format(arch=arch, channels=_NECK[arch]))
    return path
