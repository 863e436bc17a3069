"""Architecture presets of the released VMamba models, as data.

Names follow the VMamba README: ``tiny``/``small``/``base`` are the current v2 releases (T s1l8, S s2l15,
B s2l15); the others name their variant explicitly. Every field is one of :data:`ARCH_FIELDS`.
"""

# The fields an architecture must define, with their meaning.
ARCH_FIELDS = {
    'dims': 'channels of each stage (an int: the first stage\'s, doubled at every stage)',
    'depths': 'blocks in each stage; its length is the number of stages (four in every release)',
    'd_state': 'SSM state size N per channel',
    'ssm_ratio': 'inner width D of SS2D over the block width C',
    'gate': 'SS2D multiplies its output by SiLU(z) (vanilla "v0" models)',
    'ssm_conv_bias': 'the depthwise convolution in SS2D has a bias',
    'mlp_ratio': 'MLP hidden width over C; 0 removes the MLP',
    'stem': "'patch' (one k4 s4 conv, official v1) or 'overlap' (two k3 s2 convs, official v2)",
    'downsample': "'merge' (2x2 patch merging, official v1) or 'conv' (k3 s2 conv, official v3)",
    'channel_first': 'tensors stay [B, C, H, W] (official ln2d) instead of [B, H, W, C] (official ln)',
    'drop_path_rate': 'stochastic depth of the last block; linear from 0 over all blocks',
}

STEM_TYPES = ('patch', 'overlap')
DOWNSAMPLE_TYPES = ('merge', 'conv')

_V2 = dict(d_state=1, gate=False, ssm_conv_bias=False, mlp_ratio=4.0, stem='overlap', downsample='conv',
           channel_first=True)
_VANILLA = dict(d_state=16, ssm_ratio=2.0, gate=True, ssm_conv_bias=True, mlp_ratio=0.0, stem='patch',
                downsample='merge', channel_first=False)

ARCH_SETTINGS = {
    'tiny-s1l8': dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2),
    'small-s2l15': dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3),
    'base-s2l15': dict(_V2, dims=(128, 256, 512, 1024), depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6),
    'tiny-s2l5': dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), ssm_ratio=2.0, drop_path_rate=0.2),
    'small-s1l20': dict(_V2, dims=(96, 192, 384, 768), depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.3),
    'base-s1l20': dict(_V2, dims=(128, 256, 512, 1024), depths=(2, 2, 20, 2), ssm_ratio=1.0, drop_path_rate=0.5),
    'vanilla-tiny': dict(_VANILLA, dims=(96, 192, 384, 768), depths=(2, 2, 9, 2), drop_path_rate=0.2),
    'vanilla-small': dict(_VANILLA, dims=(96, 192, 384, 768), depths=(2, 2, 27, 2), drop_path_rate=0.3),
    'vanilla-base': dict(_VANILLA, dims=(128, 256, 512, 1024), depths=(2, 2, 27, 2), drop_path_rate=0.6),
}
# The README's VMamba-T/S/B.
ARCH_SETTINGS['tiny'] = ARCH_SETTINGS['tiny-s1l8']
ARCH_SETTINGS['small'] = ARCH_SETTINGS['small-s2l15']
ARCH_SETTINGS['base'] = ARCH_SETTINGS['base-s2l15']


def resolve_arch(arch: str | dict, **overrides) -> dict:
    """A complete, checked architecture from a preset name or a dict, with ``overrides`` (None = keep) applied."""
    if isinstance(arch, str):
        if arch not in ARCH_SETTINGS:
            raise ValueError(f'unknown VMamba arch {arch!r}; valid: {sorted(ARCH_SETTINGS)}')
        settings = dict(ARCH_SETTINGS[arch])
    elif isinstance(arch, dict):
        missing = sorted(set(ARCH_FIELDS) - set(arch))
        if missing:
            raise ValueError(f'a custom arch dict must define {missing} as well (fields: {ARCH_FIELDS})')
        settings = dict(arch)
    else:
        raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
    unknown = sorted((set(settings) | set(overrides)) - set(ARCH_FIELDS))
    if unknown:
        raise ValueError(f'unknown arch fields {unknown}; valid: {sorted(ARCH_FIELDS)}')
    settings.update({key: value for key, value in overrides.items() if value is not None})

    dims = settings['dims']
    settings['depths'] = tuple(settings['depths'])
    num_stages = len(settings['depths'])
    settings['dims'] = tuple(dims * 2**i for i in range(num_stages)) if isinstance(dims, int) else tuple(dims)
    if num_stages == 0 or len(settings['dims']) != num_stages:
        raise ValueError(f"dims and depths need one entry per stage, got dims={settings['dims']} "
                         f"depths={settings['depths']}")
    if settings['stem'] not in STEM_TYPES:
        raise ValueError(f"stem must be one of {STEM_TYPES}, got {settings['stem']!r}")
    if settings['downsample'] not in DOWNSAMPLE_TYPES:
        raise ValueError(f"downsample must be one of {DOWNSAMPLE_TYPES}, got {settings['downsample']!r}")
    return settings
