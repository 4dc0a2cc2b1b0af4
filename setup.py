"""Scaling-study toolkit: efficient Transformers against a GPT baseline at equal compute."""
from setuptools import find_packages, setup

setup(
    name="scaling",
    version="0.1.0",
    description="isoFLOP comparisons of efficient Transformer designs in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["scaling*", "experiments*", "launch*"]),
    # Lower bounds: the oldest releases the test suite passes with (.ci/lowest runs it with them).
    install_requires=[
        "jax>=0.10.2",
        # jaxlib 0.10.1 (which jax 0.10.2 admits) logs two errors whenever it loads a program from the
        # compilation cache on an AMD Zen 4 ("Target machine feature +prefer-no-gather is not supported").
        "jaxlib>=0.10.2",
        "flax>=0.12.2",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.17",
        "grain>=0.2.14",
        "cloudpickle>=3.0",
        "sentencepiece>=0.2",
        "chex>=0.1.87",
        "absl-py>=2.1",
        "numpy>=1.26",
        # With numpy < 2.5 (all Python 3.11 has), ml_dtypes 0.7 takes 1.3-2 s to import (its ufunc loops
        # are registered one linear search at a time): every process that imports jax pays it.
        "ml_dtypes>=0.5,<0.7; python_version < '3.12'",
        "scipy>=1.11",
        "threadpoolctl>=3.1",
        # gs:// workdirs and data: etils.epath reads them through gcsfs where TensorFlow is not installed
        # (without it, every gs:// path ended in "ImportError: Please install gcsfs").
        "etils[epath,epath-gcs]>=1.5",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "data": ["tensorflow-datasets>=4.9.10"],
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.8",
            "nbformat>=5.9",
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "tensorflow-datasets>=4.9.10",
            "gcp-storage-emulator>=2026.7",  # a local GCS server for the gs:// tests (no network)
        ],
    },
)
