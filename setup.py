"""fourdfy: text-to-4D generation (a clean re-implementation of 4D-fy). Pinned dependencies: requirements.txt."""

from setuptools import find_packages, setup

setup(
    name="fourdfy",
    version="0.1.0",
    description="Text-to-4D generation with hybrid score distillation (4D-fy re-implementation)",
    packages=find_packages(include=["fourdfy", "fourdfy.*", "extern", "extern.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "pytorch-lightning>=2.4",
        "omegaconf>=2.3",
        "diffusers>=0.30",
        "transformers>=4.40",
        "huggingface-hub",
        "safetensors",
        "imageio",
        "jaxtyping",
        "numpy",
        "PyMCubes",
        "trimesh",
        "pygltflib",
        "tqdm",
    ],
    package_data={"fourdfy.evaluation": ["assets/*", "prompts/*.txt"]},
    extras_require={"dev": ["pytest", "pytest-xdist", "beartype"], "video": ["imageio-ffmpeg"]},
)
