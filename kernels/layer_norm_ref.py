"""Pure-PyTorch LayerNorm over the last dimension with a chosen output dtype: the CPU path and the oracle."""
import torch
import torch.nn.functional as F


def layer_norm_ref(x: torch.Tensor,
                   weight: torch.Tensor,
                   bias: torch.Tensor,
                   eps: float = 1e-5,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """LayerNorm of the last dimension computed in fp32, returned in ``out_dtype``.

    Args:
        x: ``[..., C]``.
        weight: ``[C]``.
        bias: ``[C]``.
        eps: added to the variance. Default: 1e-5.
        out_dtype: dtype of the result. Default: None (``x.dtype``).

    Returns:
        ``[..., C]`` in ``out_dtype``.
    """
    y = F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps)
    return y.to(out_dtype or x.dtype)
