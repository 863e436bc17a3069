# Mask R-CNN with a VMamba-T [s1l8] backbone, 1x schedule on COCO: the official recipe (MzeroMiko/VMamba
# detection/configs/vssm1/mask_rcnn_vssm_fpn_coco_tiny.py), i.e. mmdet's Swin-T Mask R-CNN 1x with the backbone
# replaced: AdamW lr 1e-4, weight decay 0.05 except on parameters whose name contains 'norm', 12 epochs,
# 2 images per GPU on 8 GPUs. Train:
#   bash tools/dist_train.sh configs/det/mask-rcnn_vmamba-t_fpn_1x_coco.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=checkpoints/vssm1_tiny_0230s_ckpt_epoch_264.pth
# The classification checkpoint (docs/model_zoo.md):
# https://github.com/MzeroMiko/VMamba/releases/download/v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
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

# Recipe-faithful decay exemption: only names containing 'norm' (norm, norm2, op.out_norm, outnorm*). To also
# exempt the SSM parameters, add 'A_logs' and 'Ds' (docs/model_zoo.md, "Parameter-wise settings").
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, custom_keys={'norm': dict(decay_mult=0.)}))
custom_hooks = [dict(type='mmvmamba.VMambaCheckHook')]
