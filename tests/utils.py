"""Dtype-aware comparison of a kernel against its reference (style habit 5)."""
import torch

# fp32: elementwise |out - ref| <= ATOL * max(1, max|ref|) + RTOL * |ref|.
FP32_RTOL = 1e-3
FP32_ATOL = 1e-4
# 16-bit (flash-attn rule): max|out - ref| <= 2 * max|out_lowp - ref| + ATOL * max(1, max|ref|), where ref is the
# fp32 computation on the unrounded inputs and out_lowp the same PyTorch computation on the 16-bit inputs.
LOWP_ATOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2}


def relative_rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """fla's relative RMSE: ||out - ref|| / ||ref||."""
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def assert_close(name: str,
                 out: torch.Tensor,
                 ref: torch.Tensor,
                 out_lowp: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
    """Assert that a kernel result matches the fp32 reference for inputs of ``dtype``.

    Args:
        name: what is compared (shown on failure).
        out: the kernel's result.
        ref: the fp32 reference on fp32 inputs.
        out_lowp: the PyTorch reference run on the ``dtype`` inputs; required when ``dtype`` is 16-bit.
        dtype: the input dtype of the test. Default: torch.float32.
    """
    assert out.shape == ref.shape, f'{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}'
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(ref).all(), f'{name}: the reference is not finite (bad test inputs)'
    n_bad = (~torch.isfinite(out)).sum().item()
    assert n_bad == 0, f'{name}: {n_bad} of {out.numel()} elements are NaN/inf (unwritten or overflowed)'
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    err = (out - ref).abs()
    max_err = err.max().item() if err.numel() else 0.
    msg = f'{name} ({dtype}): max err {max_err:.3e}, rel rmse {relative_rmse(out, ref):.2e}'
    if dtype == torch.float32:
        bad = err > FP32_ATOL * scale + FP32_RTOL * ref.abs()
        assert not bad.any(), (f'{msg}; {bad.sum().item()} elements beyond rtol {FP32_RTOL}, '
                               f'atol {FP32_ATOL}*{scale:.3g}')
        return
    assert out_lowp is not None, f'{name}: a {dtype} comparison needs the same-dtype PyTorch result'
    err_lowp = (out_lowp.detach().double().cpu() - ref).abs().max().item() if ref.numel() else 0.
    bound = 2 * err_lowp + LOWP_ATOL[dtype] * scale
    assert max_err <= bound, f'{msg}; bound 2*{err_lowp:.3e} + {LOWP_ATOL[dtype]}*{scale:.3g}'
