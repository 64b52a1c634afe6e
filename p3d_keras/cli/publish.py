"""`p3d-publish`: upload a P3D model folder to the Hugging Face Hub (`jobs.hub.push_model_folder`),
or with `--dry-run` only check it and list what would be sent (`jobs.hub.prepare_upload`)."""
import argparse
import sys

from p3d_keras.cli import common
from p3d_keras.jobs import hub, model_folder


def build_parser():
    p = argparse.ArgumentParser(prog="p3d-publish", description="Upload a P3D model folder (model.keras and "
                                "p3d_model.json) to a model repository of the Hugging Face Hub; prints the URL, the "
                                "hf:// handle and the sha256 to write into a preset row. Needs p3d_keras[hub].")
    p.add_argument("folder", help="the model folder (written by p3d-train or save_model_folder)")
    p.add_argument("repo_id", help="the model repository, owner/name (created if needed; token: HF_TOKEN)")
    p.add_argument("--revision", help="the branch to commit to (default main)")
    p.add_argument("--dry-run", action="store_true", help="check the folder and print what would be sent")
    return p


def main(argv=None):
    """`p3d-publish runs/x/best owner/name [--revision BRANCH] [--dry-run]`."""
    args = build_parser().parse_args(argv)
    target = args.repo_id + (f"@{args.revision}" if args.revision else "")

    def job():
        if args.dry_run:
            result = hub.prepare_upload(args.folder), None
        else:
            result = None, hub.push_model_folder(args.folder, args.repo_id, revision=args.revision)
        return (*result, model_folder.read_metadata(args.folder).weights_sha256)

    def done(result):
        files, pushed, sha256 = result
        if files is not None:
            print(f"would upload to {target}:")  # noqa: T201 (a program's output)
            for path in files:
                print(f"  {path}")  # noqa: T201
        else:
            url, handle = pushed
            print(f"uploaded to {url}\nhandle {handle}")  # noqa: T201
        print(f"sha256 {sha256}")  # noqa: T201

    return common.run("p3d-publish", job, done=done)


if __name__ == "__main__":
    sys.exit(main())
