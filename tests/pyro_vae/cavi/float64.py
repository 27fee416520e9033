"""What every CAVI test builds its tensors with: CAVI runs in float64."""

import torch

F64 = torch.float64


def t(x) -> torch.Tensor:
    """``x`` as a float64 tensor."""
    return torch.tensor(x, dtype=F64)
