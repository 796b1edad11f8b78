"""align_jax: the LLM alignment pipeline in JAX/Flax NNX.

Version ranges are the ones tested on the project's machines (Python 3.11, CPU).
"""

from setuptools import find_packages, setup

setup(
    name="align_jax",
    version="0.1.0",
    description="JAX/Flax research codebase for LLM alignment: pretraining, SFT, RM, PPO, DPO, GRPO.",
    python_requires=">=3.11",
    packages=find_packages(include=["align_jax", "align_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "ml-collections>=1.1.0,<1.2",
        "sentencepiece>=0.2.3,<0.3",
        "absl-py>=2.1,<3",
        "numpy>=2.0,<3",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
    ],
    extras_require={
        # torch and transformers are references in tests (Hugging Face interop), never imported
        # by align_jax itself. torch 2.13.0 is pinned: its PyPI wheel here is the CPU build.
        "test": [
            "pytest>=8,<10",
            "pytest-xdist>=3.8,<4",  # `make test` runs the quick tier on several workers
            "ruff>=0.6",
            "tokenizers>=0.20,<1",
            "jinja2>=3.1.6,<4",
            "torch==2.13.0",
            "transformers>=5.24,<5.25",
            "math-verify>=0.9,<0.10",  # the `math` extra, so `math_equiv` is tested
            "wandb>=0.26,<0.32",  # the `wandb` extra, so W&B logging is tested (offline)
            "matplotlib>=3.10,<4",  # the `demo` extra: the demo's test draws its plots
        ],
        # `make demo`: its plots.
        "demo": ["matplotlib>=3.10,<4"],
        # The TPU build of jax: optional, never needed on a laptop or GPU box.
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        # Hugging Face interop: tokenizer.json tokenizers and checkpoints' chat templates.
        # (safetensors files are read and written by align_jax.interop.safetensors itself.)
        "hf": ["tokenizers>=0.20,<1", "jinja2>=3.1.6,<4"],
        # The `math_equiv` reward function (align_jax.rollout.rewards).
        "math": ["math-verify>=0.9,<0.10"],
        # Weights & Biases logging (config.wandb). 0.26 is the first to allow protobuf 7;
        # tested with 0.26.0 and 0.31.0.
        "wandb": ["wandb>=0.26,<0.32"],
    },
)
