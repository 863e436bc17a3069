# UperNet with a VMamba-T [s2l5] (the older tiny) backbone, 160k iterations on ADE20K at 512x512:
# the recipe of upernet_vmamba-t_8xb2-160k_ade20k-512x512.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm_tiny_0230_ckpt_epoch_262.pth
_base_ = ['./upernet_vmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/vssm_tiny_0230_ckpt_epoch_262.pth'
model = dict(
    backbone=dict(
        arch='tiny-s2l5',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
