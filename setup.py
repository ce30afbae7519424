"""sslx: self-supervised visual representation learning in JAX/Flax."""

from setuptools import find_packages, setup

# Compatible ranges, so sslx installs beside a user's jax[tpu] / jax[cuda12] of another patch
# release; the exact set the test-suite ran against is constraints.txt (CI installs with it).
JAX = "jax>=0.10.2,<0.11"
CORE = [
  JAX,
  "jaxlib>=0.10.2,<0.11",
  "flax>=0.12.8,<0.13",
  "optax>=0.2.8,<0.3",
  "orbax-checkpoint>=0.12.8,<0.13",
  "grain>=0.2.18,<0.3",
  "ml-collections>=1.1,<2",
  "clu>=0.0.12,<0.1",
  "etils[epath]>=1.7",
  "numpy>=2.0,<3",
  "pillow>=10",
  # Host crops (sslx.data.crops): libjpeg-turbo scaled decoding and SIMD resizing.
  "simplejpeg>=1.9",
  "opencv-python-headless>=4.9",
  # Prepared datasets (sslx.data.array_records): ArrayRecord shards.
  "array-record>=0.8.6",
  "tensorboardX>=2.6.5,<3",
  "absl-py>=2",
  "safetensors==0.8.0",  # encoder weights in and out (numpy API: no torch needed)
]
# gs:// workdirs and datasets (etils.epath reads and lists through fsspec's gcsfs; orbax
# writes arrays with tensorstore's own GCS driver).
GCS = ["gcsfs>=2024.2"]

EXTRAS = {
  # Accelerators: the matching jax extra (libtpu / CUDA 12 wheels) within the same range.
  "tpu": [JAX.replace("jax", "jax[tpu]", 1), *GCS],
  "cuda12": [JAX.replace("jax", "jax[cuda12]", 1)],
  "gcs": GCS,
  # Reading prepared tfds datasets works without TensorFlow (array_record data_source);
  # *preparing* one needs TensorFlow, which we keep out of the base install (+1.45 GB).
  "tfds": ["tensorflow-datasets>=4.9", "array-record"],
  # t-SNE (scikit-learn), UMAP (umap-learn), PNG plots and reports (matplotlib).
  "plots": ["matplotlib>=3.8", "scikit-learn>=1.4", "umap-learn>=0.5"],
  # Tests: plots without UMAP (numba is slow to install and compile), selenium for the
  # simulation page in headless chromium (Debian's chromium + chromium-driver, see .ci/run);
  # a GCS API on loopback (gcp-storage-emulator) for the gs:// workdir tests; libtpu for the
  # planner's TPU-compiler tests (tests/test_planning.py).
  # The TPU compiler without a TPU: `python -m sslx plan --topology=v4-32` compiles the train
  # step for a slice on any machine (sslx/planning.py). The version jax[tpu]==0.10.2 pins.
  "tpu-compile": ["libtpu==0.0.42.*"],
  "dev": [
    "pytest>=8",
    # two test workers (`pytest -n 2`): the suite's compilations are mostly single-threaded
    "pytest-xdist>=3.5",
    "ruff==0.17.6",
    "matplotlib>=3.8",
    "scikit-learn>=1.4",
    "selenium>=4.20",
    "gcp-storage-emulator>=2026.7",
    *GCS,
    "libtpu==0.0.42.*",
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
