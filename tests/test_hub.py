"""Publish an export and run it by its repo id, through huggingface_hub's real client.

No machine here reaches the Hub: tests/hub_server.py stands in for it on 127.0.0.1 (HF_ENDPOINT),
and records what the client sends. The CLIs run as subprocesses so HF_ENDPOINT, HF_HOME, HF_TOKEN
and HF_HUB_OFFLINE are read the way a user's shell sets them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lfm2_onnx.builder.export import export
from lfm2_onnx.builder.options import BuildOptions
from lfm2_onnx.variants import read_manifest, write_manifest

from hub_server import FakeHub

TOKEN = "hf_lfm2onnxHUBtestTokenNeverPrinted42"
REPO = "my-org/LFM2-tiny-ONNX"
PROMPT = [1, 5, 6, 8, 9]


def run(module: str, *args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    assert TOKEN not in result.stdout + result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def hub_env(tmp_path: Path, hub: FakeHub | None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_ENDPOINT": hub.url if hub else "http://127.0.0.1:9"})  # port 9: nothing listens
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """fp32 + int4 for the CPU, both verified (the stored results go on the card)."""
    from lfm2_onnx.builder.parity import run_verification

    out = tmp_path_factory.mktemp("publish") / "tiny-onnx"
    export(tiny_checkpoint, out, [BuildOptions("fp32", "cpu"), BuildOptions("int4", "cpu")], progress=False,
           source={"model": "LiquidAI/LFM2-350M"}, command="python -m lfm2_onnx.build -p fp32,int4 ...")
    for name in ("cpu-fp32", "cpu-int4"):
        assert run_verification(out, tiny_checkpoint, variant=name, steps=4) == 0
    return out


def greedy_ids(folder_or_id, env: dict, cwd: Path, precision: str = "int4", extra: str = "") -> list[int]:
    code = (f"from lfm2_onnx import Lfm2Model; import json; m = Lfm2Model.load({str(folder_or_id)!r}, 'cpu', "
            f"precision={precision!r}{extra}); print(json.dumps(m.generate_ids([{PROMPT}], 16)[0]))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_verify_results_are_stored(export_dir):
    manifest = read_manifest(export_dir)
    for variant in manifest.variants:
        assert variant.verify["passed"] is True and variant.verify["ep"] == "cpu"
        assert variant.verify["decode"]["mean_kl"] >= 0 and variant.verify["steps"] == 4
    assert manifest.get("cpu-fp32").verify["greedy_match"] == [3, 3]
    assert manifest.get("cpu-int4").verify["judged_against"] == "dequantized weights"


def test_model_card(export_dir, tmp_path):
    from huggingface_hub import ModelCard

    from lfm2_onnx.card import make_card

    card = make_card(export_dir, REPO)
    path = tmp_path / "README.md"
    card.save(path)
    data = ModelCard.load(path).data.to_dict()  # what the Hub parses
    assert data["base_model"] == "LiquidAI/LFM2-350M"
    assert data["base_model_relation"] == "quantized"
    assert data["library_name"] == "transformers.js" and data["pipeline_tag"] == "text-generation"
    # The tiny checkpoint has no card, so LiquidAI's license comes from the fallback, linked to the source.
    assert (data["license"], data["license_name"]) == ("other", "lfm1.0")
    assert data["license_link"] == "https://huggingface.co/LiquidAI/LFM2-350M/blob/main/LICENSE"
    assert {"onnx", "onnxruntime-genai", "lfm2", "conversational"} <= set(data["tags"])
    text = card.text
    manifest = read_manifest(export_dir)
    for v in manifest.variants:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{v.name}`"))
        worst_kl = max(v.verify[phase]["mean_kl"] for phase in ("prefill", "decode"))
        assert v.onnx_file in row and "PASS" in row and f"{worst_kl:.2g}" in row
    assert f'Lfm2Model.load("{REPO}", ep="cpu", precision="fp32")' in text
    assert '"filename": "onnx/model.onnx"' in text and 'dtype: "fp32"' in text
    assert "python -m lfm2_onnx.build -p fp32,int4 ..." in text and "onnxruntime" in text


def test_license_comes_from_the_source_card(tmp_path, tiny_checkpoint):
    from lfm2_onnx.card import make_card

    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (checkpoint / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en, fr]\n---\n# a model\n")
    out = tmp_path / "out"
    export(checkpoint, out, BuildOptions(), progress=False, source={"model": "someone/their-model"})
    data = make_card(out, REPO).data.to_dict()
    assert data["license"] == "apache-2.0" and data["language"] == ["en", "fr"]
    assert data["base_model"] == "someone/their-model"


def test_dry_run_sends_nothing(export_dir, tmp_path):
    folder = shutil.copytree(export_dir, tmp_path / "copy")
    with FakeHub() as hub:
        env = hub_env(tmp_path, hub)
        del env["HF_TOKEN"]  # a dry run needs no token
        result = run("lfm2_onnx.publish", folder, "--repo", REPO, "--dry-run", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert hub.requests == []
    assert (folder / "README.md").is_file()
    listed = {line.split()[-1]: int(line.split()[0].replace(",", "")) for line in result.stdout.splitlines()
              if line.startswith("  ")}
    expected = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    assert listed == expected
    assert "dry run" in result.stdout


def test_refusals(export_dir, tmp_path):
    env = hub_env(tmp_path, None)
    one_line_error(run("lfm2_onnx.publish", export_dir, "--repo", "not a repo", "--dry-run", env=env, cwd=tmp_path),
                   "not a valid Hub repo id")
    one_line_error(run("lfm2_onnx.publish", export_dir, "--repo", REPO, "--create-pr", "--revision", "dev",
                       env=env, cwd=tmp_path), "--create-pr", "drop --revision")
    no_token = {k: v for k, v in env.items() if k != "HF_TOKEN"}
    one_line_error(run("lfm2_onnx.publish", export_dir, "--repo", REPO, env=no_token, cwd=tmp_path),
                   "no Hugging Face token")

    unreachable = run("lfm2_onnx.publish", shutil.copytree(export_dir, tmp_path / "net"), "--repo", REPO, env=env,
                      cwd=tmp_path)
    one_line_error(unreachable, f"cannot create {REPO}", "check the network")

    broken = shutil.copytree(export_dir, tmp_path / "broken")
    (broken / "onnx" / "model_q4.onnx_data").unlink()
    one_line_error(run("lfm2_onnx.publish", broken, "--repo", REPO, "--dry-run", env=env, cwd=tmp_path),
                   "not a complete export", "onnx/model_q4.onnx_data")

    failed = shutil.copytree(export_dir, tmp_path / "failed")
    manifest = read_manifest(failed)
    manifest.get("cpu-int4").verify["passed"] = False
    write_manifest(failed, manifest)
    one_line_error(run("lfm2_onnx.publish", failed, "--repo", REPO, "--dry-run", env=env, cwd=tmp_path),
                   "verify of cpu-int4 failed", "--allow-unverified")
    ok = run("lfm2_onnx.publish", failed, "--repo", REPO, "--dry-run", "--allow-unverified", env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "FAIL" in (failed / "README.md").read_text()

    manifest.get("cpu-int4").verify = None
    write_manifest(failed, manifest)
    one_line_error(run("lfm2_onnx.publish", failed, "--repo", REPO, "--dry-run", env=env, cwd=tmp_path),
                   "cpu-int4 never verified")


@pytest.mark.parametrize("transfer", ["regular", "lfs"])
def test_publish_then_pull_by_id(export_dir, tmp_path, transfer):
    """Publish; then run the repo by id: only the chosen variant is downloaded, tokens as the original."""
    xet_off = {"HF_HUB_DISABLE_XET": "1"} if transfer == "lfs" else {}  # LFS basic transfers, not Xet
    threshold = 100_000 if transfer == "lfs" else 1 << 40
    folder = shutil.copytree(export_dir, tmp_path / "upload")
    with FakeHub(lfs_threshold=threshold) as hub:
        env = hub_env(tmp_path, hub, **xet_off)
        result = run("lfm2_onnx.publish", folder, "--repo", REPO, "--private", "--commit-message", "first",
                     env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert hub.tokens_seen == {TOKEN}
        create = hub.calls("POST", "/api/repos/create")[0]
        assert create.body["visibility"] == "private" and create.body["name"] == REPO.split("/")[1]
        commit = hub.calls("POST", "/commit/main")[0]
        assert commit.body[0]["value"]["summary"] == "first"
        sent = {line["value"]["path"] for line in commit.body if line["key"] in ("file", "lfsFile")}
        assert sent == {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        if transfer == "lfs":
            assert hub.calls("POST", "info/lfs/objects/batch") and hub.calls("PUT", "/lfs-upload/")
            assert any(line["key"] == "lfsFile" for line in commit.body)
        assert hub.files(REPO)["onnx/model_q4.onnx_data"] == (folder / "onnx/model_q4.onnx_data").read_bytes()

        # Run it by id: only the int4 variant's graph comes down.
        hub.requests.clear()
        pulled = greedy_ids(REPO, env, tmp_path)
        fetched = {r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub.calls("GET", "/resolve/")}
        assert {"onnx/model_q4.onnx", "onnx/model_q4.onnx_data", "variants.json", "tokenizer.json"} <= fetched
        assert not [f for f in fetched if f.startswith("onnx/model.onnx")]

        # Errors: a missing repo, a missing variant (listing those there), a missing revision.
        one_line_error(run("lfm2_onnx.generate", "my-org/nothing-here", "--prompt", "hi", env=env, cwd=tmp_path),
                       "my-org/nothing-here: no such model on the Hub", "no local folder my-org/nothing-here")
        one_line_error(run("lfm2_onnx.generate", REPO, "--precision", "int8", "--prompt", "hi", env=env,
                           cwd=tmp_path), "no int8 variant", "it holds: cpu-fp32, cpu-int4")
        one_line_error(run("lfm2_onnx.generate", REPO, "--revision", "v9", "--prompt", "hi", env=env,
                           cwd=tmp_path), "no revision 'v9'")

    assert pulled == greedy_ids(export_dir, env, tmp_path)
    # Offline, from the cache: the variant pulled before runs; one never pulled is a one-line error.
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert greedy_ids(REPO, offline, tmp_path) == pulled
    one_line_error(run("lfm2_onnx.generate", REPO, "--precision", "fp32", "--prompt", "hi", env=offline,
                       cwd=tmp_path), "HF_HUB_OFFLINE is set")
    # No network and nothing cached: one line.
    cold = hub_env(tmp_path / "cold", None)
    one_line_error(run("lfm2_onnx.generate", REPO, "--prompt", "hi", env=cold, cwd=tmp_path), f"cannot get {REPO}")


def test_serve_by_repo_id(export_dir, tmp_path):
    """python -m lfm2_onnx.serve ORG/NAME --precision: the published variant served, tokens as the original."""
    from test_serve import ServeProcess  # skips without the serve extra and the openai client

    from lfm2_onnx import Lfm2Model

    folder = shutil.copytree(export_dir, tmp_path / "upload")
    with FakeHub() as hub:
        env = hub_env(tmp_path, hub)
        assert run("lfm2_onnx.publish", folder, "--repo", REPO, env=env, cwd=tmp_path).returncode == 0
        hub.requests.clear()
        with ServeProcess(REPO, "--precision", "int4", env=env, cwd=tmp_path) as server:
            client = server.client()
            assert [m.id for m in client.models.list().data] == [REPO]
            reply = client.completions.create(model=REPO, prompt=PROMPT, max_tokens=16)
        fetched = {r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub.calls("GET", "/resolve/")}
        assert "onnx/model_q4.onnx_data" in fetched and not [f for f in fetched if f.startswith("onnx/model.onnx")]
        assert TOKEN not in server.output
        # Errors before listening, in one line: a missing repo, variant (listing those there) or revision.
        one_line_error(run("lfm2_onnx.serve", "my-org/nothing-here", env=env, cwd=tmp_path),
                       "my-org/nothing-here: no such model on the Hub")
        one_line_error(run("lfm2_onnx.serve", REPO, "--precision", "int8", env=env, cwd=tmp_path),
                       "no int8 variant", "it holds: cpu-fp32, cpu-int4")
        one_line_error(run("lfm2_onnx.serve", REPO, "--revision", "v9", env=env, cwd=tmp_path), "no revision 'v9'")
    local = Lfm2Model.load(export_dir, precision="int4")
    assert reply.choices[0].text == local.generate(PROMPT, max_new_tokens=16)
    # Offline: a variant never pulled, or nothing cached, is one line too.
    one_line_error(run("lfm2_onnx.serve", REPO, "--precision", "fp32", env={**env, "HF_HUB_OFFLINE": "1"},
                       cwd=tmp_path), "HF_HUB_OFFLINE is set")
    one_line_error(run("lfm2_onnx.serve", REPO, env=hub_env(tmp_path / "cold", None), cwd=tmp_path),
                   f"cannot get {REPO}")


def test_publish_to_a_branch_and_as_a_pull_request(export_dir, tmp_path):
    folder = shutil.copytree(export_dir, tmp_path / "upload")
    with FakeHub() as hub:
        env = hub_env(tmp_path, hub)
        assert run("lfm2_onnx.publish", folder, "--repo", REPO, env=env, cwd=tmp_path).returncode == 0
        # Again, unchanged: the client finds every file on the Hub already and sends none (how an
        # interrupted upload resumes).
        commits = len(hub.calls("POST", "/commit/"))
        assert run("lfm2_onnx.publish", folder, "--repo", REPO, env=env, cwd=tmp_path).returncode == 0
        assert len(hub.calls("POST", "/commit/")) == commits
        with open(folder / "chat_template.jinja", "a") as f:
            f.write("{# on the branch only #}")
        result = run("lfm2_onnx.publish", folder, "--repo", REPO, "--revision", "int4-only", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert hub.calls("POST", "/branch/int4-only")
        (commit,) = hub.calls("POST", "/commit/int4-only")
        assert [line["value"]["path"] for line in commit.body if line["key"] == "file"] == ["chat_template.jinja"]
        assert hub.files(REPO, "int4-only")["chat_template.jinja"].endswith(b"{# on the branch only #}")
        assert not hub.files(REPO)["chat_template.jinja"].endswith(b"{# on the branch only #}")
        result = run("lfm2_onnx.publish", folder, "--repo", REPO, "--create-pr", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "pull request" in result.stdout
        assert hub.files(REPO, "refs/pr/1")["chat_template.jinja"].endswith(b"{# on the branch only #}")
        # The branch runs by id with --revision.
        ids = greedy_ids(REPO, env, tmp_path, extra=", revision='int4-only'")
    assert ids == greedy_ids(export_dir, env, tmp_path)


def test_pulled_export_runs_in_onnxruntime_genai_and_transformers_js(export_dir, tmp_path):
    """The folder a pull leaves behind loads unchanged in the other clients, with the original's tokens."""
    og = pytest.importorskip("onnxruntime_genai")
    from test_clients import GENERATE_MJS, TRANSFORMERS_JS, run_transformers_js

    with FakeHub() as hub:
        env = hub_env(tmp_path, hub)
        assert run("lfm2_onnx.publish", export_dir, "--repo", REPO, "--allow-unverified", env=env,
                   cwd=tmp_path).returncode == 0
        greedy_ids(REPO, env, tmp_path, precision="fp32")
    pulled = next((tmp_path / "hf-home" / "lfm2_onnx").glob("models--*/*"))
    assert not any(p.is_symlink() for p in pulled.rglob("*"))

    def og_greedy(folder: Path) -> list[int]:
        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(PROMPT) + 16)
        generator = og.Generator(model, params)
        generator.append_tokens([PROMPT])
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)][len(PROMPT):]

    assert og_greedy(pulled) == og_greedy(export_dir)
    assert og_greedy(pulled) == greedy_ids(export_dir, env, tmp_path, precision="fp32")
    node = shutil.which("node")
    if node is None or not TRANSFORMERS_JS.is_dir() or not GENERATE_MJS.is_file():
        pytest.skip("transformers.js is not installed (tests/clients/install.sh); onnxruntime-genai checked")
    assert run_transformers_js(node, pulled, [PROMPT], dtype="fp32") == run_transformers_js(node, export_dir,
                                                                                            [PROMPT], dtype="fp32")
