"""VMamba(cuda_graph=True): replays equal the eager backbone; the cache's rules (capture, limits, copies)."""
import copy
import pickle

import pytest
import torch

from mmvmamba import VMamba
from mmvmamba.models.backbones.cuda_graph import CudaGraphCache

SMALL = dict(arch='tiny', dims=16, depths=(1, 1, 2, 1))
VANILLA_SMALL = dict(SMALL, arch='vanilla-tiny')  # gated, channel-last SS2D with d_state 16
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def _pair(device='cpu', drop_path_rate=0.0, arch=SMALL, **cache_kwargs):
    eager = VMamba(**arch, drop_path_rate=drop_path_rate).to(device)
    graphed = VMamba(**arch, drop_path_rate=drop_path_rate, cuda_graph=True).to(device)
    graphed.load_state_dict(eager.state_dict(), strict=True)
    if cache_kwargs:
        graphed.cuda_graphs = CudaGraphCache(**cache_kwargs)
    return eager, graphed


def _loss(outs):
    return sum((o.float() * torch.linspace(-1, 1, o.numel(), device=o.device).view_as(o)).mean() for o in outs)


def _assert_close(actual, expected, tol, what):
    """Max |actual - expected| within ``tol`` of max |expected| (atomics make the scan's sums order-dependent)."""
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    assert torch.isfinite(actual).all() and err <= tol * scale + 1e-7, f'{what}: {err:.3g} against {scale:.3g}'


def test_cpu_inputs_run_eagerly():
    eager, graphed = _pair()
    x = torch.randn(2, 3, 64, 48)
    for model in (eager, graphed):
        model.train()
    torch.manual_seed(0)
    ref = eager(x)
    torch.manual_seed(0)
    out = graphed(x)
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    assert graphed.cuda_graphs.graphs == {} and graphed.cuda_graphs.seen == {}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='cuda_graph and with_cp'):
        VMamba(**SMALL, cuda_graph=True, with_cp=True)
    with pytest.raises(ValueError, match='capture_after'):
        CudaGraphCache(max_graphs=0)


def test_copies_start_without_graphs():
    _, graphed = _pair()
    graphed.cuda_graphs.seen[('some', 'key')] = 5
    clone = copy.deepcopy(graphed)
    assert clone.cuda_graphs is not graphed.cuda_graphs and clone.cuda_graphs.seen == {}
    restored = pickle.loads(pickle.dumps(graphed.cuda_graphs))
    assert restored.seen == {} and restored.max_graphs == graphed.cuda_graphs.max_graphs


class _EagerStandIn:
    """CPU stand-in for a captured signature: "replays" run the module eagerly on the static input.

    It lets CI check the cache's policy and the replay's autograd plumbing without a GPU.
    """

    def __init__(self, module, x, params, pool, warmup_iters):
        self.module, self.params = module, params
        self.static_x = x.detach().clone()
        self.replays = 0
        self.backward_graph = _StandInBackward(self) if params else None

    def _run(self):
        cache = self.module.cuda_graphs
        cache.capturing = True  # the module's forward must run its eager body, not come back to the cache
        try:
            return self.module(self.static_x)
        finally:
            cache.capturing = False

    def replay_forward(self, x):
        self.static_x.copy_(x)
        self.replays += 1
        with torch.no_grad():
            self.static_outs = self._run()
        if self.backward_graph is not None:
            self.static_grad_outs = tuple(torch.empty_like(o) for o in self.static_outs)


class _StandInBackward:

    def __init__(self, entry):
        self.entry = entry

    def replay(self):
        entry = self.entry
        with torch.enable_grad():
            outs = entry._run()
            grads = torch.autograd.grad(outs, entry.params, entry.static_grad_outs, allow_unused=True)
        if not hasattr(entry, 'static_grads'):
            entry.static_grads = grads
        for static, grad in zip(entry.static_grads, grads):  # a graph writes into the same buffers every replay
            if static is not None:
                static.copy_(grad)


class _StandInCache(CudaGraphCache):
    entry_type = _EagerStandIn

    @staticmethod
    def _can_graph(x):
        return not x.requires_grad

    @staticmethod
    def _new_pool():
        return None


def test_cache_policy_on_the_cpu():
    """Capture on the third call of a signature, a signature per mode and size, the limit, fresh outputs."""
    eager, graphed = _pair()
    graphed.cuda_graphs = cache = _StandInCache(max_graphs=2)
    eager.eval(), graphed.eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        outs = [graphed(x + i) for i in range(4)]
        refs = [eager(x + i) for i in range(4)]
    assert len(cache.graphs) == 1 and next(iter(cache.graphs.values())).replays == 2
    for out, ref in zip(outs, refs):  # the replayed results are copies, not the entry's buffers
        assert all(torch.equal(a, b) for a, b in zip(out, ref))
    with torch.no_grad():
        for _ in range(3):
            graphed(torch.randn(1, 3, 64, 48))  # a second size: the second signature
        graphed.train()
        for _ in range(3):
            graphed(x)  # training mode is a third signature: past max_graphs=2, eager
    assert len(cache.graphs) == 2 and len(cache.seen) == 3


@pytest.mark.parametrize('second_call', [False, True], ids=['replay', 'replay-and-eager'])
def test_replay_gradients_on_the_cpu(second_call):
    """Two backward passes accumulate: the replay's gradients are fresh tensors; a pending forward goes eager."""
    eager, graphed = _pair()
    graphed.cuda_graphs = cache = _StandInCache(capture_after=0)
    eager.train(), graphed.train()
    x1, x2 = torch.randn(2, 2, 3, 32, 48)
    for _ in range(2):
        for model in (eager, graphed):
            loss = _loss(model(x1))
            if model is graphed:
                assert cache.pending is not None
            if second_call:
                loss = loss + 2 * _loss(model(x2))
            loss.backward()
    assert cache.pending is None and len(cache.graphs) == 1
    static = next(iter(cache.graphs.values())).static_grads
    for (name, p), q, s in zip(eager.named_parameters(), graphed.parameters(), static):
        assert q.grad is not None and q.grad.data_ptr() != s.data_ptr(), name
        _assert_close(q.grad, p.grad, 1e-5, f'gradient of {name}')


def test_a_forward_without_backward_does_not_block_later_replays():
    """A training forward whose outputs are dropped without a backward leaves nothing pending (it used to leave the
    cache eager for the rest of the run); one whose outputs live on keeps later calls eager."""
    _, graphed = _pair()
    graphed.cuda_graphs = cache = _StandInCache(capture_after=0)
    graphed.train()
    x = torch.randn(2, 3, 32, 48)
    kept = graphed(x)  # captured and replayed; its backward could still come
    entry = next(iter(cache.graphs.values()))
    graphed(x)
    assert entry.replays == 1, 'a call while a backward may come must run eagerly'
    del kept
    graphed(x)  # dropped at once: no backward possible
    assert entry.replays == 2
    _loss(graphed(x)).backward()
    assert entry.replays == 3 and cache.pending is None


def _train_steps(model, batches, dtype, accumulate=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for i, x in enumerate(batches):
        with torch.autocast('cuda', dtype=dtype):
            loss = _loss(model(x))
        loss.backward()
        losses.append(loss.item())
        if (i + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
    return losses


@needs_cuda
@pytest.mark.parametrize('accumulate, arch', [(1, SMALL), (2, SMALL), (1, VANILLA_SMALL)],
                         ids=['step', 'accumulate2', 'vanilla'])
def test_training_replays_match_eager(accumulate, arch):
    """Six steps: two eager, one capture, three replays; weights change in between (the graph must see them)."""
    eager, graphed = _pair('cuda', arch=arch)
    eager.train(), graphed.train()
    start = [p.detach().clone() for p in eager.parameters()]
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 64, 96, device='cuda') for _ in range(6)]
    ref = _train_steps(eager, batches, torch.bfloat16, accumulate)
    out = _train_steps(graphed, batches, torch.bfloat16, accumulate)
    assert len(graphed.cuda_graphs.graphs) == 1
    _assert_close(torch.tensor(out), torch.tensor(ref), 1e-2, 'losses')
    for (name, p), q, p0 in zip(eager.named_parameters(), graphed.parameters(), start):
        _assert_close(q - p0, p - p0, 2e-2, f'update of {name}')


@needs_cuda
def test_inference_replays_return_fresh_tensors():
    eager, graphed = _pair('cuda')
    eager.eval(), graphed.eval()
    xs = [torch.randn(1, 3, 64, 64, device='cuda') for _ in range(5)]
    with torch.no_grad():
        outs = [graphed(x) for x in xs]
        refs = [eager(x) for x in xs]
    assert len(graphed.cuda_graphs.graphs) == 1
    for out, ref in zip(outs, refs):  # earlier results are not overwritten by later replays
        for a, b in zip(out, ref):
            _assert_close(a, b, 1e-4, 'output')


@needs_cuda
def test_second_forward_before_backward_runs_eagerly():
    eager, graphed = _pair('cuda', capture_after=0)
    eager.train(), graphed.train()
    x1, x2 = torch.randn(2, 2, 3, 64, 64, device='cuda')
    for model in (eager, graphed):
        (_loss(model(x1)) + 2 * _loss(model(x2))).backward()
    assert graphed.cuda_graphs.pending is None
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        _assert_close(q.grad, p.grad, 1e-3, f'gradient of {name}')


@needs_cuda
def test_new_shapes_past_the_limit_and_moves():
    _, graphed = _pair('cuda', capture_after=0, max_graphs=1)
    graphed.eval()
    with torch.no_grad():
        graphed(torch.randn(1, 3, 32, 32, device='cuda'))
        graphed(torch.randn(1, 3, 64, 32, device='cuda'))
    assert len(graphed.cuda_graphs.graphs) == 1
    graphed.double()
    assert graphed.cuda_graphs.graphs == {}
