"""vocal-mst: single-track vocal mixing style transfer, after Diff-MST (Vanka, Steinmetz et al., ISMIR 2024)."""
from setuptools import find_packages, setup

# torch is a range, so that a hosted notebook runtime (Colab) keeps the torch build it ships with
# (notebooks/quickstart.ipynb installs with the constraint torch==<the runtime's version>). Both ends
# are tested releases: 2.6.0 by hand (a multi-GB download), 2.14.1 in CI, by tests/test_notebook.py;
# from 2.6 on torch.load defaults to weights_only=True, so checkpoints load the same way throughout.
# The Makefile installs 2.13.0 (a CPU build from local disk) for the rest of CI; see the README,
# "Quickstart in a hosted notebook". A plain `torch` requirement without torch pulls a multi-GB CUDA build.
TORCH_REQUIREMENT = "torch>=2.6,<2.15"
# Everything else is pinned exactly: a fresh machine resolves the same environment CI tested.
INSTALL_REQUIRES = [
    TORCH_REQUIREMENT,
    "numpy==2.4.6",
    "scipy==1.17.1",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "pyloudnorm==0.2.0",
    "numba==0.68.1",
    "pytorch-lightning==2.6.6",
    "jsonargparse[signatures]==4.53.0",
    "wandb==0.31.0",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "PyYAML==6.0.4",
    "psutil==7.2.2",
]

EXTRAS = {
    # pedalboard (GPL-3.0) renders the demo data's mixed vocals; the core package never imports it.
    "demo": ["pedalboard==0.9.26"],
    # Reference implementations we compare against in tests and benchmarks (never imported by the core).
    "reference": ["dasp-pytorch==0.0.1", "auraloss==0.4.0"],
}
# nbclient + ipykernel execute notebooks/quickstart.ipynb in tests/test_notebook.py.
EXTRAS["notebook"] = ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"]
EXTRAS["dev"] = EXTRAS["demo"] + EXTRAS["reference"] + EXTRAS["notebook"] + ["pytest==9.2.0", "pytest-timeout==2.4.0"]

setup(
    name="vocal-mst",
    version="0.1.0",
    description="Learn a producer's vocal mixing style from raw/mixed pairs (single-track Diff-MST).",
    packages=find_packages(include=["mst_single", "mst_single.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["mst-single=mst_single.cli:main"]},
    license="MIT",
)
