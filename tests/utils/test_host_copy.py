"""``HostCopy``: a device tensor's values reach the host behind the kernels that made them, read without a stall."""

import pytest
import torch

from fourdfy.utils.host_copy import HostCopy


def test_cpu_tensor_is_taken_as_it_is():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    copy = HostCopy.start(x * 2)
    assert copy.event is None and copy.ready()
    assert copy.wait().tolist() == [2.0, 4.0] and not copy.wait().requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_values_arrive_in_pinned_memory_after_the_queued_work():
    x = torch.randn(2048, 2048, device="cuda")
    y = (x @ x).sum(dim=1)[:5]  # queued: the copy must wait for it, not read a half-made buffer
    copy = HostCopy.start(y)
    assert copy.host.is_pinned() and copy.event is not None
    values = copy.wait()
    assert copy.ready()
    torch.testing.assert_close(values, y.cpu())
