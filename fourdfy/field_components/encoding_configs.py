"""Typed configs for the tcnn-style encoding and network dicts of the 4D-fy configs.

4D-fy writes encodings and MLPs as tiny-cuda-nn dicts selected by ``otype``::

    pos_encoding_config: {otype: HashGridSpatialTime, n_levels: 16, ..., static: true, num_frames: 16}
    pos_encoding_config: {otype: HashGridSpatialTimeDeform, ..., time_encoding_config: {otype: Grid, type: Hash,
                          ..., start_level: 4, start_step: 0, update_steps: 500},
                          time_network_config: {otype: VanillaMLP, n_neurons: 64, n_hidden_layers: 2}}
    dir_encoding_config: {otype: SphericalHarmonics, degree: 3}
    mlp_network_config: {otype: VanillaMLP, activation: ReLU, output_activation: none, n_neurons: 64, n_hidden_layers: 1}

:func:`parse_encoding_config` / :func:`parse_mlp_config` pick the dataclass from ``otype`` and parse strictly with
:func:`fourdfy.config.parse_config`: unknown keys, wrong types and unknown otypes raise
:class:`~fourdfy.config.ConfigError` naming the dotted path. Absent keys take tiny-cuda-nn's defaults.

Keys that are accepted but have no effect here, on purpose:

* ``start_level``, ``start_step``, ``update_steps`` of a ``Grid``/``HashGrid``: they only mean something for
  threestudio's ``ProgressiveBandHashGrid``; 4D-fy's deformation configs put them on a plain ``Grid`` where tcnn
  ignores them, so there is no coarse-to-fine schedule. They are validated, kept, and logged once.
* ``num_frames`` of the SpatialTime encodings: read by the system (number of video frames), not by the encoder.

``precision`` (``auto``/``autocast``/``fp32``) of a ``VanillaMLP`` is this project's addition too: whether the MLP's
linear layers follow the ambient autocast (see :class:`VanillaMLPConfig`).

``implementation`` (``auto``/``torch``/``tcnn``/``triton``) is this project's addition: which hash-grid backend to use
(``auto``: tiny-cuda-nn if it imports, else Triton on CUDA, else PyTorch).
"""

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, Optional, Union

from fourdfy.config import ConfigError, choice, did_you_mean, join_path, parse_config
from fourdfy.field_components.activations import MLP_ACTIVATIONS

logger = logging.getLogger(__name__)



_logged_inert: set[str] = set()

MLP_PRECISIONS = ("auto", "autocast", "fp32")
"""Values of a network dict's ``precision`` (see :class:`VanillaMLPConfig`)."""


def _positive(name: str, value: Union[int, float]) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


@dataclasses.dataclass(kw_only=True)
class HashGridParams:
    """Hyper-parameters shared by every multiresolution grid (tcnn defaults where a key is absent)."""

    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 2.0
    implementation: str = choice("auto", ("auto", "torch", "tcnn", "triton"), "hash-grid backend (project extension)")

    def __post_init__(self) -> None:
        for name in ("n_levels", "log2_hashmap_size", "base_resolution", "per_level_scale"):
            _positive(name, getattr(self, name))
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ValueError(f"n_features_per_level must be 1, 2, 4 or 8 (as in tiny-cuda-nn), got {self.n_features_per_level}")
        if self.log2_hashmap_size > 30:
            raise ValueError(f"log2_hashmap_size must be at most 30, got {self.log2_hashmap_size}")


@dataclasses.dataclass(kw_only=True)
class GridEncodingConfig(HashGridParams):
    """``otype: Grid`` (with ``type``) or ``otype: HashGrid``: a plain multiresolution grid."""

    otype: str = choice("HashGrid", ("HashGrid", "Grid"))
    type: str = choice("Hash", ("Hash", "Dense", "Tiled"), "tcnn grid type")
    # Inert on purpose (see module docstring): accepted like 4D-fy, validated, never used.
    start_level: Optional[int] = None
    start_step: Optional[int] = None
    update_steps: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        inert = [k for k in ("start_level", "start_step", "update_steps") if getattr(self, k) is not None]
        key = ",".join(inert)
        if inert and key not in _logged_inert:
            _logged_inert.add(key)
            logger.info(
                "Grid encoding keys %s are accepted but have no effect (as in 4D-fy: only threestudio's "
                "ProgressiveBandHashGrid uses them; a plain Grid has no coarse-to-fine schedule).",
                ", ".join(inert),
            )


@dataclasses.dataclass(kw_only=True)
class HashGridSpatialTimeConfig(HashGridParams):
    """``otype: HashGridSpatialTime``: a 3-D grid plus a 4-D (x, t) grid with the same hyper-parameters."""

    otype: str = choice("HashGridSpatialTime", ("HashGridSpatialTime",))
    static: bool = True
    num_frames: int = 1  # consumed by the system (video length), not by the encoder

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("num_frames", self.num_frames)


@dataclasses.dataclass(kw_only=True)
class VanillaMLPConfig:
    """``otype: VanillaMLP``: bias-free ReLU MLP (threestudio's ``VanillaMLP``)."""

    otype: str = choice("VanillaMLP", ("VanillaMLP",))
    n_neurons: int
    n_hidden_layers: int
    activation: str = "ReLU"
    output_activation: Optional[str] = "none"
    bias: bool = False
    precision: str = choice("auto", MLP_PRECISIONS, "precision of the linear layers (project extension)")
    """Precision of the linear layers (this project's key; 4D-fy's tcnn ``FullyFusedMLP`` always ran fp16).
    ``auto``: on CUDA the layers follow the ambient autocast (``trainer.precision: 16-mixed`` runs them in fp16,
    the GradScaler guarding the backward; no autocast: fp32); off CUDA they run in fp32 with autocast disabled.
    ``autocast``: follow the ambient autocast on every device (e.g. CPU bf16). ``fp32``: always fp32 with autocast
    disabled (the behaviour before this key). Outputs are float32 in every mode; parameters stay fp32."""

    def __post_init__(self) -> None:
        _positive("n_neurons", self.n_neurons)
        _positive("n_hidden_layers", self.n_hidden_layers)
        for name in ("activation", "output_activation"):
            value = getattr(self, name)
            if value is not None and value.lower() not in MLP_ACTIVATIONS:
                raise ValueError(
                    f"{name}: unknown activation {value!r}.{did_you_mean(value.lower(), MLP_ACTIVATIONS)} "
                    f"Valid (case-insensitive): {', '.join(MLP_ACTIVATIONS)}."
                )


@dataclasses.dataclass(kw_only=True)
class HashGridSpatialTimeDeformConfig(HashGridParams):
    """``otype: HashGridSpatialTimeDeform``: canonical 3-D grid warped by ``MLP(grid4(x, t))``."""

    otype: str = choice("HashGridSpatialTimeDeform", ("HashGridSpatialTimeDeform",))
    static: bool = True
    num_frames: int = 1  # consumed by the system (video length), not by the encoder
    time_encoding_config: GridEncodingConfig
    time_network_config: VanillaMLPConfig

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("num_frames", self.num_frames)


@dataclasses.dataclass(kw_only=True)
class SphericalHarmonicsConfig:
    """``otype: SphericalHarmonics``: real SH of bands ``0 .. degree-1`` (``degree^2`` outputs)."""

    otype: str = choice("SphericalHarmonics", ("SphericalHarmonics",))
    degree: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.degree <= 8:
            raise ValueError(f"degree must be in [1, 8] (tiny-cuda-nn's range), got {self.degree}")


EncodingConfig = Union[
    GridEncodingConfig, HashGridSpatialTimeConfig, HashGridSpatialTimeDeformConfig, SphericalHarmonicsConfig
]
MLPConfig = VanillaMLPConfig

ENCODING_CONFIGS: dict[str, type] = {
    "HashGrid": GridEncodingConfig,
    "Grid": GridEncodingConfig,
    "HashGridSpatialTime": HashGridSpatialTimeConfig,
    "HashGridSpatialTimeDeform": HashGridSpatialTimeDeformConfig,
    "SphericalHarmonics": SphericalHarmonicsConfig,
}
MLP_CONFIGS: dict[str, type] = {"VanillaMLP": VanillaMLPConfig}


def _parse_by_otype(table: dict[str, type], what: str, config: Any, path: str) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        if type(config) not in table.values():
            raise ConfigError(f"{path}: {type(config).__name__} is not a {what} config")
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: expected a mapping with an `otype` key for the {what}, got {config!r}")
    if "otype" not in config:
        raise ConfigError(f"{join_path(path, 'otype')}: missing; the {what} type is one of {', '.join(table)}.")
    otype = config["otype"]
    if not isinstance(otype, str) or otype not in table:
        raise ConfigError(
            f"{join_path(path, 'otype')}: unknown {what} type {otype!r}.{did_you_mean(str(otype), table)} "
            f"Supported: {', '.join(table)}."
        )
    return parse_config(table[otype], config, path)


def parse_encoding_config(config: Any, path: str) -> EncodingConfig:
    """Parse a tcnn-style encoding dict (or pass a parsed config through), choosing the dataclass by ``otype``.

    Args:
        config: the raw mapping (plain dict or OmegaConf ``DictConfig``) or an already parsed config.
        path: dotted location of the dict, used in error messages.

    Raises:
        ConfigError: unknown ``otype``, unknown key, wrong type or invalid value (the message names the key).
    """
    return _parse_by_otype(ENCODING_CONFIGS, "encoding", config, path)


def parse_mlp_config(config: Any, path: str) -> MLPConfig:
    """Parse a tcnn-style network dict (``otype: VanillaMLP``); see :func:`parse_encoding_config`."""
    return _parse_by_otype(MLP_CONFIGS, "network", config, path)
