# Mask R-CNN with a VMamba-S [s2l15] backbone, 3x schedule with DETR-style multi-scale training on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_ms-3x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm_small_0229_ckpt_epoch_222.pth
_base_ = ['./mask-rcnn_vmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
