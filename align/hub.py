"""`align push DIR --repo-id ORG/NAME`: upload an adapter or merged folder to a Hugging Face hub in ONE commit.

The token comes from HF_TOKEN or the hub's login cache (huggingface_hub.get_token) and goes only into
request headers: it is never printed, logged or written, and every error message is scrubbed of it.
HF_ENDPOINT is read when the push starts (huggingface_hub reads it once, at import).

Why create_commit and not upload_folder: with hf_xet installed, huggingface_hub 2.4's upload_folder
switches to a pipelined upload that may split a folder over several commits. One commit means a repo
never shows half an adapter. Resuming: files already on the hub with the same content are skipped, and
LFS/Xet objects uploaded by a failed attempt are not sent again (the server reports them present).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from align.errors import AlignError

log = logging.getLogger("align")

IGNORED_PREFIXES = (".",)  # hidden files and temp dirs (.final.tmp-*) are never uploaded
HUB_FILES = {".gitattributes"}  # created by the hub with every repo: not "other content"


class HubError(AlignError):
    """Pushing to the hub failed in a way the user can fix (token, permission, repo, network)."""


@dataclass
class PushResult:
    """What a push did: the repo URL, the commit (None if nothing changed), uploaded and skipped files."""

    url: str
    commit: str | None
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def local_files(folder: Path) -> dict[str, Path]:
    """path in repo -> local file, for every non-hidden file under `folder`."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(IGNORED_PREFIXES) for part in rel.parts):
            files[rel.as_posix()] = path
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git object id of the file


def same_content(path: Path, remote) -> bool:
    """Whether a hub file (RepoSibling with blob metadata) holds exactly the local file's bytes."""
    if remote.size is not None and remote.size != path.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == _sha256(path)
    return remote.blob_id == _git_blob_sha1(path)


def resolve_token(token: str | None = None) -> str:
    """The token to use: explicit, HF_TOKEN, or the login cache; a HubError when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    return token


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _http_error(err, repo_id: str, token: str, action: str) -> HubError:
    status = err.response.status_code
    if status == 401:
        return HubError(f"the hub rejected the token while trying to {action} {repo_id} (401): check HF_TOKEN")
    if status == 403:
        return HubError(f"no permission to {action} {repo_id} with this token (403): use a write token for it")
    return HubError(_scrub(f"could not {action} {repo_id}: {err}".splitlines()[0], token))


def _network_error(err, endpoint: str, pending: list[str], token: str) -> HubError:
    listed = ", ".join(pending[:12]) + (f", ... ({len(pending)} files)" if len(pending) > 12 else "")
    return HubError(
        _scrub(f"cannot reach {endpoint} ({type(err).__name__}); not uploaded: {listed or 'nothing'}. ", token)
        + "Rerun the same command to upload what is missing (files and objects already on the hub are not sent again)"
    )


def _check_no_other_content(remote: dict, files: dict[str, Path], repo_id: str, revision: str) -> None:
    other = sorted(set(remote) - set(files) - HUB_FILES)
    if other:
        shown = ", ".join(other[:8]) + (f", ... ({len(other)})" if len(other) > 8 else "")
        raise HubError(
            f"{repo_id}@{revision} already holds files that are not in this folder ({shown}); push to a new "
            "--repo-id or another --revision, or delete them on the hub first"
        )


def _remote_files(api, repo_id: str, revision: str) -> dict:
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    return {s.rfilename: s for s in info.siblings or []}


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str = "main",
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Create `repo_id` if missing and upload what of `folder` is not already there, in one commit."""
    import httpx2  # huggingface_hub 2.4's HTTP client: its TransportError is "the network is down"
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub import constants as hub_constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"--repo-id {repo_id!r} is not a hub repo id: {str(err).splitlines()[0]}") from None
    folder = Path(folder)
    files = local_files(folder) if folder.is_dir() else {}
    if not files:
        raise HubError(f"nothing to push: {folder} is not a directory with files")
    token = resolve_token(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token, library_name="align")
    pending, action = list(files), "create"
    try:
        url = str(api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model"))
        action = "write to"
        if revision != hub_constants.DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        action = "read"
        remote = _remote_files(api, repo_id, revision)
        _check_no_other_content(remote, files, repo_id, revision)
        unchanged = [p for p in files if p in remote and same_content(files[p], remote[p])]
        pending = [p for p in files if p not in unchanged]
        if not pending:
            log.info("push: %s@%s already holds every file of %s", repo_id, revision, folder)
            return PushResult(url, None, [], unchanged)
        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(files[p])) for p in pending]
        message = commit_message or f"align: upload {folder.name}"
        action = "write to"
        info = api.create_commit(repo_id, operations, commit_message=message, revision=revision)
    except (httpx2.TransportError, ConnectionError) as err:
        raise _network_error(err, endpoint, pending, token) from None
    except HfHubHTTPError as err:
        raise _http_error(err, repo_id, token, action) from None
    except ValueError as err:  # huggingface_hub raises ValueError when the hub rejects README.md metadata
        if "metadata" not in str(err):
            raise
        raise HubError(_scrub(" ".join(str(err).split()), token) + f" ({folder / 'README.md'})") from None
    log.info("push: %d files to %s@%s (%d already there)", len(pending), repo_id, revision, len(unchanged))
    return PushResult(url, info.oid, pending, unchanged)
