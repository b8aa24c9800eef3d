"""The training branches of 4D-fy's hybrid score distillation, described once.

A training batch belongs to one branch (its :class:`~fourdfy.data.batch.BatchKind`, decided by the data module):

=============== ======================================= ============ ==================== =================
branch          guidance / prompt processor slots        renders      trains the 4-D part  gradient budget
=============== ======================================= ============ ==================== =================
multi-view      ``guidance_multi_view`` (MVDream)        B views, T=1 no (1)               ``train_max_nums_static``
single view     ``guidance`` (VSD)                       B=1, T=1     no (1)               ``train_max_nums_static``
video           ``guidance_video`` (ZeroScope / VC2)     B=1, T=N     yes                  ``train_max_nums``
=============== ======================================= ============ ==================== =================

(1) unless ``freeze_static_modules``: then *only* the 4-D part trains, on every branch (4D-fy's rule).

Rules, as 4D-fy ran them:

1. ``P(multi-view) = data.prob_multi_view``; a single-view batch is a video clip with probability
   ``data.single_view.prob_single_view_video`` when the stage is dynamic and ``simultan`` is set, so
   ``P(video) = (1 - P(mv)) * p_video`` and ``P(single) = (1 - P(mv)) * (1 - p_video)``
   (:func:`branch_probabilities`).
2. A branch whose probability is 0 is not built (4D-fy built every guidance; a 2.6 GB video model is not loaded
   for a stage that never draws a clip).
3. Image guidances receive ``[B*T, H, W, 3]`` frames; video guidances ``[B, T, H, W, 3]`` clips.
4. The values the data module uses to draw branches also sit under ``system.*`` in 4D-fy's configs
   (``prob_multi_view``, ``simultan``, ``prob_single_view_video``) and whether the scene is static is held in
   both ``data.single_view.static`` and the geometry's ``pos_encoding_config.static``: :func:`check_agreement`
   refuses a config where they differ, naming both keys.
"""

import dataclasses
from typing import Any, Optional

from fourdfy.data.batch import BatchKind


@dataclasses.dataclass(frozen=True)
class BranchSlots:
    """Where a branch's parts are configured (``system.<guidance>``, ``system.<prompt_processor>``) and held."""

    kind: BatchKind
    guidance: str
    """Config slot of the guidance (``system.guidance`` is 4D-fy's name for the single-view one)."""
    prompt_processor: str
    attribute: str
    """System attribute holding the built guidance."""
    video: bool
    """The guidance takes clips ``[B, T, H, W, 3]`` (else frames ``[B*T, H, W, 3]``)."""


BRANCH_SLOTS: tuple[BranchSlots, ...] = (
    BranchSlots(BatchKind.MULTI_VIEW, "guidance_multi_view", "prompt_processor_multi_view", "guidance_multi_view", False),
    BranchSlots(BatchKind.SINGLE_VIEW, "guidance", "prompt_processor", "guidance_single_view", False),
    BranchSlots(BatchKind.VIDEO, "guidance_video", "prompt_processor_video", "guidance_video", True),
)
"""Every branch, in the order they are built."""


@dataclasses.dataclass
class Branch:
    """A built branch: what ``training_step`` needs for a batch of this kind."""

    slots: BranchSlots
    prompt_embeddings: Any
    """:class:`~fourdfy.prompt_processors.base.PromptEmbeddings` of the branch's prompt processor."""
    trains_temporal: bool
    """Whether the geometry's temporal parameters receive gradients on this branch."""
    grad_budget: Optional[int]
    """Gradient-carrying samples the renderer may use (low-VRAM renderers), ``None``: no cap."""


def branch_probabilities(
    prob_multi_view: float, static: bool, simultan: bool, prob_single_view_video: Optional[float]
) -> dict[BatchKind, float]:
    """How often each branch is drawn (rule 1 of the module docstring).

    Example: stage 3 (``prob_multi_view=0.5``, dynamic, ``simultan``, ``prob_single_view_video=0.5``) gives
    multi-view 0.5, single view 0.25, video 0.25.
    """
    p_video = 0.0 if static or not simultan or prob_single_view_video is None else prob_single_view_video
    rest = 1.0 - prob_multi_view
    return {
        BatchKind.MULTI_VIEW: prob_multi_view,
        BatchKind.SINGLE_VIEW: rest * (1.0 - p_video),
        BatchKind.VIDEO: rest * p_video,
    }


def check_agreement(system: dict, data: dict) -> list[str]:
    """Errors for values held in both ``system.*`` and ``data.*`` that differ (rule 4); empty when they agree.

    Args:
        system: the raw ``system`` config mapping.
        data: the raw ``data`` config mapping.
    """
    single = data.get("single_view") or {}
    pairs = [
        ("system.prob_multi_view", system.get("prob_multi_view"), "data.prob_multi_view", data.get("prob_multi_view", 0.5)),
        ("system.simultan", system.get("simultan"), "data.single_view.simultan", single.get("simultan", False)),
        ("system.prob_single_view_video", system.get("prob_single_view_video"),
         "data.single_view.prob_single_view_video", single.get("prob_single_view_video")),
    ]  # fmt: skip
    geometry = system.get("geometry") or {}
    encoding = geometry.get("pos_encoding_config") or {}
    if "static" in encoding:
        pairs.append(("system.geometry.pos_encoding_config.static", encoding.get("static"),
                      "data.single_view.static", single.get("static", True)))  # fmt: skip
    errors = []
    for key_a, a, key_b, b in pairs:
        if a is not None and b is not None and a != b:
            errors.append(f"{key_a} ({a!r}) and {key_b} ({b!r}) must agree: 4D-fy keeps both, set them to the same "
                          f"value (or interpolate one from the other, as 4D-fy's configs do)")  # fmt: skip
    return errors
