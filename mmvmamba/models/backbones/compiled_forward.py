"""Run the backbone's forward through ``torch.compile`` on CUDA, with the input's height and width dynamic.

An eager training step of VMamba is bound by the host: it issues about 2,000 small kernels, each costing more host
time than GPU time (docs/benchmarks.md). Inductor fuses the norms, casts, activations and residual adds around our
Triton scan kernels (opaque ``torch.library`` custom ops) into far fewer kernels, launched from generated code, so
the host keeps ahead of the GPU. Height and width are compiled as symbols, so one graph serves every input size
that is a multiple of 32 (COCO's keep-ratio batches, padded to 32 by mmdet, all differ): new sizes cost no compile
and no capture. Other sizes run eagerly. The convolutions are opaque to Inductor while it compiles
(layers/conv.py), whose own lowering of their backward would fix H and W.

Dynamo compiles again only for what changes the graph: training or eval mode, grad mode, the autocast dtype, which
parameters train, and a batch of 1 (sizes 0 and 1 are always specialised). Those are a handful per run; the first
step of each pays the compile, which is logged with its time.
"""
import logging
import time
from collections.abc import Callable

import torch
from mmengine.logging import print_log

from mmvmamba_kernels import HAS_TRITON

ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
SETTINGS = ('auto', True, False)
# Sizes that compile: multiples of this (mmdet's and mmseg's data preprocessors pad to it); others run eagerly.
SIZE_DIVISOR = 32


def compile_supported(device: torch.device) -> tuple[bool, str]:
    """Whether Inductor can compile for ``device`` here, and if not, why."""
    if device.type != 'cuda':
        return False, f'the input is on {device}, not CUDA'
    if not HAS_TRITON:
        return False, 'triton is not installed'
    if torch.cuda.get_device_capability(device) < (7, 0):
        return False, f'{torch.cuda.get_device_name(device)} is older than compute capability 7.0 (Triton needs it)'
    return True, ''


class CompiledForward:
    """Call a module's forward through ``torch.compile`` where that is wanted and possible, else eagerly.

    Args:
        setting: ``'auto'``: compile for CUDA inputs where Inductor works here, eager otherwise (CPU, no Triton);
            ``True``: compile, and raise if that is not possible for an input; ``False``: always eager.
        mode: ``torch.compile``'s ``mode``. Default: None (Inductor's default: no CUDA graphs).
        backend: ``torch.compile``'s ``backend``. Default: ``'inductor'``.
    """

    def __init__(self, setting: bool | str = 'auto', mode: str | None = None, backend: str = 'inductor'):
        if setting not in SETTINGS:
            raise ValueError(f'compile must be one of {SETTINGS}, got {setting!r}')
        self.setting = setting
        self.mode = mode           # torch.compile's mode (benchmarks compare 'reduce-overhead')
        self.backend = backend     # tests trace on the CPU with 'aot_eager'
        self.compiled = None       # made on the first compiled call (nothing compiles at construction)
        self.compiles = 0          # calls that compiled a new graph (first steps, new modes)
        self.compile_seconds = 0.0

    def wanted(self, x: torch.Tensor) -> bool:
        if self.setting is False or torch.compiler.is_compiling():  # inside an outer torch.compile: inline us
            return False
        supported, why = compile_supported(x.device)
        if not supported and self.setting is True:
            raise RuntimeError(f'VMamba(compile=True) cannot compile here: {why}; pass compile=False or "auto"')
        return supported

    def __call__(self, fn: ForwardFn, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(x)``, compiled where wanted; ``fn`` is the module's eager forward, the same bound method each call."""
        if not self.wanted(x) or x.shape[2] % SIZE_DIVISOR or x.shape[3] % SIZE_DIVISOR:
            return fn(x)
        if self.compiled is None:
            self.compiled = torch.compile(_blocks_of(fn), backend=self.backend, **self._compile_options())
        # H and W enter as symbols h and w of 32 * h and 32 * w: every stage's size is then a plain multiple
        # (8h, 4h, ...) that Inductor can split and tile (with H itself as the symbol it fails to prove that
        # H' * W' is divisible by W' after the stem's ceil divisions, and stops).
        blocks = x.unflatten(3, (-1, SIZE_DIVISOR)).unflatten(2, (-1, SIZE_DIVISOR))
        torch._dynamo.maybe_mark_dynamic(blocks, 2)
        torch._dynamo.maybe_mark_dynamic(blocks, 4)
        before = _compiled_graphs()
        start = time.perf_counter()
        out = self.compiled(blocks)
        if _compiled_graphs() != before:
            seconds = time.perf_counter() - start
            self.compiles += 1
            self.compile_seconds += seconds
            print_log(f'VMamba: compiled the backbone for {tuple(x.shape)} inputs (grad={torch.is_grad_enabled()}, '
                      f'autocast={_autocast_state(x)}) in {seconds:.1f} s; {self.compiles} compile(s), '
                      f'{self.compile_seconds:.1f} s in all', logger='current', level=logging.INFO)
        return out

    def _compile_options(self) -> dict:
        if self.backend != 'inductor':
            return dict(mode=self.mode)
        # torch.compile takes a mode or options, not both: 'reduce-overhead' is Inductor's CUDA graphs. The coalescing
        # analysis of the tiling fails an assertion on symbolic sizes in torch 2.11 (it is meant for static ones).
        options = {'triton.coalesce_tiling_analysis': False}
        if self.mode == 'reduce-overhead':
            options['triton.cudagraphs'] = True
        elif self.mode is not None:
            raise ValueError(f"mode must be None or 'reduce-overhead', got {self.mode!r}")
        return dict(options=options)

    # Copies of the model (EMA, model soups) and unpickled ones compile their own forward: the compiled function
    # holds the original module.
    def __deepcopy__(self, memo) -> 'CompiledForward':
        return CompiledForward(**self.__getstate__())

    def __getstate__(self) -> dict:
        return dict(setting=self.setting, mode=self.mode, backend=self.backend)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _blocks_of(fn: ForwardFn) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """``fn`` on ``[B, C, h, 32, w, 32]`` views of ``[B, C, 32 h, 32 w]`` images."""

    def forward_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return fn(blocks.flatten(4, 5).flatten(2, 3))

    return forward_blocks


def _compiled_graphs() -> int:
    return torch._dynamo.utils.counters['stats']['unique_graphs']


def _autocast_state(x: torch.Tensor) -> str:
    device = x.device.type
    return str(torch.get_autocast_dtype(device)).removeprefix('torch.') if torch.is_autocast_enabled(device) else 'off'
