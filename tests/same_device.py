"""Catching tensors made on the wrong device without a GPU: run the code with the model on
PyTorch's `meta` device inside `same_device()`.

On a GPU, a tensor kecil creates on the CPU and mixes with the model's makes torch raise
"Expected all tensors to be on the same device". A CPU-only machine never sees that; the meta
device stands in for the GPU (its tensors have shapes but no data, so a forward and backward pass
cost nothing), but torch's meta kernels let some mixes pass (an embedding looked up with CPU ids,
indexing with a CPU index). `same_device()` closes that gap: every operation whose tensor
arguments sit on two devices raises, except a 0-dimensional CPU scalar (as CUDA allows) and an
explicit copy between devices.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operations whose whole point is to move data between devices.
_MOVES = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default}


class _SameDevice(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _MOVES:
            leaves, _ = tree_flatten((args, kwargs))
            devices = {t.device for t in leaves if isinstance(t, torch.Tensor) and not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                raise RuntimeError(f"{func} mixes tensors on {', '.join(sorted(map(str, devices)))}: "
                                   "a tensor was made on the wrong device")
        return func(*args, **kwargs)


@contextmanager
def same_device():
    """Raise on any operation that mixes devices, for the code run inside."""
    with _SameDevice():
        yield
