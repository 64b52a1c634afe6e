"""Model folders on the Hugging Face Hub: `hf://owner/name[@revision]` handles, downloaded into
huggingface_hub's cache (pinned by revision, usable offline afterwards with `HF_HUB_OFFLINE=1`),
and the upload of a model folder (`p3d-publish`).

Needs the optional extra `[hub]` (`pip install 'p3d_keras[hub]'`, huggingface_hub), imported
inside the functions that use it. The files are checked after download by
`model_folder.read_model_folder` (the sha256 of the network against its own metadata).
huggingface_hub downloads each file under a temporary name and renames it into its cache, so an
interrupted download leaves nothing that a later load would take for the file.

`model_folder.load_model` resolves handles with `fetch_model_folder`, and this module reads the
folder format from `model_folder`: the two import each other, using each other only inside
functions.
"""
import os

from p3d_keras.jobs import model_folder

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
    `model_folder.read_model_folder`'s.
    """
    repo_id, revision = parse_handle(handle)
    huggingface_hub = import_hub(handle)
    from huggingface_hub import errors  # optional extra [hub]

    def fail(expected, received):
        raise HubError(f"{handle}: Expected {expected}. Received: {received}") from None

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, revision=revision, allow_patterns=[model_folder.MODEL_FILE, model_folder.METADATA_FILE])
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
    found = sorted(name for name in (model_folder.MODEL_FILE, model_folder.METADATA_FILE)
                   if os.path.isfile(os.path.join(folder, name)))
    if len(found) < 2:
        fail(f"a P3D model folder ({model_folder.MODEL_FILE} and {model_folder.METADATA_FILE}) at the top of "
             f"{repo_id}", f"a revision holding {found or 'neither'}")
    return folder


def prepare_upload(folder):
    """The local half of an upload: checks `folder` (`model_folder.read_model_folder`, which
    loads the network) and returns the paths of the files that would be sent, in name order."""
    model_folder.read_model_folder(folder)
    return [os.path.join(folder, name) for name in sorted((model_folder.METADATA_FILE, model_folder.MODEL_FILE))]


def push_model_folder(folder, repo_id, *, revision=None, token=None):
    """Upload the model folder `folder` (checked by `prepare_upload`) to the model repository
    `repo_id` (created if needed) on the branch `revision` (default main) with
    `HfApi().upload_folder`. Returns `(url, handle)`: the URL of the commit and the handle
    `hf://repo_id@<commit>` pinned to it, to paste into a preset row with the folder's sha256."""
    files = prepare_upload(folder)
    import_hub(repo_id)
    from huggingface_hub import HfApi  # optional extra [hub]

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                               allow_patterns=[os.path.basename(f) for f in files],
                               commit_message="Upload a P3D model folder (p3d-publish)")
    return commit.commit_url, f"{HANDLE_PREFIX}{repo_id}@{commit.oid}"
