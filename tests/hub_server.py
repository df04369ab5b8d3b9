"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for huggingface_hub's real client.

It implements the endpoints huggingface_hub (2.x) calls to create a repo and a branch, upload a
folder (preupload, commit, the LFS batch API with basic transfers, pull requests) and download one
(revision info, tree listing, resolve), keeps every commit in memory, and records each request
(method, path, query, whether it carried the token, the parsed body) for the tests to inspect.
Set HF_ENDPOINT to `server.url`. Not a Hub: no auth beyond "a bearer token is required to write".
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    commits: dict = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict = field(default_factory=dict)  # "main", a branch, "refs/pr/1" -> sha
    prs: list = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    query: dict
    authorized: bool
    body: object


class FakeHub:
    def __init__(self, lfs_threshold: int = 10 * 1024 * 1024):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.lfs_threshold = lfs_threshold  # files this large are uploaded through LFS
        self.requests: list[Request] = []
        self.tokens_seen: set[str] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[ref]]

    def calls(self, method: str, contains: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and contains in r.path]

    # -- state changes ---------------------------------------------------------------------------
    def commit(self, repo: Repo, ref: str, files: dict, deleted: list[str], summary: str) -> str:
        parent = repo.refs.get(ref) or repo.refs.get("main")
        tree = {k: v for k, v in repo.commits[parent].items() if k not in deleted} if parent else {}
        tree.update(files)
        sha = hashlib.sha1(f"{parent}{summary}{time.time_ns()}".encode() + repr(sorted(tree)).encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[ref] = sha
        return sha

    def entry(self, path: str, data: bytes) -> dict:
        item = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha(data)}
        if len(data) >= self.lfs_threshold:
            item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return item


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ------------------------------------------------------------------------------
        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None):
            data = body if body is not None else (b"" if payload is None else json.dumps(payload).encode())
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if body is None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str):
            self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

        def _record(self, body) -> tuple[str, dict]:
            url = urlsplit(self.path)
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                hub.tokens_seen.add(auth[7:])
            with hub._lock:
                hub.requests.append(Request(self.command, unquote(url.path), parse_qs(url.query), bool(auth), body))
            return url.path, parse_qs(url.query)

        def _repo(self, repo_id: str, write: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self.headers.get("Authorization")):
                self._error(401 if repo is None else 401, "RepoNotFound", f"Repository {repo_id} not found")
                return None
            if write and not self.headers.get("Authorization"):
                self._error(401, "Unauthorized", "write access needs a token")
                return None
            return repo

        def _sha(self, repo: Repo, rev: str) -> str | None:
            rev = unquote(rev)
            if rev in repo.refs:
                return repo.refs[rev]
            if rev in repo.commits:
                return rev
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None

        # -- verbs ---------------------------------------------------------------------------------
        def do_POST(self):
            raw = self._body()
            path = urlsplit(self.path).path
            is_json = raw[:1] == b"{" and b"\n{" not in raw.strip()
            body = json.loads(raw) if is_json else [json.loads(line) for line in raw.splitlines() if line.strip()]
            path, query = self._record(body)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if path == "/api/repos/create":
                if not self.headers.get("Authorization"):
                    return self._error(401, "Unauthorized", "creating a repo needs a token")
                repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
                if repo_id in hub.repos:  # the Hub answers 409 with the url, which exist_ok=True returns
                    return self._send(409, {"error": "You already created this model repo",
                                            "url": f"{hub.url}/{repo_id}"})
                private = body.get("visibility") == "private" or bool(body.get("private"))
                repo = hub.repos[repo_id] = Repo(private=private)
                repo.refs["main"] = hub.commit(repo, "main", {".gitattributes": b"*.onnx_data filter=lfs\n"}, [],
                                               "initial commit")
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":  # the client checks a README's metadata before uploading it
                return self._send(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 5:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                repo = self._repo(repo_id, write=True)
                if repo is None:
                    return
                if action == "branch":
                    if rest in repo.refs:
                        return self._error(409, "BranchExists", f"branch {rest} already exists")
                    repo.refs[rest] = repo.refs["main"]
                    return self._send(200, {})
                if action == "preupload":  # with the remote oid, so an unchanged file is not sent again
                    tree = repo.commits[repo.refs.get(rest, repo.refs["main"])]
                    files = []
                    for f in body["files"]:
                        lfs = f["size"] >= hub.lfs_threshold
                        there = tree.get(f["path"])
                        oid = None if there is None else (hashlib.sha256(there).hexdigest() if lfs
                                                          else git_blob_sha(there))
                        files.append({"path": f["path"], "shouldIgnore": False, "oid": oid,
                                      "uploadMode": "lfs" if lfs else "regular"})
                    return self._send(200, {"files": files, "commitOid": repo.refs.get(rest, repo.refs["main"])})
                if action == "commit":
                    return self._commit(repo_id, repo, rest, body, query)
                if action == "discussions":
                    num = len(repo.prs) + 1
                    repo.prs.append(body)
                    repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
                    return self._send(200, {"num": num, "url": f"{hub.url}/{repo_id}/discussions/{num}"})
            if path.endswith(".git/info/lfs/objects/batch"):
                objects = []
                for obj in body["objects"]:
                    item = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in hub.lfs:
                        item["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"}}
                    objects.append(item)
                return self._send(200, {"transfer": "basic", "objects": objects},
                                  {"Content-Type": "application/vnd.git-lfs+json"})
            return self._error(404, "EntryNotFound", f"no endpoint POST {path}")

        def _commit(self, repo_id: str, repo: Repo, rev: str, lines: list, query: dict):
            ref = unquote(rev)
            if ref not in repo.refs:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {ref}")
            files, deleted, summary = {}, [], ""
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    summary = value["summary"]
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(400, "BadRequest", f"LFS object {value['oid']} was not uploaded")
                    files[value["path"]] = hub.lfs[value["oid"]]
                elif key in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
            pr_url = None
            if query.get("create_pr") == ["1"]:
                num = len(repo.prs) + 1
                repo.prs.append({"title": summary})
                ref, pr_url = f"refs/pr/{num}", f"{hub.url}/{repo_id}/discussions/{num}"
                repo.refs[ref] = repo.refs["main"]
            sha = hub.commit(repo, ref, files, deleted, summary)
            return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha,
                                    "pullRequestUrl": pr_url})

        def do_PUT(self):
            data = self._body()
            path, _ = self._record({"bytes": len(data)})
            if path.startswith("/lfs-upload/"):
                oid = path.rsplit("/", 1)[1]
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._error(400, "BadRequest", "sha256 mismatch")
                hub.lfs[oid] = data
                return self._send(200, {})
            return self._error(404, "EntryNotFound", f"no endpoint PUT {path}")

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            path, query = self._record(None)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if parts[:2] == ["api", "models"] and len(parts) >= 6:
                repo = self._repo(f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return
                if parts[4] == "discussions":  # create_pull_request reads the new PR back
                    num = int(parts[5])
                    return self._send(200, {
                        "num": num, "title": repo.prs[num - 1].get("title", ""), "isPullRequest": True,
                        "status": "draft", "createdAt": "2026-01-01T00:00:00.000Z", "author": {"name": "me"},
                        "repo": {"name": f"{parts[2]}/{parts[3]}", "type": "model"}, "events": [],
                        "changes": {"base": "refs/heads/main"}, "filesWithConflicts": [], "diff": ""})
                sha = self._sha(repo, parts[5])
                if sha is None:
                    return
                tree = repo.commits[sha]
                if parts[4] == "revision":
                    return self._send(200, {"id": f"{parts[2]}/{parts[3]}", "sha": sha, "private": repo.private,
                                            "siblings": [{"rfilename": p} for p in sorted(tree)]})
                if parts[4] == "tree":
                    prefix = "/".join(parts[6:])
                    entries = [hub.entry(p, d) for p, d in sorted(tree.items()) if p.startswith(prefix)]
                    return self._send(200, entries)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo(f"{parts[0]}/{parts[1]}")
                if repo is None:
                    return
                sha = self._sha(repo, parts[3])
                if sha is None:
                    return
                name = "/".join(parts[4:])
                data = repo.commits[sha].get(name)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{name} does not exist at {sha}")
                entry = hub.entry(name, data)
                headers = {"X-Repo-Commit": sha, "ETag": f'"{entry["oid"]}"'}
                if "lfs" in entry:
                    headers.update({"X-Linked-Etag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Size": str(len(data))})
                return self._send(200, headers=headers, body=data)
            return self._error(404, "EntryNotFound", f"no endpoint GET {path}")

    return Handler
