# UperNet with a Vanilla-VMamba-B backbone, 160k iterations on ADE20K at 512x512:
# the recipe of upernet_vmamba-t_8xb2-160k_ade20k-512x512.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v0cls/vssmbase_dp06_ckpt_epoch_241.pth
# The official vanilla seg configs do not set drop_path_rate: their backbone dict is merged into the Swin UperNet
# base's, whose 0.3 the official MM_VSSM receives and trains with (not the constructor default 0.1).
_base_ = ['./upernet_vmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/vssmbase_dp06_ckpt_epoch_241.pth'
model = dict(
    backbone=dict(
        arch='vanilla-base',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
