"""Values that change with the training step: 4D-fy's ``C()``.

A scheduled value is either a number (constant) or a list ``[start_step, start_value, end_value, end_step]``
(a 3-list means ``start_step = 0``). Between ``start_step`` and ``end_step`` the value moves linearly from
``start_value`` to ``end_value`` and is clamped outside. As in 4D-fy, an ``int`` ``end_step`` counts training
steps and a ``float`` ``end_step`` counts epochs. A step change is written ``[5000, 0.98, 0.5, 5001]``.
"""

from typing import Any, Union


def scheduled_value(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a scheduled value at a training position.

    Args:
        value: a number, or ``[start_step, start_value, end_value, end_step]`` (or the 3-list without start).
        epoch: current epoch (used when ``end_step`` is a float).
        global_step: current optimisation step (used when ``end_step`` is an int).

    Returns:
        ``start + (end - start) * clamp((cur - start_step) / (end_step - start_step), 0, 1)``.

    Example:
        >>> scheduled_value([0, 0.98, 0.5, 8000], epoch=0, global_step=4000)
        0.74
        >>> scheduled_value([10000, 0.0, 1000.0, 10001], epoch=0, global_step=9999)
        0.0
    """
    if isinstance(value, bool):
        raise TypeError(f"a scheduled value must be a number or a list, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, (list, tuple)) or len(value) not in (3, 4):
        raise TypeError(f"a scheduled value must be a number or [start_step, start, end, end_step], got {value!r}")
    if len(value) == 3:
        value = [0, *value]
    start_step, start_value, end_value, end_step = value
    current: Union[int, float] = global_step if isinstance(end_step, int) else epoch
    if end_step == start_step:
        fraction = 1.0 if current >= end_step else 0.0
    else:
        fraction = (current - start_step) / (end_step - start_step)
        fraction = min(max(fraction, 0.0), 1.0)
    return float(start_value + (end_value - start_value) * fraction)
