"""The canary of ``tests/conftest.py``: the jaxtyping import hook really checks shapes in ``fourdfy`` code.

If the hook were not installed (or installed after the package was imported), every shape annotation in the
package would be decoration only and the suite would silently stop checking them.
"""

import jaxtyping
import pytest
import torch

from fourdfy.renderers.volume_rendering import accumulate_along_rays
from fourdfy.systems.losses import tv_loss


def test_a_wrong_shape_is_refused():
    with pytest.raises(jaxtyping.TypeCheckError):
        tv_loss(torch.zeros(3, 4))  # annotated [C, T, H, W]


def test_a_wrong_dtype_is_refused():
    with pytest.raises(jaxtyping.TypeCheckError):
        accumulate_along_rays(torch.ones(4), None, torch.zeros(4, dtype=torch.float32), 2)  # ray indices must be ints


def test_a_right_call_passes():
    assert float(tv_loss(torch.zeros(3, 2, 4, 4))) == 0.0
