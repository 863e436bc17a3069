# Mask R-CNN with a Vanilla-VMamba-B backbone, 3x schedule with DETR-style multi-scale training on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_ms-3x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmbase_dp06_ckpt_epoch_241.pth
# The official vanilla det/seg configs leave drop_path_rate at the constructor default 0.1 (not the
# classification value), which this config keeps.
_base_ = ['./mask-rcnn_vmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/vssmbase_dp06_ckpt_epoch_241.pth'
model = dict(
    backbone=dict(
        arch='vanilla-base',
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
