"""A small Hugging Face Hub in a thread: the HTTP endpoints huggingface_hub 1.x calls to create a model
repository and a branch, read a revision and commit files through basic Git LFS, with state in memory.

It speaks Git LFS, not Xet storage: run the client with ``HF_HUB_DISABLE_XET=1`` (huggingface_hub reads it
when imported). Requests need ``Authorization: Bearer TOKEN``; the token may write to ``namespaces`` only.
Every request is recorded, with its answer's status.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores larger files in LFS whatever their name
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
MAIN = "main"
REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass(frozen=True)
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What the preupload endpoint reports: sha256 for an LFS file, the git blob sha1 otherwise."""
        if self.lfs:
            return hashlib.sha256(self.content).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    tree: dict[str, StoredFile]  # every file of the revision after this commit
    paths: tuple[str, ...]  # the paths this commit wrote


@dataclass
class Repo:
    private: bool
    commits: list[Commit]
    branches: dict[str, str]  # name -> oid of its head commit

    def commit(self, revision: str) -> Commit | None:
        """The commit a branch name or a commit oid names."""
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class HubError(Exception):
    """An error answer: the Hub sets X-Error-Code / X-Error-Message, which huggingface_hub turns into exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, **fields):
        super().__init__(message)
        self.reply = Reply(status, {"error": message, **fields},
                           {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})})


class FakeHub:
    """The Hub's state (repositories, LFS objects), its HTTP server, and what tests ask of it."""

    def __init__(self, token: str = "hf_fake_write_token", namespaces: tuple[str, ...] = ("lucie-tests",)):
        self.token, self.namespaces = token, namespaces
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self._announced: dict[str, int] = {}  # LFS oid -> size, from batch calls, until PUT
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        """A repository whose main branch holds ``files`` besides the .gitattributes the Hub writes."""
        tree = {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}
        tree |= {path: StoredFile(content, lfs=False) for path, content in files.items()}
        initial = _new_commit("initial commit", tree, tuple(tree), salt=repo_id)
        self.repos[repo_id] = Repo(private, [initial], {MAIN: initial.oid})

    def head(self, repo_id: str, branch: str) -> Commit:
        repo = self.repos[repo_id]
        return repo.commit(repo.branches[branch])

    def files(self, repo_id: str, branch: str) -> dict[str, bytes]:
        return {path: stored.content for path, stored in self.head(repo_id, branch).tree.items()}

    # ---------------------------------------------------------------- HTTP

    def answer(self, method: str, path: str, headers, body: bytes) -> Reply:
        """Route one request, check its token, apply it; record it with its status."""
        with self._lock:
            try:
                reply = self._route(method, path, headers, body)
            except HubError as error:
                reply = error.reply
            self.requests.append(Request(method, unquote(path), reply.status))
            return reply

    def _route(self, method: str, path: str, headers, body: bytes) -> Reply:
        for route_method, pattern, needs_token, endpoint in self._routes():
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                if needs_token:
                    self._check_token(headers.get("Authorization"))
                arguments = {name: unquote(value) for name, value in match.groupdict().items() if value}
                return endpoint(body=body, **arguments)
        raise HubError(404, f"the fake Hub has no endpoint {method} {path}")

    def _routes(self) -> list[tuple[str, str, bool, Callable[..., Reply]]]:
        return [
            ("POST", r"/api/repos/create", True, self._create_repo),
            ("POST", r"/api/validate-yaml", True, self._validate_yaml),
            ("GET", rf"/api/models/{REPO}(?:/revision/(?P<revision>[^/]+))?", True, self._revision_info),
            ("POST", rf"/api/models/{REPO}/branch/(?P<branch>[^/]+)", True, self._create_branch),
            ("POST", rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", True, self._preupload),
            ("POST", rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", True, self._commit),
            ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", True, self._lfs_batch),
            ("POST", rf"/{REPO}\.git/info/lfs/objects/verify", True, self._lfs_verify),
            ("PUT", r"/lfs-storage/(?P<oid>[0-9a-f]{64})", False, self._lfs_store),  # a presigned URL: no token
        ]

    def _check_token(self, authorization: str | None) -> None:
        if authorization is None:
            raise HubError(401, "Invalid username or password.")
        if authorization != f"Bearer {self.token}":
            raise HubError(401, "Invalid credentials in Authorization header")

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and repo_id.split("/")[0] not in self.namespaces:
            raise HubError(403, f"You don't have write access to {repo_id}")
        return self.repos[repo_id]

    def _commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.commit(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ---------------------------------------------------------------- endpoints

    def _create_repo(self, body: bytes) -> Reply:
        request = json.loads(body)
        namespace = request.get("organization") or self.namespaces[0]
        repo_id = f"{namespace}/{request['name']}"
        if request.get("type", "model") != "model":
            raise HubError(400, "the fake Hub holds model repositories only")
        if namespace not in self.namespaces:
            raise HubError(403, f'You don\'t have the rights to create a model under the namespace "{namespace}"')
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        initial = _new_commit("initial commit", {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)},
                              (".gitattributes",), salt=repo_id)
        self.repos[repo_id] = Repo(request.get("visibility") == "private", [initial], {MAIN: initial.oid})
        return Reply(200, {"url": f"{self.url}/{repo_id}", "name": repo_id})

    def _validate_yaml(self, body: bytes) -> Reply:
        """The model card check that precedes a commit of README.md: every card passes here."""
        return Reply(200, {"errors": [], "warnings": []})

    def _revision_info(self, repo: str, body: bytes, revision: str = MAIN) -> Reply:
        stored = self._repo(repo)
        commit = self._commit_of(stored, revision)
        siblings = [{"rfilename": path} for path in sorted(commit.tree)]
        return Reply(200, {"id": repo, "sha": commit.oid, "private": stored.private, "siblings": siblings})

    def _create_branch(self, repo: str, branch: str, body: bytes) -> Reply:
        stored = self._repo(repo, write=True)
        if branch in stored.branches:
            raise HubError(409, "Reference already exists")
        start = json.loads(body).get("startingPoint", MAIN)
        stored.branches[branch] = self._commit_of(stored, start).oid
        return Reply(200)

    def _preupload(self, repo: str, revision: str, body: bytes) -> Reply:
        tree = self._commit_of(self._repo(repo, write=True), revision).tree
        files = []
        for file in json.loads(body)["files"]:
            lfs = file["size"] >= LFS_MIN_SIZE or any(fnmatch.fnmatch(file["path"], p) for p in LFS_PATTERNS)
            remote = tree.get(file["path"])
            files.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": remote.oid if remote else None})
        return Reply(200, {"files": files})

    def _lfs_batch(self, repo: str, body: bytes) -> Reply:
        self._repo(repo, write=True)
        request = json.loads(body)
        if request["operation"] != "upload" or "basic" not in request["transfers"]:
            raise HubError(400, "the fake Hub takes basic LFS uploads only")
        objects = []
        for item in request["objects"]:
            answer = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs_objects:
                self._announced[item["oid"]] = item["size"]
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{item['oid']}"},
                    "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(answer)
        return Reply(200, {"transfer": "basic", "objects": objects})

    def _lfs_store(self, oid: str, body: bytes) -> Reply:
        if self._announced.get(oid) != len(body) or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"upload does not match the announced object {oid}")
        self.lfs_objects[oid] = body
        del self._announced[oid]
        return Reply(200)

    def _lfs_verify(self, repo: str, body: bytes) -> Reply:
        request = json.loads(body)
        stored = self.lfs_objects.get(request["oid"])
        if stored is None or len(stored) != request["size"]:
            raise HubError(404, f"LFS object {request['oid']} was not uploaded")
        return Reply(200)

    def _commit(self, repo: str, revision: str, body: bytes) -> Reply:
        stored = self._repo(repo, write=True)
        if revision not in stored.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header, operations = lines[0], lines[1:]
        if header["key"] != "header":
            raise HubError(400, "the commit payload starts with its header")
        tree = dict(self._commit_of(stored, revision).tree)
        for operation in operations:
            _apply(operation["key"], operation["value"], tree, self.lfs_objects)
        paths = tuple(operation["value"]["path"] for operation in operations)
        commit = _new_commit(header["value"]["summary"], tree, paths, salt=f"{repo}{len(stored.commits)}")
        stored.commits.append(commit)
        stored.branches[revision] = commit.oid
        return Reply(200, {"commitUrl": f"{self.url}/{repo}/commit/{commit.oid}", "commitOid": commit.oid,
                           "success": True})


def _apply(key: str, value: dict, tree: dict[str, StoredFile], lfs_objects: dict[str, bytes]) -> None:
    """One line of a commit's NDJSON payload, applied to ``tree``."""
    if key == "file" and value.get("encoding") == "base64":
        tree[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
    elif key == "deletedFile":
        tree.pop(value["path"], None)
    elif key == "lfsFile":
        if value["oid"] not in lfs_objects:
            raise HubError(400, f"LFS object {value['oid']} of {value['path']} was not uploaded")
        tree[value["path"]] = StoredFile(lfs_objects[value["oid"]], lfs=True)
    else:
        raise HubError(400, f"the fake Hub does not take commit operation {key!r}")


def _new_commit(title: str, tree: dict[str, StoredFile], paths: tuple[str, ...], salt: str) -> Commit:
    digest = hashlib.sha1(json.dumps([salt, title, sorted((p, f.oid) for p, f in tree.items())]).encode())
    return Commit(digest.hexdigest(), title, tree, paths)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            reply = hub.answer(self.command, urlsplit(self.path).path, self.headers, body)
            payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, format, *args) -> None:  # noqa: A002  (quiet test output)
            pass

    return Handler
