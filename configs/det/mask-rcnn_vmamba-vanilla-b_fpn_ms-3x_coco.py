# Mask R-CNN with a Vanilla-VMamba-B backbone, 3x schedule with DETR-style multi-scale training on COCO:
# the recipe of mask-rcnn_vmamba-t_fpn_ms-3x_coco.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmbase_dp06_ckpt_epoch_241.pth
# The official vanilla det configs do not set drop_path_rate: their backbone dict is merged into the Swin-T base's,
# whose 0.2 the official MM_VSSM receives and trains with (not the constructor default 0.1).
_base_ = ['./mask-rcnn_vmamba-t_fpn_ms-3x_coco.py']

pretrained = 'checkpoints/vssmbase_dp06_ckpt_epoch_241.pth'
model = dict(
    backbone=dict(
        arch='vanilla-base',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
