"""Replay the backbone's forward and backward from CUDA graphs for input shapes that repeat.

An eager training step of VMamba is bound by the host: issuing its ~2,000 small kernels takes longer than running
them (docs/benchmarks.md). A CUDA graph issues a whole forward (or backward) in one call. Fixed-size inputs
(segmentation crops, classification, detection with fixed-size padding) repeat one shape, so that shape is captured
once and replayed from then on; shapes seen only once or twice run eagerly, so varied test-time sizes cost nothing.

Rules that keep the replay exact:

* each graph belongs to one input signature (shape, strides, dtype, device, autocast state, grad mode, training
  mode and which parameters train); the parameters are read in place, so optimizer steps and ``load_state_dict``
  reach the graph, while moving the module (``.to()``, ``.half()``) drops every graph;
* captures run under autocast without its weight cache (a cached cast would freeze the weights in the graph);
* outputs and gradients are returned as fresh tensors, never as the graph's own buffers, so they survive the next
  replay and gradient accumulation adds up correctly;
* between a training forward and its backward the graphs' shared memory holds that forward's activations, so any
  other call in that window runs eagerly; a forward whose outputs are dropped without a backward ends that window
  (its autograd node is gone, so no backward can come).
"""
import logging
import weakref
from collections.abc import Callable

import torch
from mmengine.logging import print_log

ForwardFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class _Graphed:
    """One captured signature: static input, forward graph, and in training the backward graph."""

    def __init__(self, module: torch.nn.Module, x: torch.Tensor, params: list[torch.nn.Parameter], pool,
                 warmup_iters: int):
        self.static_x = x.detach().clone()
        autocast = _autocast_without_cache()
        # The graphs differentiate fresh leaves that share the parameters' storage: the parameters' own autograd
        # leaves may have been made on another stream by an earlier eager step whose graph is still alive, and a
        # capture must not wait on that stream.
        names = {id(p): name for name, p in module.named_parameters()}
        leaves = {names[id(p)]: p.detach().requires_grad_() for p in params}
        inputs = list(leaves.values())

        def fn(x):
            return torch.func.functional_call(module, leaves, (x, ), strict=False)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), autocast:  # compiles kernels and picks algorithms before the capture
            for _ in range(warmup_iters):
                outs = fn(self.static_x)
                if inputs:
                    torch.autograd.grad(outs, inputs, [torch.ones_like(o) for o in outs], allow_unused=True)
        torch.cuda.current_stream().wait_stream(side)
        del outs

        self.forward_graph = torch.cuda.CUDAGraph()
        with autocast, torch.cuda.graph(self.forward_graph, pool=pool):
            self.static_outs = fn(self.static_x)
        self.backward_graph = None
        if inputs:
            self.static_grad_outs = tuple(torch.empty_like(o) for o in self.static_outs)
            self.backward_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.backward_graph, pool=pool):
                self.static_grads = torch.autograd.grad(self.static_outs, inputs, self.static_grad_outs,
                                                        allow_unused=True)
            self.static_outs = tuple(o.detach() for o in self.static_outs)

    def replay_forward(self, x: torch.Tensor) -> None:
        self.static_x.copy_(x)
        self.forward_graph.replay()


class _ReplayFunction(torch.autograd.Function):
    """Autograd node of a training replay: the gradients of the parameters come from the backward graph."""

    @staticmethod
    def forward(ctx, cache: 'CudaGraphCache', entry: _Graphed, x: torch.Tensor, *params):
        entry.replay_forward(x)
        cache.pending = entry
        ctx.cache, ctx.entry = cache, entry
        # lives exactly as long as this autograd node: once it is gone, no backward can read the graphs' memory
        ctx.node_alive = _NodeAlive()
        cache.pending_node = weakref.ref(ctx.node_alive)
        return tuple(o.clone() for o in entry.static_outs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outs):
        cache, entry = ctx.cache, ctx.entry
        for static, grad in zip(entry.static_grad_outs, grad_outs):
            static.copy_(grad)
        entry.backward_graph.replay()
        cache.pending = None
        present = [g for g in entry.static_grads if g is not None]
        fresh = iter(torch._foreach_mul(present, 1.0)) if present else iter(())  # copies in a few launches
        grads = [None if g is None else next(fresh) for g in entry.static_grads]
        return (None, None, None, *grads)


class _NodeAlive:
    """A token held by a replay's autograd node (see :class:`_ReplayFunction`)."""


class CudaGraphCache:
    """Call ``fn(x)`` eagerly or by replaying a CUDA graph captured for ``x``'s signature.

    Args:
        capture_after: Eager calls of a signature before it is captured (they also compile the kernels).
            Default: 2.
        max_graphs: Signatures captured at most; later new ones run eagerly. Default: 4.
        warmup_iters: Eager runs on a side stream right before a capture. Default: 2.
    """

    entry_type = _Graphed  # what a capture builds (tests substitute a CPU stand-in)

    def __init__(self, capture_after: int = 2, max_graphs: int = 4, warmup_iters: int = 2):
        if capture_after < 0 or max_graphs < 1 or warmup_iters < 1:
            raise ValueError('capture_after must be >= 0, max_graphs and warmup_iters >= 1; got '
                             f'{capture_after}, {max_graphs}, {warmup_iters}')
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.warmup_iters = warmup_iters
        self.clear()

    def clear(self) -> None:
        """Drop every graph (their memory returns to PyTorch's allocator)."""
        self.graphs: dict[tuple, _Graphed] = {}
        self.seen: dict[tuple, int] = {}
        self.pending: _Graphed | None = None
        self.pending_node = None  # weak reference to the pending replay's node token
        self.capturing = False
        self.pool = None
        self._warned = set()

    def __call__(self, module: torch.nn.Module, fn: ForwardFn, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(x)``, where ``fn`` is ``module``'s eager forward and ``module(x)`` comes back to this call."""
        if self.capturing or not self._can_graph(x):
            return fn(x)
        if self.pending is not None and self.pending_node is not None and self.pending_node() is None:
            self.pending = None  # that forward's outputs were dropped without a backward
        params = [p for p in module.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
        key = _signature(module, x, params)
        entry = self.graphs.get(key)
        if entry is None:
            count = self.seen[key] = self.seen.get(key, 0) + 1
            if len(self.seen) > 1024:  # many one-off sizes (e.g. test images): forget them
                self.seen = {key: count}
            if count <= self.capture_after or self.pending is not None:
                return fn(x)
            if len(self.graphs) >= self.max_graphs:
                self._warn_once('full', f'VMamba cuda_graph: {self.max_graphs} input signatures are captured '
                                'already; new ones run eagerly')
                return fn(x)
            if self.pool is None:
                self.pool = self._new_pool()
            self.capturing = True  # the capture calls the module, whose forward comes back here
            try:
                entry = self.graphs[key] = self.entry_type(module, x, params, self.pool, self.warmup_iters)
            finally:
                self.capturing = False
        if self.pending is not None:
            self._warn_once('pending', 'VMamba cuda_graph: a captured forward is waiting for its backward, so this '
                            'call runs eagerly (call backward once per forward to replay graphs)')
            return fn(x)
        if entry.backward_graph is None:
            entry.replay_forward(x)
            return tuple(o.clone() for o in entry.static_outs)
        return _ReplayFunction.apply(self, entry, x, *params)

    @staticmethod
    def _can_graph(x: torch.Tensor) -> bool:
        return x.is_cuda and not x.requires_grad and not torch.compiler.is_compiling()

    @staticmethod
    def _new_pool():
        return torch.cuda.graph_pool_handle()

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            print_log(message, logger='current', level=logging.WARNING)

    def __deepcopy__(self, memo) -> 'CudaGraphCache':
        # Copies of the model (EMA, model soups) capture their own graphs.
        return CudaGraphCache(self.capture_after, self.max_graphs, self.warmup_iters)

    def __getstate__(self) -> dict:
        return dict(capture_after=self.capture_after, max_graphs=self.max_graphs, warmup_iters=self.warmup_iters)

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _autocast_without_cache() -> torch.autocast:
    enabled = torch.is_autocast_enabled('cuda')
    return torch.autocast('cuda', dtype=torch.get_autocast_dtype('cuda'), enabled=enabled, cache_enabled=False)


def _signature(module: torch.nn.Module, x: torch.Tensor, params: list[torch.nn.Parameter]) -> tuple:
    return (tuple(x.shape), x.stride(), x.dtype, x.device, torch.is_grad_enabled(), module.training,
            torch.is_autocast_enabled('cuda'), torch.get_autocast_dtype('cuda'), tuple(map(id, params)))
