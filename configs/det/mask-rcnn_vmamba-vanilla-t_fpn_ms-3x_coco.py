# Mask R-CNN with a Vanilla-VMamba-T backbone, 3x schedule with DETR-style multi-scale training on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_ms-3x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmtiny_dp01_ckpt_epoch_292.pth
# The official vanilla det/seg configs leave drop_path_rate at the constructor default 0.1 (not the
# classification value), which this config keeps.
_base_ = ['./mask-rcnn_vmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/vssmtiny_dp01_ckpt_epoch_292.pth'
model = dict(
    backbone=dict(
        arch='vanilla-tiny',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
