# UperNet with a VMamba-S [s2l15] backbone, 160k iterations on ADE20K at 512x512:
# the recipe of upernet_vmamba-t_8xb2-160k_ade20k-512x512.py with this backbone.
# Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm_small_0229_ckpt_epoch_222.pth
_base_ = ['./upernet_vmamba-t_8xb2-160k_ade20k-512x512.py']

pretrained = 'checkpoints/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
