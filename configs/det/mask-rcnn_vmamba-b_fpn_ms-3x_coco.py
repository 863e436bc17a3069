# Mask R-CNN with a VMamba-B [s2l15] backbone, 3x schedule with DETR-style multi-scale training on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_ms-3x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm_base_0229_ckpt_epoch_237.pth
_base_ = ['./mask-rcnn_vmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
