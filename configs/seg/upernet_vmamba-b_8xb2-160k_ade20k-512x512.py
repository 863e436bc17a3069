# UperNet with a VMamba-B [s2l15] backbone, 160k iterations on ADE20K at 512x512:
# the recipe of upernet_vmamba-t_8xb2-160k_ade20k-512x512.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm_base_0229_ckpt_epoch_237.pth
_base_ = ['./upernet_vmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
