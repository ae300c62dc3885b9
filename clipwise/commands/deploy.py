"""``clipwise deploy``: put a trained version into a model repository and have the running server load it.

``--from`` is a version directory as ``clipwise train`` (``clipwise.models.checkpoint.save_version``) writes it,
``REPO/NAME/VERSION``, or its model directory ``REPO/NAME`` (its newest version). The version is first
checked exactly as the server checks a load (manifest schema, sha256 of the weights, the architecture
rebuilt with every weight matched, each backend warmed up); it is then copied into a staging directory of
the target model, its weights hashed again, and renamed into place as the next version, so the server (and
``clipwise serve --watch``) never sees half a version. With ``--url`` the server is then asked to load it
(``POST /v1/models/NAME/load``) with the admin token of ``--token`` or ``CLIPWISE_ADMIN_TOKEN``.

Exit status: 0 deployed (and loaded), 1 refused before anything was copied, 2 copied but the server did not
load it (the version stays in the repository; the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from clipwise.service.config import BUNDLED_REPOSITORY

TOKEN_VARIABLE = "CLIPWISE_ADMIN_TOKEN"
REQUEST_TIMEOUT_S = 300  # loading checks and warms the version up


class DeployError(Exception):
    """Why a deployment stopped."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy",
        help="copy a trained version into the repository and have the server load it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        required=True,
        metavar="DIR",
        help="trained version directory REPO/NAME/VERSION (or REPO/NAME: its newest version)",
    )
    parser.add_argument("--name", required=True, help="model name in the target repository")
    parser.add_argument(
        "--repository",
        type=Path,
        metavar="DIR",
        default=Path(os.environ.get("CLIPWISE_MODEL_REPOSITORY", BUNDLED_REPOSITORY)),
        help="target model repository [CLIPWISE_MODEL_REPOSITORY; default: the bundled one]",
    )
    parser.add_argument("--url", help="the running server (e.g. http://127.0.0.1:8000): ask it to load the version")
    parser.add_argument(
        "--token",
        help=f"admin token for --url (default: {TOKEN_VARIABLE}; prefer the variable, "
        "a flag shows in the process list)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        version_dir = checked_source(args.source)
        target = copy_version(version_dir, args.repository, args.name)
    except DeployError as error:
        print(f"clipwise deploy: {error}", file=sys.stderr)
        return 1
    print(f"deployed {version_dir} as {args.name} version {target.name} in {args.repository}")
    if args.url is None:
        return 0
    try:
        answer = request_load(args.url, args.name, int(target.name), args.token or os.environ.get(TOKEN_VARIABLE))
    except DeployError as error:
        print(f"clipwise deploy: version {target.name} is in the repository, but {error}", file=sys.stderr)
        return 2
    previous = answer["previous_version"]
    was = f" (was version {previous})" if previous else ""
    print(f"{args.url} now serves {args.name} version {answer['version']}{was}")
    return 0


def checked_source(source: Path) -> Path:
    """The version directory ``source`` names, after the server's own checks of a version."""
    from clipwise.models.checkpoint import CheckpointError, version_path
    from clipwise.service.model_store import InvalidVersion, open_version

    try:
        version_dir = version_path(source)
        open_version(version_dir.parent.parent, version_dir.parent.name, int(version_dir.name))
    except (CheckpointError, InvalidVersion, ValueError) as error:
        raise DeployError(f"refused: {error}") from None
    return version_dir


def copy_version(version_dir: Path, repository: Path, name: str) -> Path:
    """Copy ``version_dir`` into ``repository/name`` as its next version; the directory appears whole."""
    from clipwise.models.checkpoint import WEIGHTS_FILE, list_versions, read_manifest, sha256_file, validate_name

    try:
        model_dir = repository / validate_name(name)
    except ValueError as error:
        raise DeployError(str(error)) from None
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        shutil.copytree(version_dir, staging, dirs_exist_ok=True)
        if sha256_file(staging / WEIGHTS_FILE) != read_manifest(staging).weights_sha256:
            raise DeployError(f"the copy of {version_dir / WEIGHTS_FILE} does not match its sha256")
        while True:  # another writer may take a number first: try the next one
            target = model_dir / str(max(list_versions(model_dir), default=0) + 1)
            try:
                os.rename(staging, target)
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def request_load(url: str, name: str, version: int, token: str | None) -> dict:
    """Ask the server at ``url`` to load ``name`` at ``version``; its JSON answer."""
    if not token:
        raise DeployError(f"no admin token to ask {url} to load it: pass --token or set {TOKEN_VARIABLE}")
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/models/{name}/load?version={version}",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise DeployError(f"the server refused to load it ({error.code}): {_error_message(error)}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        raise DeployError(f"the server at {url} could not be reached: {error}") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    body = error.read()
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:500]
