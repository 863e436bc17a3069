# UperNet with a VMamba-T [s1l8] backbone, 160k iterations on ADE20K at 512x512: the official recipe (MzeroMiko/VMamba
# segmentation/configs/vssm1/upernet_vssm_4xb4-160k_ade20k-512x512_tiny.py), i.e. mmseg's Swin-T UperNet with the
# backbone replaced: AdamW lr 6e-5, weight decay 0.01 except on parameters whose name contains 'norm', linear
# warm-up over 1500 iterations then poly decay, 16 images per iteration (2 per GPU on 8 GPUs).
# mIoU(SS): tools/test.py CONFIG CHECKPOINT; mIoU(MS): add --tta (ratios 0.5 to 1.75 and flips, from mmseg's
# ADE20K config). Classification checkpoint for init_cfg (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)

pretrained = 'checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvmamba.VMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        # Training crops are all 512x512: the backbone's forward and backward replay from CUDA graphs after the
        # second iteration (2.7x faster iterations on an H100, docs/benchmarks.md); other sizes run eagerly.
        cuda_graph=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

# Recipe-faithful decay exemption: only names containing 'norm' (norm, norm2, op.out_norm, outnorm*). To also
# exempt the SSM parameters, add 'A_logs' and 'Ds' (docs/model_zoo.md, "Parameter-wise settings").
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.)}))
custom_hooks = [dict(type='mmvmamba.VMambaCheckHook')]
