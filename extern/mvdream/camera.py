"""Camera conditioning of MVDream: threestudio camera-to-world matrices -> the 16 values fed to ``camera_embed``.

Convention (bytedance/MVDream ``camera_utils.normalize_camera``, as used by MVDream-threestudio and 4D-fy):

* The input is threestudio's ``c2w`` [B, 4, 4]: columns are [right, up, -lookat | position] in a z-up world with
  OpenGL camera axes, position = dist * (cos(e) cos(a), cos(e) sin(a), sin(e)). This is already MVDream's
  (Blender-like) convention, so no axis conversion is applied.
* The translation column is scaled to unit length: ``t / (||t|| + 1e-8)``. The camera distance therefore does not
  reach the network, only the direction from the origin.
* The 4x4 matrix (rotation, normalised translation, last row kept as given, normally [0, 0, 0, 1]) is flattened
  row-major to 16 values.

The original writes the normalised translation back into the caller's matrix; this function does not mutate its
input.
"""

from jaxtyping import Float
from torch import Tensor
import torch

# Added to the translation norm by the original, so a camera at the origin maps to a zero translation, not NaN.
_NORM_EPS = 1e-8


def c2w_to_mvdream_camera(c2w: Float[Tensor, "b 4 4"]) -> Float[Tensor, "b 16"]:
    """Convert camera-to-world matrices to MVDream's flattened, distance-normalised camera vector.

    ``camera[i] = flatten_row_major([[R_i, t_i / (||t_i|| + 1e-8)], [last_row_i]])``

    Args:
        c2w: threestudio camera-to-world matrices [B, 4, 4] (not modified).

    Returns:
        [B, 16] camera vectors in the dtype/device of ``c2w``.
    """
    translation = c2w[:, :3, 3:]
    unit_translation = translation / (torch.linalg.vector_norm(translation, dim=1, keepdim=True) + _NORM_EPS)
    top = torch.cat([c2w[:, :3, :3], unit_translation], dim=2)
    matrix = torch.cat([top, c2w[:, 3:, :]], dim=1)
    return matrix.reshape(c2w.shape[0], 16)
