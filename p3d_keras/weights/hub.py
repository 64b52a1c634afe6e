"""P3D model folders on the Hugging Face Hub, the download half: `hf://owner/name[@revision]`
handles, the folder's files fetched into huggingface_hub's cache (pinned by revision, usable
offline afterwards with `HF_HUB_OFFLINE=1`), and the network file checked against the sha256 its
metadata records (`model_file`). `P3DResNet(weights="hf://...")` loads through it
(`cache.load_weights`); `p3d_keras.jobs.model_folder.load_model` reads the whole folder, and
`p3d_keras.jobs.hub` uploads one.

Needs the optional extra `[hub]` (`pip install 'p3d_keras[hub]'`, huggingface_hub), imported
inside the functions that use it. huggingface_hub downloads each file under a temporary name and
renames it into its cache, so an interrupted download leaves nothing that a later load would take
for the file.
"""
import json
import os

from p3d_keras.core.files import sha256_of

# The files of a P3D model folder (its format: `p3d_keras.jobs.model_folder`).
MODEL_FILE = "model.keras"
METADATA_FILE = "p3d_model.json"
HANDLE_PREFIX = "hf://"
HUB_EXTRA = "p3d_keras[hub]"


class HubError(ValueError):
    """A hub handle that cannot be resolved: the message names the handle, what was expected and
    what was found."""


def parse_handle(handle):
    """`"hf://owner/name@rev"` -> `("owner/name", "rev")`; the revision is None when absent.
    Raises HubError for anything else."""
    expected = f"Expected a hub handle {HANDLE_PREFIX}owner/name or {HANDLE_PREFIX}owner/name@revision."
    if not isinstance(handle, str) or not handle.startswith(HANDLE_PREFIX):
        raise HubError(f"{expected} Received: {handle!r}")
    repo_id, at, revision = handle[len(HANDLE_PREFIX):].partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision) or any(c.isspace() for c in handle):
        raise HubError(f"{expected} Received: {handle!r}")
    return repo_id, revision or None


def import_hub(what):
    """The huggingface_hub module, or HubError saying which extra to install for `what`."""
    try:
        import huggingface_hub  # optional extra [hub]
    except ImportError:
        raise HubError(f"{what}: Expected huggingface_hub (install the extra: pip install '{HUB_EXTRA}'). "
                       "Received: huggingface_hub is not installed") from None
    return huggingface_hub


def fetch_model_folder(handle):
    """The local folder holding the model folder that `handle` names (`MODEL_FILE` and
    `METADATA_FILE` only), downloaded by `huggingface_hub.snapshot_download` into its cache
    (`HF_HUB_CACHE`), pinned by the handle's revision (default: the repository's main branch).
    With `HF_HUB_OFFLINE=1` the cached copy is used without the network.

    Raises HubError naming the handle when huggingface_hub is missing, the repository or revision
    is unknown, the files are neither reachable nor cached, or the revision holds no model folder; the sha256 check is
    `model_file`'s (and `p3d_keras.jobs.model_folder.read_model_folder`'s).
    """
    repo_id, revision = parse_handle(handle)
    huggingface_hub = import_hub(handle)
    from huggingface_hub import errors  # optional extra [hub]

    def fail(expected, received):
        raise HubError(f"{handle}: Expected {expected}. Received: {received}") from None

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[MODEL_FILE, METADATA_FILE])
    except errors.RevisionNotFoundError as e:
        fail(f"a revision of {repo_id} (a branch, tag or commit)",
             f"revision={revision!r}, which the hub does not know ({type(e).__name__}: {e})")
    except errors.RepositoryNotFoundError as e:
        fail(f"an existing model repository {repo_id!r} (a private one needs HF_TOKEN)", f"{type(e).__name__}: {e}")
    except errors.LocalEntryNotFoundError as e:
        fail("a reachable hub or a copy in the cache (HF_HUB_CACHE); offline (HF_HUB_OFFLINE=1), only cached "
             "revisions load", f"{type(e).__name__}: {e}")
    except errors.HfHubHTTPError as e:
        fail("an answer from the hub", f"{type(e).__name__}: {e}")
    found = sorted(name for name in (MODEL_FILE, METADATA_FILE)
                   if os.path.isfile(os.path.join(folder, name)))
    if len(found) < 2:
        fail(f"a P3D model folder ({MODEL_FILE} and {METADATA_FILE}) at the top of "
             f"{repo_id}", f"a revision holding {found or 'neither'}")
    return folder


def model_file(folder):
    """The path of the network file of the model folder `folder`, after checking it against the
    `weights_sha256` its metadata records. Raises HubError naming the file otherwise."""
    metadata, weights = os.path.join(folder, METADATA_FILE), os.path.join(folder, MODEL_FILE)
    try:
        with open(metadata, encoding="utf-8") as f:
            expected = json.load(f)["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HubError(f"{metadata}: Expected P3D model metadata with weights_sha256. Received: {e}") from None
    found = sha256_of(weights) if os.path.isfile(weights) else "no file"
    if found != expected:
        raise HubError(f"{weights}: Expected sha256 {expected} (from {METADATA_FILE}). Received: {found} "
                       "(changed or damaged)")
    return weights
