# Mask R-CNN with a Vanilla-VMamba-S backbone, 1x schedule on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_1x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmsmall_dp03_ckpt_epoch_238.pth
# The official vanilla det/seg configs leave drop_path_rate at the constructor default 0.1 (not the
# classification value), which this config keeps.
_base_ = ['./mask-rcnn_vmamba-t_fpn_1x_coco.py']

pretrained = 'checkpoints/vssmsmall_dp03_ckpt_epoch_238.pth'
model = dict(
    backbone=dict(
        arch='vanilla-small',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
