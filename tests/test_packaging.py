"""setup.py's requirements, read by running setup.py with `setuptools.setup` replaced: the version
floors, and which TensorFlow distribution each extra installs on each platform."""
import importlib
import importlib.metadata
import inspect
import pathlib
import runpy

import pytest
import setuptools
from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]
PLATFORMS = {
    "linux-x86_64": dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64"),
    "linux-aarch64": dict(sys_platform="linux", platform_system="Linux", platform_machine="aarch64"),
    "macos-arm64": dict(sys_platform="darwin", platform_system="Darwin", platform_machine="arm64"),
    "macos-x86_64": dict(sys_platform="darwin", platform_system="Darwin", platform_machine="x86_64"),
    "windows-x86_64": dict(sys_platform="win32", platform_system="Windows", platform_machine="AMD64"),
}
CPU_WHEELS = {"linux-x86_64", "windows-x86_64"}  # where tensorflow-cpu publishes wheels
TENSORFLOW = {"tensorflow", "tensorflow-cpu"}


@pytest.fixture(scope="module")
def setup_kwargs():
    """The keyword arguments setup.py passes to `setup()`, without building anything."""
    captured = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        runpy.run_path(str(REPO / "setup.py"))
    return captured


def resolve(requirements, platform):
    """`{name: Requirement}` of the requirements whose markers hold on `platform`."""
    env = {**default_environment(), **PLATFORMS[platform], "extra": ""}
    chosen = [Requirement(text) for text in requirements]
    chosen = [r for r in chosen if r.marker is None or r.marker.evaluate(env)]
    assert len({r.name for r in chosen}) == len(chosen), f"a package twice on {platform}: {chosen}"
    return {r.name: r for r in chosen}


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_tf_extras_pick_the_distribution_that_has_wheels(setup_kwargs, platform):
    extras = setup_kwargs["extras_require"]
    cpu = resolve(extras["tf-cpu"], platform)
    assert TENSORFLOW & set(cpu) == {"tensorflow-cpu" if platform in CPU_WHEELS else "tensorflow"}
    assert TENSORFLOW & set(resolve(extras["tf"], platform)) == {"tensorflow"}
    gpu = resolve(extras["tf-gpu"], platform)
    assert gpu["tensorflow"].extras == {"and-cuda"}
    test = resolve(extras["test"], platform)
    (pinned,) = TENSORFLOW & set(test)
    assert pinned == ("tensorflow-cpu" if platform in CPU_WHEELS else "tensorflow")
    assert str(test[pinned].specifier) == "==2.21.0"


def test_floors_are_the_tested_versions(setup_kwargs):
    extras = setup_kwargs["extras_require"]
    keras = resolve(setup_kwargs["install_requires"], "linux-x86_64")["keras"]
    assert "3.12.0" in keras.specifier and "3.11.9" not in keras.specifier  # TensorFlow 2.21 needs keras >= 3.12
    for name in ("tf", "tf-cpu", "tf-gpu"):
        for platform in PLATFORMS:
            (tf,) = [r for n, r in resolve(extras[name], platform).items() if n in TENSORFLOW]
            assert "2.21.0" in tf.specifier and "2.20.0" not in tf.specifier, (name, platform)
    for name in ("video", "beam"):
        av = resolve(extras[name], "linux-x86_64")["av"]
        assert "17.0.0" in av.specifier and "16.0.1" not in av.specifier  # VideoFrame.reformat(threads=...)
    # The versions this suite runs with satisfy them.
    for requirement in (keras, resolve(extras["tf-cpu"], "linux-x86_64")["tensorflow-cpu"],
                        resolve(extras["video"], "linux-x86_64")["av"]):
        assert importlib.metadata.version(requirement.name) in requirement.specifier


def test_beam_extra_brings_what_its_workers_need(setup_kwargs):
    beam = resolve(setup_kwargs["extras_require"]["beam"], "linux-x86_64")
    assert {"apache-beam", "av", "pillow", "google-crc32c"} <= set(beam)
    assert beam["apache-beam"].extras == set()  # [tfrecord] only added crcmod; the writer uses google-crc32c


def test_every_console_script_is_a_thin_program(setup_kwargs):
    """Each entry point is `main(argv=None)` beside `build_parser()` in a module of p3d_keras.cli."""
    scripts = dict(entry.split("=") for entry in setup_kwargs["entry_points"]["console_scripts"])
    assert set(scripts) == {"p3d-convert-weights", "p3d-tfrecords", "p3d-train", "p3d-evaluate",
                            "p3d-extract-features", "p3d-export", "p3d-predict", "p3d-demo", "p3d-publish",
                            "p3d-fuse", "p3d-transfer"}
    for name, target in scripts.items():
        module_name, function = target.split(":")
        assert module_name.startswith("p3d_keras.cli.") and function == "main", name
        module = importlib.import_module(module_name)
        assert list(inspect.signature(module.main).parameters) == ["argv"] and callable(module.build_parser)
        assert module.build_parser().prog == name
