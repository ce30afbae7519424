"""sslx: self-supervised visual representation learning in JAX/Flax."""

from setuptools import find_packages, setup

# Pinned so that a fresh install is the one the test-suite ran against (see BUILD_NOTES.md).
CORE = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "orbax-checkpoint==0.12.8",
  "grain==0.2.18",
  "ml-collections==1.1.0",
  "clu==0.0.12",
  "numpy>=2.0,<3",
  "pillow>=10",
  "tensorboardX==2.6.5",
  "absl-py>=2",
]

EXTRAS = {
  # Reading prepared tfds datasets works without TensorFlow (array_record data_source);
  # *preparing* one needs TensorFlow, which we keep out of the base install (+1.45 GB).
  "tfds": ["tensorflow-datasets>=4.9", "array-record"],
  # t-SNE (scikit-learn), UMAP (umap-learn), PNG plots and reports (matplotlib).
  "plots": ["matplotlib>=3.8", "scikit-learn>=1.4", "umap-learn>=0.5"],
  # Tests: plots without UMAP (numba is slow to install and compile), selenium for the
  # simulation page in headless chromium (Debian's chromium + chromium-driver, see .ci/run).
  # The TPU compiler without a TPU: `python -m sslx plan --topology=v4-32` compiles the train
  # step for a slice on any machine (sslx/planning.py). The version jax[tpu]==0.10.2 pins.
  "tpu-compile": ["libtpu==0.0.42.*"],
  "dev": [
    "pytest>=8",
    "ruff==0.17.6",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "selenium>=4.20",
    "libtpu==0.0.42.*",  # the planner's TPU-compiler tests (tests/test_planning.py)
  ],
}

setup(
  name="sslx",
  version="0.1.0",
  description="Self-supervised visual representation learning in JAX/Flax",
  packages=find_packages(include=["sslx", "sslx.*"]),
  package_data={"sslx.data": ["embedded/*.tar"]},
  include_package_data=True,
  python_requires=">=3.10",
  install_requires=CORE,
  extras_require=EXTRAS,
)
