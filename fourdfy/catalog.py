"""The one explicit list of built-in modules: importing it registers every type name."""

import fourdfy.background.neural_environment_map_background  # noqa: F401
import fourdfy.data.single_multiview_combined  # noqa: F401
import fourdfy.exporters.mesh_exporter  # noqa: F401
import fourdfy.geometry.implicit_volume  # noqa: F401
import fourdfy.guidance.multiview_diffusion_guidance  # noqa: F401
import fourdfy.guidance.stable_diffusion_vsd_guidance  # noqa: F401
import fourdfy.guidance.videocrafter_guidance  # noqa: F401
import fourdfy.guidance.zeroscope_guidance  # noqa: F401
import fourdfy.materials.no_material  # noqa: F401
import fourdfy.prompt_processors.stable_diffusion_prompt_processor  # noqa: F401
import fourdfy.prompt_processors.videocrafter_prompt_processor  # noqa: F401
import fourdfy.prompt_processors.zeroscope_prompt_processor  # noqa: F401
import fourdfy.renderers.nerf_volume_renderer  # noqa: F401
import fourdfy.systems.fourdfy  # noqa: F401
