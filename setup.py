"""p3d_keras: Pseudo-3D Residual Networks for Keras 3 / TensorFlow."""
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent


def read_version():
    """The version string from p3d_keras/version.py, without importing the package."""
    scope = {}
    exec((HERE / "p3d_keras" / "version.py").read_text(), scope)
    return scope["__version__"]


# Where `tensorflow-cpu` has wheels (Linux x86_64, Windows x86_64), and its complement (PEP 508
# markers have no `not`): elsewhere (macOS, Linux aarch64) the `tensorflow` wheel is the CPU build.
TF_CPU_WHEELS = ('(sys_platform == "linux" and platform_machine == "x86_64") or '
                 '(sys_platform == "win32" and platform_machine == "AMD64")')
NO_TF_CPU_WHEELS = ('(sys_platform != "linux" and sys_platform != "win32") or '
                    '(sys_platform == "linux" and platform_machine != "x86_64") or '
                    '(sys_platform == "win32" and platform_machine != "AMD64")')
# Floors are the versions tested (`make test` installs the `test` extra): TensorFlow 2.21 (which
# needs keras >= 3.12), PyAV 17 for `VideoFrame.reformat(threads=...)`.
TF = "2.21"
VIDEO = ["av>=17", "pillow>=9", "google-crc32c>=1.5"]
EXTRAS = {
    "tf": [f"tensorflow>={TF}", "tensorboard"],
    "tf-cpu": [f"tensorflow-cpu>={TF}; {TF_CPU_WHEELS}", f"tensorflow>={TF}; {NO_TF_CPU_WHEELS}", "tensorboard"],
    "tf-gpu": [f"tensorflow[and-cuda]>={TF}", "tensorboard"],  # CUDA wheels exist for Linux only
    "video": VIDEO,
    # p3d-tfrecords convert --modality flow: OpenCV's TV-L1 (contrib); install no other OpenCV package beside it
    "flow": ["opencv-contrib-python-headless>=5.0", *VIDEO],
    "plots": ["matplotlib>=3.6"],
    "beam": ["apache-beam>=2.50", *VIDEO],  # the workers decode videos and write the shards
    "jax": ["jax[cpu]>=0.4.30"],
    "hub": ["huggingface_hub>=2.4"],  # hf:// model handles and p3d-publish (p3d_keras.jobs.hub)
    # p3d-export --format onnx|openvino|litert and their runners (p3d_keras.jobs.portable); none brings TensorFlow
    "onnx": ["onnxruntime>=1.31", "onnx>=1.23", "tf2onnx>=1.17"],  # tf2onnx to export
    "openvino": ["openvino>=2026.4"],
    # TensorFlow's converter writes the 2D-ops form's .tflite files, ai-edge-litert runs them
    "litert": ["ai-edge-litert>=2.3", "flatbuffers>=25"],
    "transfer": ["scikit-learn>=1.9", "matplotlib>=3.6"],  # p3d-transfer: the linear SVM, t-SNE and pictures
}
# Where ai-edge-litert 2.3 has wheels; elsewhere the tests run LiteRT models with TensorFlow's interpreter.
LITERT_WHEELS = ('(sys_platform == "linux" and platform_machine == "x86_64") or sys_platform == "win32" or '
                 '(sys_platform == "darwin" and platform_machine == "arm64")')
EXTRAS["test"] = sorted(set(
    ["pytest>=7", f"tensorflow-cpu==2.21.0; {TF_CPU_WHEELS}", f"tensorflow==2.21.0; {NO_TF_CPU_WHEELS}",
     "tensorboard", "torch==2.13.0", "scikit-video"]
    + EXTRAS["video"] + EXTRAS["flow"] + EXTRAS["beam"] + EXTRAS["jax"] + EXTRAS["plots"] + EXTRAS["hub"]
    + EXTRAS["onnx"] + EXTRAS["openvino"] + EXTRAS["transfer"]
    + [f"{requirement}; {LITERT_WHEELS}" for requirement in EXTRAS["litert"]]
))

setup(
    name="p3d_keras",
    version=read_version(),
    description="Pseudo-3D Residual Networks (P3D ResNet) for Keras 3, with a video TFRecord toolkit",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["p3d_keras", "p3d_keras.core", "p3d_keras.weights", "p3d_keras.jobs", "p3d_keras.cli",
              "p3d_keras.applications", "p3d_keras.tfrecords_tools"],
    package_dir={
        "p3d_keras": "p3d_keras",
        "p3d_keras.applications": "applications",
        "p3d_keras.tfrecords_tools": "tfrecords_tools",
    },
    # clip_decoder.cc: the native clip decoder's source, compiled on first use (tfrecords_tools/clip_decoder.py)
    package_data={"p3d_keras.applications": ["labels/*.txt"], "p3d_keras.tfrecords_tools": ["*.cc"]},
    install_requires=["keras>=3.12", "numpy>=1.26", "h5py"],
    # TensorFlow is an extra: `tf-cpu` (any platform), `tf` (the default build; GPU on Linux with
    # CUDA installed), `tf-gpu` (Linux, brings CUDA); the demo and tests use `tf-cpu`.
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "p3d-convert-weights=p3d_keras.cli.convert_weights:main",
            "p3d-tfrecords=p3d_keras.cli.tfrecords:main",
            "p3d-train=p3d_keras.cli.train:main",
            "p3d-evaluate=p3d_keras.cli.evaluate:main",
            "p3d-fuse=p3d_keras.cli.fuse:main",
            "p3d-extract-features=p3d_keras.cli.extract_features:main",
            "p3d-export=p3d_keras.cli.export:main",
            "p3d-predict=p3d_keras.cli.predict:main",
            "p3d-demo=p3d_keras.cli.demo:main",
            "p3d-publish=p3d_keras.cli.publish:main",
            "p3d-transfer=p3d_keras.cli.transfer:main",
        ],
    },
)
