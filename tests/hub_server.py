"""A small Hugging Face Hub look-alike on 127.0.0.1, for tests that must not reach the real Hub.

It speaks the HTTP API that the real ``huggingface_hub`` client uses to create a repo, pre-upload,
commit (NDJSON, files inlined as base64: the server answers "regular" to every pre-upload, so no
LFS or Xet transfer is ever attempted), create a branch, and read back (repo info, tree listing,
``resolve``). Repos live in memory; every request is recorded for assertions.

``hub`` is the fixture: it starts the server and points ``huggingface_hub`` at it (endpoint, cache,
token, telemetry and Xet switched off). ``hub_env`` gives the same settings as environment
variables, for subprocesses.
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

import pytest

TOKEN = "hf_vlticket_test_token"


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        sha = hashlib.sha1(f"{len(self.commits)}:{sorted(files)}".encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """In-memory repos plus a request log, served by :class:`_Handler`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def put(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """Publish files directly (e.g. a hostile repo), as one commit replacing the tree."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            return repo.commit(files, branch)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    def commits_posted(self) -> list[str]:
        return [p for m, p, _ in self.requests if m == "POST" and "/commit/" in p]


_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<op>revision|tree|preupload|commit|branch)/(?P<rev>[^/?]+))?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    # -- plumbing ---------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict | None = None,
        content_type: str = "application/json",
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        head: bool = False,
        extra: dict | None = None,
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

    def _record(self) -> str:
        path = urlsplit(self.path).path
        with self.hub.lock:
            self.hub.requests.append((self.command, path, self.headers.get("Authorization")))
        return path

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
        return repo

    def _resolved(self, repo_id: str, revision: str, head: bool = False) -> tuple[Repo, str] | None:
        """The repo and the commit ``revision`` names, or None once a 404 is sent."""
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            return None
        return repo, sha

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._error(401, None, "Invalid credentials in Authorization header")
            return False
        return True

    # -- reads --------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._resolve(head=True)

    def do_GET(self) -> None:
        path = self._record()
        if path == "/api/agent-harnesses":
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        m = _API.match(path)
        if m and m["op"] in (None, "revision"):
            return self._info(unquote(m["repo"]), unquote(m["rev"] or "main"))
        if m and m["op"] == "tree":
            return self._tree(unquote(m["repo"]), unquote(m["rev"]))
        self._resolve(head=False, path=path)

    def _info(self, repo_id: str, revision: str) -> None:
        found = self._resolved(repo_id, revision)
        if found is None:
            return
        repo, sha = found
        siblings = [{"rfilename": p} for p in sorted(repo.commits[sha])]
        self._json(
            200,
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": False,
                "siblings": siblings,
                "tags": [],
                "downloads": 0,
                "likes": 0,
            },
        )

    def _tree(self, repo_id: str, revision: str) -> None:
        found = self._resolved(repo_id, revision)
        if found is None:
            return
        repo, sha = found
        entries = [
            {"type": "file", "path": p, "size": len(d), "oid": git_sha1(d)}
            for p, d in sorted(repo.commits[sha].items())
        ]
        self._json(200, entries)

    def _resolve(self, head: bool, path: str | None = None) -> None:
        path = path or self._record()
        m = _RESOLVE.match(path)
        if not m:
            return self._error(404, None, f"no route for {path}", head=head)
        found = self._resolved(unquote(m["repo"]), unquote(m["rev"]), head=head)
        if found is None:
            return
        repo, sha = found
        name = unquote(m["file"])
        data = repo.commits[sha].get(name)
        if data is None:
            return self._error(
                404,
                "EntryNotFound",
                f"{name} does not exist",
                head=head,
                extra={"X-Repo-Commit": sha},
            )
        headers = {"ETag": f'"{git_sha1(data)}"', "X-Repo-Commit": sha}
        self._send(200, data, headers, "application/octet-stream", head=head)

    # -- writes -------------------------------------------------------------------------------
    def do_POST(self) -> None:
        path = self._record()
        body = self._body()
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if not self._authorized():
            return
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            with self.hub.lock:
                if repo_id in self.hub.repos:  # the real Hub also returns the url here
                    message = "You already created this model repo"
                    body = {"error": message, "url": f"{self.hub.url}/{repo_id}"}
                    return self._json(409, body, {"X-Error-Message": message})
                self.hub.repos[repo_id] = Repo()
                self.hub.repos[repo_id].commit({".gitattributes": b"*.safetensors filter=lfs\n"})
            return self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
        m = _API.match(path)
        if not m or m["op"] not in ("preupload", "commit", "branch"):
            return self._error(404, None, f"no route for {path}")
        repo = self._repo(unquote(m["repo"]))
        if repo is None:
            return
        rev = unquote(m["rev"])
        if m["op"] == "branch":
            if rev in repo.branches:
                return self._error(409, None, f"Branch {rev} already exists")
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            repo.branches[rev] = repo.resolve(start)
            return self._json(200, {})
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if m["op"] == "preupload":
            current = repo.commits[sha]
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_sha1(current[f["path"]]) if f["path"] in current else None,
                }
                for f in json.loads(body)["files"]
            ]
            return self._json(200, {"files": files})
        return self._commit(repo, rev, sha, body)

    def _commit(self, repo: Repo, branch: str, parent: str, body: bytes) -> None:
        files = dict(repo.commits[parent])
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif item["key"] != "header":
                return self._error(400, None, f"unsupported commit operation {item['key']}")
        with self.hub.lock:
            sha = repo.commit(files, branch)
        repo_id = next(k for k, v in self.hub.repos.items() if v is repo)
        self._json(
            200,
            {
                "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
            },
        )


def hub_env(hub: FakeHub, home: str) -> dict[str, str]:
    """Environment variables that point a fresh process's huggingface_hub at ``hub``."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": home,
        "HF_HUB_CACHE": f"{home}/hub",
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
    }


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running :class:`FakeHub`, with this process's huggingface_hub pointed at it.

    huggingface_hub reads its settings into ``huggingface_hub.constants`` at import time, so the
    module attributes are patched as well as the environment.
    """
    from huggingface_hub import constants

    server = FakeHub().start()
    home = str(tmp_path / "hf_home")
    env = hub_env(server, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patched = {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": home,
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_TOKEN_PATH": f"{home}/token",
        "HF_STORED_TOKENS_PATH": f"{home}/stored_tokens",
        "AGENT_HARNESSES_PATH": f"{home}/.agent_harnesses.json",
        "HF_XET_CACHE": f"{home}/xet",
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    yield server
    server.stop()
