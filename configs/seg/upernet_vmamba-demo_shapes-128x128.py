# Demo: a small VMamba UperNet trained from scratch on the generated shapes dataset (tools/demo.py), in minutes on a
# CPU; the same file runs unchanged on a GPU and with mmseg's own tools/train.py and tools/test.py.
# The label maps follow the ADE20K layout (0 = unlabelled, reduce_zero_label=True), read by BaseSegDataset because
# ADE20KDataset only accepts subsets of its own 150 classes. tools/demo.py writes the data to data/shapes/.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py',
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)

classes = ('background', 'square', 'circle', 'triangle')
palette = [(40, 40, 40), (220, 60, 60), (60, 200, 80), (70, 110, 230)]
crop_size = (128, 128)
dims = 16
max_iters = 300
warmup_iters = 30
norm_cfg = dict(type='BN', requires_grad=True)
# Background covers ~88% of the pixels, squares and triangles ~2% each: down-weighting it lets the small shapes be
# learned within the demo's few hundred iterations (without it only background and circles are, mIoU ~47).
class_weight = [0.25, 1.0, 1.0, 1.0]

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='mmvmamba.VMamba',
        arch='tiny',
        dims=dims,
        depths=(1, 1, 2, 1),
        drop_path_rate=0.0,
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    decode_head=dict(
        in_channels=[dims, dims * 2, dims * 4, dims * 8],
        channels=64,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)),
    auxiliary_head=dict(
        in_channels=dims * 4,
        channels=32,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        loss_decode=dict(class_weight=class_weight)))

dataset_type = 'BaseSegDataset'
data_root = 'data/shapes/'
metainfo = dict(classes=classes, palette=palette)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        img_suffix='.png',
        seg_map_suffix='.png',
        reduce_zero_label=True,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
# The recipe's AdamW without decay on norms, with a larger lr for training from scratch in few iterations.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
custom_hooks = [dict(type='mmvmamba.VMambaCheckHook')]
randomness = dict(seed=0)
