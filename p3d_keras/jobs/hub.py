"""Uploading a P3D model folder to the Hugging Face Hub (`p3d-publish`); the download half,
`hf://` handles, is `p3d_keras.weights.hub`.

Needs the optional extra `[hub]` (`pip install 'p3d_keras[hub]'`, huggingface_hub), imported
inside the functions that use it.
"""
import os

from p3d_keras.jobs import model_folder
from p3d_keras.weights.hub import HANDLE_PREFIX, import_hub


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
