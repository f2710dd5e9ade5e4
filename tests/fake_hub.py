"""A small Hugging Face Hub in a thread: the HTTP endpoints huggingface_hub 1.x calls to create a model
repository and a branch, read a revision, download its files and commit files through basic Git LFS, with state
in memory.

It speaks Git LFS, not Xet storage: run the client with ``HF_HUB_DISABLE_XET=1`` (huggingface_hub reads it
when imported). Requests need ``Authorization: Bearer TOKEN``; the token may write to ``namespaces`` only.
Every request is recorded, with its answer's status. Downloads honour ``Range: bytes=N-`` (206, as the Hub's
storage does), and ``interrupt`` breaks the next download of a file after some bytes, as a lost connection or
a killed client would see it.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    range: str | None = None  # the Range header of a download


@dataclass
class Interruption:
    """The next download of ``path`` stops after ``after`` bytes: the connection is closed there, at once or (``hold``)
    once the test sets ``release``; ``reached`` is set when those bytes are sent."""

    path: str
    after: int
    hold: bool
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict | list = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # a file's content, sent instead of the JSON body
    interruption: Interruption | None = None  # the file's download breaks off


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
        self.interruptions: list[Interruption] = []  # pending, each for one download
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
        self.seed(repo_id, MAIN, {".gitattributes": GITATTRIBUTES, **files})
        self.repos[repo_id].private = private

    def head(self, repo_id: str, branch: str) -> Commit:
        repo = self.repos[repo_id]
        return repo.commit(repo.branches[branch])

    def files(self, repo_id: str, branch: str) -> dict[str, bytes]:
        return {path: stored.content for path, stored in self.head(repo_id, branch).tree.items()}

    def seed(self, repo_id: str, branch: str, files: dict[str, bytes]) -> Commit:
        """Put ``files`` on ``branch`` of ``repo_id`` (a public repository, created if needed) in one commit."""
        repo = self.repos.setdefault(repo_id, Repo(private=False, commits=[], branches={}))
        tree = {path: StoredFile(content, lfs=len(content) >= LFS_MIN_SIZE) for path, content in files.items()}
        commit = _new_commit(f"seed {branch}", tree, tuple(files), salt=f"{repo_id}{len(repo.commits)}")
        repo.commits.append(commit)
        repo.branches[branch] = commit.oid
        return commit

    def interrupt(self, path: str, after: int, hold: bool = False) -> Interruption:
        """Break the next download of file ``path`` (of any repository) after ``after`` bytes."""
        interruption = Interruption(path, after, hold)
        self.interruptions.append(interruption)
        return interruption

    # ---------------------------------------------------------------- HTTP

    def answer(self, method: str, path: str, headers, body: bytes) -> Reply:
        """Route one request, check its token, apply it; record it with its status."""
        with self._lock:
            wanted = None
            try:
                reply = self._route(method, path, headers, body)
                wanted = headers.get("Range") if reply.raw is not None else None
                if wanted and reply.status == 200:
                    reply = _partial(reply, wanted)
            except HubError as error:
                reply = error.reply
            if method == "GET" and reply.raw is not None:
                file = unquote(path).split("/resolve/", 1)[-1].split("/", 1)[-1]
                pending = next((i for i in self.interruptions if i.path == file), None)
                if pending is not None:
                    self.interruptions.remove(pending)
                    reply = replace(reply, interruption=pending)
            self.requests.append(Request(method, unquote(path), reply.status, wanted))
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
            ("GET", rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", True, self._tree),
            ("HEAD", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", False, self._resolve),
            ("GET", rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", False, self._resolve),
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

    def _tree(self, repo: str, revision: str, body: bytes, path: str = "") -> Reply:
        """Every file of a revision under ``path`` (recursive, one page)."""
        commit = self._commit_of(self._repo(repo), revision)
        prefix = f"{path.rstrip('/')}/" if path else ""
        entries = [{"type": "file", "path": name, "size": len(stored.content), "oid": stored.oid}
                   for name, stored in sorted(commit.tree.items()) if name.startswith(prefix)]
        return Reply(200, entries)

    def _resolve(self, repo: str, revision: str, path: str, body: bytes) -> Reply:
        """A file of a revision (public download), with the headers hf_hub_download reads."""
        commit = self._commit_of(self._repo(repo), revision)
        if path not in commit.tree:
            raise HubError(404, f"{path} is not in {repo}@{revision}", "EntryNotFound")
        stored = commit.tree[path]
        return Reply(200, headers={"X-Repo-Commit": commit.oid, "ETag": f'"{stored.oid}"'}, raw=stored.content)

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


def _partial(reply: Reply, wanted: str) -> Reply:
    """The part of a file ``Range: bytes=START-[END]`` asks for (206), or 416 past its end."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
    if match is None:
        raise HubError(400, f"the fake Hub reads ranges bytes=START-[END] only, not {wanted!r}")
    size = len(reply.raw)
    start, end = int(match[1]), int(match[2]) if match[2] else size - 1
    if start >= size:
        return Reply(416, headers={"Content-Range": f"bytes */{size}"})
    headers = {**reply.headers, "Content-Range": f"bytes {start}-{min(end, size - 1)}/{size}"}
    return Reply(206, headers=headers, raw=reply.raw[start:end + 1])


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            reply = hub.answer(self.command, urlsplit(self.path).path, self.headers, body)
            payload = json.dumps(reply.body).encode() if reply.raw is None else reply.raw
            content_type = "application/json" if reply.raw is None else "application/octet-stream"
            self.send_response(reply.status)
            for name, value in {"Content-Type": content_type, **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command == "HEAD":
                return
            cut = reply.interruption
            self.wfile.write(payload if cut is None else payload[:cut.after])
            if cut is not None:  # the rest never comes: the connection ends short of its Content-Length
                self.wfile.flush()
                cut.reached.set()
                if cut.hold:
                    cut.release.wait(300)
                self.close_connection = True

        do_GET = do_HEAD = do_POST = do_PUT = _serve

        def log_message(self, format, *args) -> None:  # noqa: A002  (quiet test output)
            pass

    return Handler


# ---------------------------------------------------------------- dataset repositories (read only)


class DatasetHub(FakeHub):
    """The fake Hub plus read-only dataset repositories: the recursive file tree that ``list_repo_tree`` /
    ``list_repo_files`` read, and file downloads (``hf_hub_download``, ``snapshot_download``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.datasets: dict[str, dict[str, dict[str, bytes]]] = {}  # repo id -> branch -> path -> content

    def add_dataset(self, repo_id: str, files: dict[str, bytes], branches: dict[str, dict[str, bytes]] | None = None) -> str:
        """Publish a dataset repository (``files`` on main, other ``branches``); returns main's commit oid."""
        self.datasets[repo_id] = {MAIN: dict(files), **{name: dict(tree) for name, tree in (branches or {}).items()}}
        return self.dataset_oid(repo_id)

    def dataset_oid(self, repo_id: str, branch: str = MAIN) -> str:
        tree = {path: StoredFile(content, lfs=False) for path, content in self.datasets[repo_id][branch].items()}
        return _new_commit("dataset", tree, tuple(tree), salt=f"{repo_id}@{branch}").oid

    def _dataset_branch(self, repo: str, revision: str) -> str:
        for branch in self.datasets[repo]:
            if revision in (branch, self.dataset_oid(repo, branch)):
                return branch
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _routes(self) -> list[tuple[str, str, bool, Callable[..., Reply]]]:
        return [
            ("GET", rf"/api/datasets/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.+))?", False, self._dataset_tree),
            ("GET", rf"/api/datasets/{REPO}(?:/revision/(?P<revision>[^/]+))?", False, self._dataset_info),
            ("HEAD", rf"/datasets/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", False, self._dataset_resolve),
            ("GET", rf"/datasets/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", False, self._dataset_resolve),
            *super()._routes(),
        ]

    def _dataset_files(self, repo: str, revision: str) -> dict[str, bytes]:
        if repo not in self.datasets:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.datasets[repo][self._dataset_branch(repo, revision)]

    def _dataset_tree(self, repo: str, revision: str, body: bytes, folder: str = "") -> Reply:
        files = self._dataset_files(repo, revision)
        under = {path: content for path, content in files.items() if path.startswith(folder.rstrip("/"))}
        folders = {"/".join(path.split("/")[:depth]) for path in under for depth in range(1, path.count("/") + 1)}
        entries = [{"type": "directory", "path": path, "oid": "0" * 40, "size": 0} for path in sorted(folders)]
        entries += [
            {"type": "file", "path": path, "size": len(content), "oid": StoredFile(content, False).oid}
            for path, content in sorted(under.items())
        ]
        return Reply(200, entries)

    def _dataset_info(self, repo: str, body: bytes, revision: str = MAIN) -> Reply:
        files = self._dataset_files(repo, revision)
        siblings = [{"rfilename": path} for path in sorted(files)]
        sha = self.dataset_oid(repo, self._dataset_branch(repo, revision))
        return Reply(200, {"id": repo, "sha": sha, "private": False, "siblings": siblings})

    def _dataset_resolve(self, repo: str, revision: str, path: str, body: bytes) -> Reply:
        files = self._dataset_files(repo, revision)
        if path not in files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        content = files[path]
        headers = {
            "X-Repo-Commit": self.dataset_oid(repo, self._dataset_branch(repo, revision)),
            "ETag": f'"{StoredFile(content, False).oid}"',
        }
        return Reply(200, headers=headers, raw=content)


def parquet_bytes(columns: dict[str, list]) -> bytes:
    """A Parquet file of these columns (two rows per row group), as bytes."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, row_group_size=2)
    return buffer.getvalue()


def _documents(name: str, count: int, **extra_columns) -> bytes:
    texts = [f"Document {i} de {name} : « été », naïve ; fin.\n" * (i + 1) for i in range(count)]
    texts[count // 2] = "  \n"  # a blank document, stored as <s></s>
    ids = [f"{name}/{i}" for i in range(count)]
    return parquet_bytes({"text": texts, "id": ids, **extra_columns})


def miniature_lucie_dataset() -> dict[str, bytes]:
    """OpenLLM-France/Lucie-Training-Dataset in miniature, in its real layout: yearly RedPajama and
    FineWebEdu snapshots, Claire (one file per language, the subset in ``extra``), YouTube, TheStack,
    Wikipedia, a file that no blend prefix reads, and a later version's file. PeS2o is left out (a
    missing source); Persee is not public."""
    base = "data/v1.1/natural"
    files = {
        f"{base}/fr/RedPajama/RedPajama--fr--2019-09.parquet": _documents("rp-2019-09", 3),
        f"{base}/fr/RedPajama/RedPajama--fr--2019-04.parquet": _documents("rp-2019-04", 4),
        f"{base}/fr/RedPajama/RedPajama--fr--2020-05.parquet": _documents("rp-2020-05", 2),
        f"{base}/en/FineWebEdu/FineWebEdu--cc-main-2019-04.parquet": _documents("fwe-2019-04", 3),
        f"{base}/en/FineWebEdu/FineWebEdu--cc-main-2019-18.parquet": _documents("fwe-2019-18", 3),
        f"{base}/en/Claire/Claire--en.parquet": _documents(
            "claire-en", 5, extra=[json.dumps({"subset": s, "idx_row": i}) for i, s in
                                   enumerate(["MediaSum", "AMI", "MediaSum", "BNC", "MediaSum"])]),
        f"{base}/fr/YouTube/YouTube--fr.parquet": _documents("youtube", 3),
        f"{base}/fr/Wikipedia/Wikipedia--fr.parquet": _documents("wiki-fr", 4),
        "data/v1.1/code/python/TheStack/TheStack--python.parquet": _documents("stack-py", 3),
        f"{base}/fr/Unknown/Unknown--fr.parquet": _documents("unknown", 2),
        "data/v1.2/natural/fr/RedPajama/RedPajama--fr--2024-10.parquet": _documents("later", 2),
        "README.md": b"---\npretty_name: Lucie Training Dataset (miniature)\n---\n",
    }
    return files


def miniature_lucie_branches() -> dict[str, dict[str, bytes]]:
    """The miniature dataset's other branches: ``v1.2`` with OCR-filtered GallicaMonographies and Pile--Ubuntu_IRC
    under ``data/v1.2/`` (the releases phase 2 trained those on)."""
    base = "data/v1.2/natural"
    return {"v1.2": {
        f"{base}/fr/GallicaMonographies/GallicaMonographies.parquet": _documents("gallica-v1.2", 3),
        f"{base}/en/Pile/Pile--Ubuntu_IRC.parquet": _documents("ubuntu-v1.2", 2),
        "README.md": b"---\npretty_name: Lucie Training Dataset v1.2 (miniature)\n---\n",
    }}
