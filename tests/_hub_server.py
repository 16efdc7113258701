"""A real HTTP server on loopback speaking the part of the Hugging Face hub API that `align push` uses.

Endpoints (as huggingface_hub 2.4 calls them, read from its hf_api.py / _commit_api.py / lfs.py):
  POST /api/repos/create                                 create_repo (409 when it exists)
  GET  /api/models/{repo}[/revision/{rev}]?blobs=true    model_info with file metadata
  POST /api/models/{repo}/branch/{branch}                create_branch (409 when it exists)
  POST /api/validate-yaml                                README.md metadata check before a commit
  POST /api/models/{repo}/preupload/{rev}                regular vs LFS upload mode, remote oids
  POST /{repo}.git/info/lfs/objects/batch                LFS batch: upload actions for missing objects
  PUT  /_lfs/{oid}   POST /_lfs/{oid}/verify             basic LFS transfer + verify
  POST /api/models/{repo}/commit/{rev}                   the ndjson commit (header, file, lfsFile, deletedFile)
Xet storage is not spoken: clients must run with HF_HUB_DISABLE_XET. Tokens map to the namespaces they
may write; `fail_next` drops the connection of the next request to an endpoint (a network failure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".model", ".pt")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]]
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)


@dataclass
class HubState:
    tokens: dict[str, set[str]]  # token -> namespaces it may write
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    lfs_puts: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_next: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(self, repo_id: str, files: dict[str, bytes] | None = None, private: bool = False) -> Repo:
        repo = Repo(private, {"main": {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}})
        repo.branches["main"].update(files or {})
        self.repos[repo_id] = repo
        return repo


class HubHandler(BaseHTTPRequestHandler):
    server: HubServer

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass  # requests are recorded in state.requests instead of printed

    # -- plumbing --------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _authorized(self, repo_id: str | None = None, write: bool = False) -> bool:
        token = self._token()
        if token not in self.state.tokens:
            message = "Invalid credentials in Authorization header"
            self._send(401, {"error": message}, {"X-Error-Message": message})
            return False
        if write and repo_id is not None and repo_id.split("/")[0] not in self.state.tokens[token]:
            self._send(403, {"error": f"You don't have the rights to write to {repo_id}"})
            return False
        return True

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return repo

    def _branch(self, repo: Repo, rev: str) -> dict[str, bytes] | None:
        files = repo.branches.get(rev)
        if files is None:
            self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        return files

    # -- dispatch --------------------------------------------------------------------------------------
    ROUTES = [
        ("POST", r"/api/repos/create", "create_repo"),
        ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?", "model_info"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)", "create_branch"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/_lfs/(?P<oid>[0-9a-f]{64})/verify", "lfs_verify"),
        ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ]

    def _dispatch(self, method: str) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._body() if method in ("POST", "PUT") else b""
        with self.state.lock:
            self.state.requests.append((method, path))
        for verb, pattern, name in self.ROUTES:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                if name in self.state.fail_next:
                    self.state.fail_next.discard(name)
                    self.close_connection = True  # no response at all: the client sees the connection drop
                    return
                with self.state.lock:
                    getattr(self, f"do_{name}")(body, **{k: v for k, v in match.groupdict().items() if v})
                return
        self._send(404, {"error": f"no route {method} {path}"})

    def do_GET(self):  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self):  # noqa: N802
        self._dispatch("PUT")

    # -- endpoints -------------------------------------------------------------------------------------
    def do_create_repo(self, body: bytes) -> None:
        payload = json.loads(body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        if not self._authorized(repo_id, write=True):
            return
        if repo_id in self.state.repos:
            self._send(409, {"error": "You already created this model repo", "url": f"{self.server.url}/{repo_id}"})
            return
        self.state.add_repo(repo_id, private=payload.get("visibility") == "private")
        self._send(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})

    def do_model_info(self, body: bytes, repo: str, rev: str = "main") -> None:
        if not self._authorized():
            return
        if (r := self._repo(repo)) is None or (files := self._branch(r, rev)) is None:
            return
        siblings = []
        for path, data in sorted(files.items()):
            entry = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
            if path in r.lfs_paths:
                sha = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
            siblings.append(entry)
        head = r.commits[-1]["oid"] if r.commits else "0" * 40
        self._send(200, {"id": repo, "sha": head, "private": r.private, "siblings": siblings})

    def do_create_branch(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorized(repo, write=True) or (r := self._repo(repo)) is None:
            return
        if rev in r.branches:
            self._send(409, {"error": "Reference already exists"})
            return
        r.branches[rev] = dict(r.branches["main"])
        self._send(200, {})

    def do_validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
        try:
            meta = yaml.safe_load(match[1]) if match else {}
        except yaml.YAMLError as err:
            self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            return
        bad = [k for k in ("base_model",) if k in meta and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(meta[k]))]
        if bad:
            self._send(400, {"errors": [{"message": f'"{bad[0]}" must be a model id'}]})
            return
        self._send(200, {"errors": [], "warnings": []})

    def do_preupload(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorized(repo, write=True) or (r := self._repo(repo)) is None:
            return
        if (files := self._branch(r, rev)) is None:
            return
        out = []
        for item in json.loads(body)["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] > 10_000_000
            remote = files.get(item["path"])
            oid = None
            if remote is not None:
                oid = hashlib.sha256(remote).hexdigest() if lfs else git_blob_id(remote)
            mode = "lfs" if lfs else "regular"
            out.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": out})

    def do_lfs_batch(self, body: bytes, repo: str) -> None:
        if not self._authorized(repo, write=True):
            return
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:  # present objects get no actions: the client skips them
                href = f"{self.server.url}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def do_lfs_put(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._send(400, {"error": "sha256 mismatch"})
            return
        self.state.lfs[oid] = body
        self.state.lfs_puts.append(oid)
        self._send(200, {})

    def do_lfs_verify(self, body: bytes, oid: str) -> None:
        ok = oid in self.state.lfs and json.loads(body)["size"] == len(self.state.lfs[oid])
        self._send(200 if ok else 404, {})

    def do_commit(self, body: bytes, repo: str, rev: str) -> None:
        if not self._authorized(repo, write=True) or (r := self._repo(repo)) is None:
            return
        if (files := self._branch(r, rev)) is None:
            return
        new, lfs_paths, header = dict(files), set(r.lfs_paths), {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                new[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    self._send(422, {"error": f"LFS object {value['oid']} was not uploaded"})
                    return
                new[value["path"]] = data
                lfs_paths.add(value["path"])
            elif key == "deletedFile":
                new.pop(value["path"], None)
        oid = hashlib.sha1(json.dumps(sorted(new)).encode() + str(len(r.commits)).encode()).hexdigest()
        r.branches[rev], r.lfs_paths = new, lfs_paths
        r.commits.append({"oid": oid, "revision": rev, "summary": header.get("summary"), "paths": sorted(new)})
        self._send(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})


class HubServer(ThreadingHTTPServer):
    """The loopback hub: `with HubServer(tokens) as hub: ... hub.url ...`."""

    daemon_threads = True

    def __init__(self, tokens: dict[str, set[str]]):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState(tokens)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
