# Mask R-CNN with a Vanilla-VMamba-T backbone, 1x schedule on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_1x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmtiny_dp01_ckpt_epoch_292.pth
# The official vanilla det configs do not set drop_path_rate: their backbone dict is merged into the Swin-T base's,
# whose 0.2 the official MM_VSSM receives and trains with (not the constructor default 0.1).
_base_ = ['./mask-rcnn_vmamba-t_fpn_1x_coco.py']

pretrained = 'checkpoints/vssmtiny_dp01_ckpt_epoch_292.pth'
model = dict(
    backbone=dict(
        arch='vanilla-tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
