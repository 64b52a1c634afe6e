"""The code base's layers (p3d_keras/__init__.py): imports point down, peers never import each
other, programs alone see argparse, a function-level import of p3d_keras is left only in the
programs' package, and any other function-level import is an optional extra (or TensorFlow kept out
of the converter's processes) with a comment saying so."""
import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Installed package name -> folder in the repository.
FOLDERS = {"p3d_keras": REPO / "p3d_keras", "p3d_keras.applications": REPO / "applications",
           "p3d_keras.tfrecords_tools": REPO / "tfrecords_tools"}
# A module's layer: the longest matching prefix of its dotted name. Higher imports lower, never up;
# layers of the same rank never import each other.
RANKS = {"p3d_keras.core": 0, "p3d_keras.version": 0, "p3d_keras.weights": 1, "p3d_keras.tfrecords_tools": 1,
         "p3d_keras.applications": 2, "p3d_keras.jobs": 3, "p3d_keras.cli": 4, "p3d_keras": 5}


def modules():
    """`(dotted name, path)` of every module of the package, wherever its folder is."""
    found = []
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            if package == "p3d_keras" and parts and parts[0] in ("applications", "tfrecords_tools"):
                continue
            found.append((".".join([package, *parts]), path))
    return sorted(found)


# Optional extras a module may import inside a function (so that the package works without them),
# and TensorFlow where the converter's worker processes must not load it.
LATE_IMPORTS = {"av", "PIL", "apache_beam", "matplotlib", "jax", "google_crc32c", "torch", "fcntl", "msvcrt",
                "huggingface_hub", "onnx", "tf2onnx", "onnxruntime", "openvino", "ai_edge_litert", "flatbuffers",
                "sklearn", "cv2"}
LATE_TENSORFLOW = ("p3d_keras.tfrecords_tools.", "p3d_keras.cli.")
# The one late import of p3d_keras outside the programs: `p3d_keras.load_model`, resolved on first
# access by the package's `__getattr__`, so that `import p3d_keras` (the converter's worker
# processes) stays free of Keras and TensorFlow.
LAZY_PACKAGE_IMPORTS = {("p3d_keras", "p3d_keras.jobs.model_folder.load_model")}


def layer(name):
    return max((prefix for prefix in RANKS if name == prefix or name.startswith(prefix + ".")), key=len)


def imported(name, path):
    """`(imported module, line, at module level)` of each p3d_keras import in the module `name`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "p3d_keras" and not node.level:
            targets = [f"p3d_keras.{alias.name}" for alias in node.names if alias.name != "__version__"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("p3d_keras"):
                yield target, node.lineno, id(node) in top_level


def test_every_module_is_found():
    names = [name for name, _ in modules()]
    assert {"p3d_keras.core.layers", "p3d_keras.cli.train", "p3d_keras.tfrecords_tools.reader",
            "p3d_keras.applications.presets"} <= set(names)


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_imports_point_down(name, path):
    own = layer(name)
    wrong = []
    for target, line, _ in imported(name, path):
        other = layer(target)
        if other != own and (RANKS[other] >= RANKS[own]) and target != "p3d_keras.version":
            wrong.append(f"line {line}: {target} ({other}, rank {RANKS[other]} >= {own}, rank {RANKS[own]})")
    assert wrong == []


def test_peer_layers_never_import_each_other():
    """weights and tfrecords_tools share a rank; applications (above both) never needs the reader."""
    forbidden = {("p3d_keras.weights", "p3d_keras.tfrecords_tools"), ("p3d_keras.tfrecords_tools", "p3d_keras.weights"),
                 ("p3d_keras.applications", "p3d_keras.tfrecords_tools"),
                 ("p3d_keras.tfrecords_tools", "p3d_keras.applications")}
    found = [f"{name} line {line}: {target}" for name, path in modules() for target, line, _ in imported(name, path)
             if (layer(name), layer(target)) in forbidden]
    assert found == []


def late_imports(path):
    """`(line, top-level module, the comment on that line or the line above)` of each import
    inside a function or block of the module at `path`."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level and not getattr(node, "level", 0):
            modules_ = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
            comment = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
            for module in modules_:
                yield node.lineno, module.split(".")[0], comment


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_late_imports_are_optional_extras_and_say_so(name, path):
    if layer(name) == "p3d_keras.cli":
        return  # checked by test_only_programs_... (p3d_keras) and by review
    wrong = [f"line {line}: {module}{'' if comment else ' (no comment)'}" for line, module, comment in late_imports(path)
             if not comment or not (module in LATE_IMPORTS
                                    or (module == "tensorflow" and name.startswith(LATE_TENSORFLOW))
                                    or (module == "p3d_keras" and name == "p3d_keras"))]  # LAZY_PACKAGE_IMPORTS
    assert wrong == []


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_only_programs_see_argparse_or_import_p3d_keras_late(name, path):
    if layer(name) == "p3d_keras.cli":
        return
    text = path.read_text(encoding="utf-8")
    assert "argparse" not in text
    late = [target for target, _, top in imported(name, path) if not top]
    assert [target for target in late if (name, target) not in LAZY_PACKAGE_IMPORTS] == []
