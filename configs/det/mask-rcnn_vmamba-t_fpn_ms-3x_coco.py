# Mask R-CNN with a VMamba-T [s1l8] backbone, 3x schedule with DETR-style multi-scale training on COCO: the official
# recipe (vssm1/mask_rcnn_vssm_fpn_coco_tiny_ms_3x.py), i.e. mmdet's Swin-T Mask R-CNN ms-crop-3x with the backbone
# replaced: AdamW lr 1e-4, weight decay 0.05 except on 'norm' parameters, 36 epochs, steps at 27 and 33.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py']
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)

pretrained = 'checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmvmamba.VMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.)}))
custom_hooks = [dict(type='mmvmamba.VMambaCheckHook')]
