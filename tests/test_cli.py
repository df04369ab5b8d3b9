"""The CLIs refuse bad input cleanly: one `error: ...` line that names the problem and the fix,
exit code 2, no traceback, and nothing left behind that looks like a model.

A few cases run the real entry point (`python -m lfm2_onnx.build` in a subprocess, offline, with a
fake HF_TOKEN that must never be printed); the rest call main() in-process, which is much faster.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from lfm2_onnx import build  # noqa: E402
from lfm2_onnx import verify as verify_cli  # noqa: E402
from lfm2_onnx.builder import export as export_module  # noqa: E402
from lfm2_onnx.builder.spec import load_spec  # noqa: E402
from lfm2_onnx.builder.tensors import expected_shapes  # noqa: E402
from lfm2_onnx.errors import UserError, cli_entry  # noqa: E402

# Looks like a real token; no message, in any case, may contain it.
FAKE_TOKEN = "hf_lfm2onnxTESTtokenDoNotPrint0123456789"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# --- helpers -------------------------------------------------------------------------------------


def run_cli(module: str, *args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point: offline, a private HF_HOME and TMPDIR, and a fake token in the environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    (cwd / "tmp").mkdir(exist_ok=True)
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf-home"), "HF_TOKEN": FAKE_TOKEN,
                     "TMPDIR": str(cwd / "tmp"), "PYTHONDONTWRITEBYTECODE": "1"})
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(rc: int, stdout: str, stderr: str, *needles: str) -> str:
    """Exit code 2 and exactly one `error: ` line on stderr that contains every needle."""
    assert "Traceback" not in stderr, stderr
    assert rc == 2, f"exit code {rc}\nstdout: {stdout}\nstderr: {stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert FAKE_TOKEN not in stdout + stderr
    return line


def looks_like_a_model(root: Path) -> list[Path]:
    """Anything under root that a build could have left: exports, staging or old folders, ONNX files."""
    found = []
    for path in root.rglob("*"):
        name = path.name
        if (".partial-" in name or ".old-" in name or name.startswith("lfm2-tiny-")
                or name.endswith((".onnx", ".onnx_data")) or ".onnx_data_" in name or name == "genai_config.json"):
            found.append(path)
    return found


def assert_nothing_left(work: Path, out: Path | None = None) -> None:
    if out is not None:
        assert not out.exists() and not out.is_symlink(), f"{out} was created"
    assert looks_like_a_model(work) == []


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working folder, also the temp folder, so leftovers of any kind show up under it."""
    folder = tmp_path / "work"
    (folder / "tmp").mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(folder / "tmp"))
    monkeypatch.chdir(folder)
    return folder


def run_build(capsys, *args) -> tuple[int, str, str]:
    rc = build.main([*map(str, args), "-q"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def copy_checkpoint(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- source: -i folder ---------------------------------------------------------------------------


def test_missing_input_folder_subprocess(work):
    out = work / "out"
    r = run_cli("lfm2_onnx.build", "-i", "does-not-exist", "-o", out, "-q", cwd=work)
    assert_user_error(r.returncode, r.stdout, r.stderr, "does-not-exist", "no such folder", "-i", "-m")
    assert_nothing_left(work, out)


def test_input_is_a_file(work, capsys):
    (work / "weights.safetensors").write_bytes(b"x")
    rc, out, err = run_build(capsys, "-i", work / "weights.safetensors", "-o", work / "out")
    assert_user_error(rc, out, err, "weights.safetensors", "not a folder", "config.json")
    assert_nothing_left(work, work / "out")


def test_folder_without_config(work, capsys, tiny_checkpoint):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    (folder / "config.json").unlink()
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, str(folder), "no config.json", "-i", "config.json + *.safetensors")
    assert_nothing_left(work, work / "out")


def test_parent_of_checkpoint_folder_suggests_it(work, capsys, tiny_checkpoint):
    copy_checkpoint(tiny_checkpoint, work / "download" / "LFM2")
    rc, out, err = run_build(capsys, "-i", work / "download", "-o", work / "out")
    assert_user_error(rc, out, err, "no config.json", f"did you mean -i {work / 'download' / 'LFM2'}?")
    assert_nothing_left(work, work / "out")


def test_unsupported_architecture(work, capsys):
    folder = work / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                                    "hidden_size": 64}))
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, "unsupported architecture", "LlamaForCausalLM", "supported: Lfm2ForCausalLM")
    assert_nothing_left(work, work / "out")


def test_no_safetensors(work, capsys, tiny_checkpoint):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, "no *.safetensors", "pytorch_model.bin", "convert them to safetensors")
    assert_nothing_left(work, work / "out")


# --- damaged weights -----------------------------------------------------------------------------


def with_header(header: bytes) -> bytes:
    """A safetensors-shaped file: little-endian header length, the header, some data."""
    return len(header).to_bytes(8, "little") + header + b"\0" * 100


GARBAGE = {
    "random": os.urandom(4096),
    "empty": b"",
    "bad-json": with_header(b"{this is not json"),
    "json-list": with_header(b"[1, 2]"),
    "no-shape": with_header(b'{"w": {"dtype": "F32", "data_offsets": [0, 4]}}'),
    "null-shape": with_header(b'{"w": {"dtype": "F32", "shape": null, "data_offsets": [0, 4]}}'),
    "bad-offsets": with_header(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": "x"}}'),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_corrupt_safetensors(work, capsys, tiny_checkpoint, kind):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    (folder / "model.safetensors").write_bytes(GARBAGE[kind])
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, str(folder / "model.safetensors"), "not a valid safetensors file",
                      "download it again")
    assert_nothing_left(work, work / "out")


@pytest.mark.parametrize("keep", [0.5, 0.999, 20], ids=["half", "last-bytes", "inside-header"])
def test_truncated_safetensors(work, capsys, tiny_checkpoint, keep):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    line = assert_user_error(rc, out, err, str(weights), "download it again")
    assert "truncated" in line or "not a valid safetensors file" in line
    assert_nothing_left(work, work / "out")


@pytest.mark.parametrize("change, tensor", [
    ({"hidden_size": 128}, "model.embed_tokens.weight"),
    ({"intermediate_size": 512}, "model.layers.0.feed_forward.w1.weight"),
    ({"vocab_size": 1000}, "model.embed_tokens.weight"),
], ids=["hidden_size", "intermediate_size", "vocab_size"])
def test_weights_disagree_with_config(work, capsys, tiny_checkpoint, change, tensor):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    edit_config(folder, **change)
    have = expected_shapes(load_spec(tiny_checkpoint)[0])[tensor]
    want = expected_shapes(load_spec(folder)[0])[tensor]
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, str(folder), "weights disagree with config.json",
                      f"{tensor} is {list(have)}, config implies {list(want)}",
                      "use the config.json that came with these weights")
    assert_nothing_left(work, work / "out")


def test_weights_missing_for_config(work, capsys, tiny_checkpoint):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    edit_config(folder, layer_types=config["layer_types"] + ["conv"], num_hidden_layers=config["num_hidden_layers"] + 1)
    rc, out, err = run_build(capsys, "-i", folder, "-o", work / "out")
    assert_user_error(rc, out, err, "weights missing for the config", "model.layers.6.",
                      "must come from the same checkpoint")
    assert_nothing_left(work, work / "out")


# --- precision and execution provider ------------------------------------------------------------


def test_unknown_precision_subprocess(work):
    r = run_cli("lfm2_onnx.build", "-m", "lfm2-tiny-random", "-p", "int3", "-o", work / "out", cwd=work)
    assert_user_error(r.returncode, r.stdout, r.stderr, "unknown precision 'int3'", "fp32, fp16, bf16")
    assert_nothing_left(work, work / "out")


def test_unknown_execution_provider(work, capsys):
    rc, out, err = run_build(capsys, "-m", "lfm2-tiny-random", "-e", "rocm", "-o", work / "out")
    assert_user_error(rc, out, err, "unknown execution provider 'rocm'", "cpu, cuda")
    assert_nothing_left(work, work / "out")


def test_unsupported_combination(work, capsys):
    rc, out, err = run_build(capsys, "-m", "lfm2-tiny-random", "-p", "bf16", "-e", "cpu", "-o", work / "out")
    assert_user_error(rc, out, err, "-p bf16 -e cpu: onnxruntime's CPU attention and conv kernels have no bfloat16",
                      "valid combinations", "-p fp32 -e cpu", "-p fp16 -e cpu", "-p bf16 -e cuda")
    assert_nothing_left(work, work / "out")


def test_fp32_on_cuda_is_refused_with_the_reason(work, capsys):
    rc, out, err = run_build(capsys, "-m", "lfm2-tiny-random", "-p", "fp32", "-e", "cuda", "-o", work / "out")
    assert_user_error(rc, out, err, "CUDA GroupQueryAttention has no float32", "-p fp16 -e cuda")
    assert_nothing_left(work, work / "out")


# --- output --------------------------------------------------------------------------------------


def test_output_under_a_file(work, capsys, tiny_checkpoint):
    (work / "notes.txt").write_text("not a folder")
    out = work / "notes.txt" / "export"
    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", out)
    assert_user_error(rc, stdout, err, "notes.txt is a file, not a folder", "choose another -o")
    assert (work / "notes.txt").read_text() == "not a folder"
    assert_nothing_left(work)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("out", ["/proc/lfm2-onnx-test-out", "/proc/lfm2-onnx-test-dir/out"])
def test_unwritable_output(work, capsys, tiny_checkpoint, out):
    # Tests run as root, so permissions stop nothing; /proc refuses new files and folders even to root.
    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", out)
    assert_user_error(rc, stdout, err, "cannot create", "/proc", "choose a writable -o")
    assert not Path(out).exists()
    assert Path(out).parent == Path("/proc") or not Path(out).parent.exists()
    assert_nothing_left(work)


def test_existing_output_needs_overwrite(work, capsys, tiny_checkpoint, tiny_export):
    out = work / "out"
    shutil.copytree(tiny_export, out)
    (out / "marker.txt").write_text("from an earlier build")
    before = snapshot(out)

    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", out)
    assert_user_error(rc, stdout, err, str(out), "already exists", "--overwrite")
    assert snapshot(out) == before
    assert [p.name for p in work.iterdir() if p.name != "tmp"] == ["out"]  # no staging or old folders

    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", out, "--overwrite")
    assert rc == 0, err
    assert stdout.startswith(f"wrote {out} ")
    assert not (out / "marker.txt").exists()
    assert (out / "genai_config.json").is_file() and (out / "onnx" / "model.onnx").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["out", "tmp"]  # the old export is gone
    assert list((work / "tmp").iterdir()) == []


def test_overwrite_refuses_a_folder_that_is_not_an_export(work, capsys, tiny_checkpoint):
    out = work / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", out, "--overwrite")
    assert_user_error(rc, stdout, err, "not an export folder", "--overwrite will not delete it",
                      "choose another -o")
    assert (out / "thesis.tex").read_text() == "years of work"
    assert_nothing_left(work)


def test_overwrite_refuses_the_folder_that_holds_the_checkpoint(work, capsys, tiny_checkpoint, tiny_export):
    out = work / "out"
    shutil.copytree(tiny_export, out)
    checkpoint = copy_checkpoint(tiny_checkpoint, out / "source")
    rc, stdout, err = run_build(capsys, "-i", checkpoint, "-o", out, "--overwrite")
    assert_user_error(rc, stdout, err, "holds the checkpoint", "choose another -o")
    assert (checkpoint / "model.safetensors").is_file()


def test_existing_output_is_a_file(work, capsys, tiny_checkpoint):
    (work / "out").write_text("a file")
    rc, stdout, err = run_build(capsys, "-i", tiny_checkpoint, "-o", work / "out", "--overwrite")
    assert_user_error(rc, stdout, err, "exists and is not a folder", "choose another -o")
    assert (work / "out").read_text() == "a file"


# --- source selection ----------------------------------------------------------------------------


@pytest.mark.parametrize("sources", [[], ["-m", "lfm2-tiny-random", "-i", "ckpt"]], ids=["neither", "both"])
def test_exactly_one_source(work, capsys, sources):
    rc, out, err = run_build(capsys, *sources, "-o", work / "out")
    assert_user_error(rc, out, err, "give exactly one source", "-m HUB_ID", "-i CHECKPOINT_DIR")
    assert_nothing_left(work, work / "out")


@pytest.mark.parametrize("argv, needle", [
    (["-m", "lfm2-tiny-random"], "the following arguments are required: -o/--output"),
    (["-m", "lfm2-tiny-random", "-o", "out", "--bogus"], "unrecognized arguments: --bogus"),
], ids=["no-output", "unknown-flag"])
def test_bad_command_line(work, capsys, argv, needle):
    rc, out, err = run_build(capsys, *argv)
    assert_user_error(rc, out, err, needle, "see python -m lfm2_onnx.build --help")
    assert_nothing_left(work, work / "out")


def test_revision_with_local_folder(work, capsys, tiny_checkpoint):
    rc, out, err = run_build(capsys, "-i", tiny_checkpoint, "--revision", "main", "-o", work / "out")
    assert_user_error(rc, out, err, "--revision and --cache-dir apply to -m HUB_ID only")
    assert_nothing_left(work, work / "out")


def test_local_folder_given_as_hub_id(work, capsys, tiny_checkpoint):
    folder = copy_checkpoint(tiny_checkpoint, work / "ckpt")
    rc, out, err = run_build(capsys, "-m", f"{folder}/", "-o", work / "out")
    assert_user_error(rc, out, err, "is a local folder, not a Hub id", f"-i {folder}")
    assert_nothing_left(work, work / "out")


# --- the Hub, offline ----------------------------------------------------------------------------


def test_token_is_never_printed(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)

    @cli_entry
    def main(argv):
        raise UserError(f"401 for https://huggingface.co/api (Authorization: Bearer {FAKE_TOKEN})\nsecond line")

    rc = main([])
    line = assert_user_error(rc, "", capsys.readouterr().err, "Bearer ***", "second line")
    assert FAKE_TOKEN not in line


def test_hub_model_not_in_cache_offline(work):
    (work / "hf-home").mkdir()
    r = run_cli("lfm2_onnx.build", "-m", "LiquidAI/LFM2-350M", "-o", work / "out", "-q", cwd=work)
    assert_user_error(r.returncode, r.stdout, r.stderr, "cannot get LiquidAI/LFM2-350M",
                      "HF_HUB_OFFLINE is set and it is not in the cache", "pass a local folder with -i")
    assert_nothing_left(work, work / "out")
    assert not list((work / "hf-home").rglob("*.safetensors"))


def write_hub_cache(hf_home: Path, repo_id: str, checkpoint: Path) -> Path:
    """huggingface_hub's cache layout: blobs, a snapshot of symlinks to them, refs/main -> the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot_dir = repo / "snapshots" / COMMIT
    snapshot_dir.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted(checkpoint.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copyfile(file, blob)
        (snapshot_dir / file.name).symlink_to(os.path.relpath(blob, snapshot_dir))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot_dir


def test_hub_model_from_cache_offline(work, tiny_checkpoint):
    write_hub_cache(work / "hf-home", "lfm2-test/tiny", tiny_checkpoint)
    out = work / "out"
    r = run_cli("lfm2_onnx.build", "-m", "lfm2-test/tiny", "-o", out, "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and FAKE_TOKEN not in r.stdout + r.stderr
    assert r.stdout.startswith(f"wrote {out} (onnx/model.onnx")
    assert (out / "onnx" / "model.onnx").is_file() and (out / "genai_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Lfm2ForCausalLM"]
    assert not [p for p in work.iterdir() if ".partial-" in p.name]


def test_hub_revision_not_in_cache_offline(work, tiny_checkpoint):
    write_hub_cache(work / "hf-home", "lfm2-test/tiny", tiny_checkpoint)
    r = run_cli("lfm2_onnx.build", "-m", "lfm2-test/tiny", "--revision", "v2", "-o", work / "out", "-q", cwd=work)
    assert_user_error(r.returncode, r.stdout, r.stderr, "cannot get lfm2-test/tiny", "not in the cache")
    assert_nothing_left(work, work / "out")


# --- failures while writing ----------------------------------------------------------------------


def failing_writer(error: BaseException):
    def write(model, onnx_path: Path, **kwargs) -> int:
        onnx_path.write_bytes(b"half an onnx file")
        (onnx_path.parent / f"{onnx_path.name}_data").write_bytes(b"\0" * 4096)
        raise error

    return write


def test_failure_while_writing_leaves_nothing(work, capsys, monkeypatch, tiny_checkpoint):
    monkeypatch.setattr(export_module, "save_with_external_data", failing_writer(RuntimeError("writer broke")))
    with pytest.raises(RuntimeError, match="writer broke"):
        build.main(["-i", str(tiny_checkpoint), "-o", str(work / "out"), "-q"])
    assert_nothing_left(work, work / "out")


def test_interrupt_while_writing_leaves_nothing(work, capsys, monkeypatch):
    monkeypatch.setattr(export_module, "save_with_external_data", failing_writer(KeyboardInterrupt()))
    rc = build.main(["-m", "lfm2-tiny-random", "-o", str(work / "out"), "-q"])
    assert rc == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert_nothing_left(work, work / "out")  # the generated tiny checkpoint is gone too


def test_disk_full_while_writing(work, capsys, monkeypatch, tiny_checkpoint):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(export_module, "save_with_external_data", failing_writer(full))
    rc, out, err = run_build(capsys, "-i", tiny_checkpoint, "-o", work / "out")
    assert_user_error(rc, out, err, "No space left on device", "free some space or choose another -o")
    assert_nothing_left(work, work / "out")


def test_failed_rebuild_keeps_the_previous_export(work, capsys, monkeypatch, tiny_checkpoint, tiny_export):
    out = work / "out"
    shutil.copytree(tiny_export, out)
    before = snapshot(out)
    monkeypatch.setattr(export_module, "save_with_external_data", failing_writer(KeyboardInterrupt()))
    assert build.main(["-i", str(tiny_checkpoint), "-o", str(out), "--overwrite", "-q"]) == 130
    assert snapshot(out) == before
    assert sorted(p.name for p in work.iterdir()) == ["out", "tmp"]


# --- python -m lfm2_onnx.verify ------------------------------------------------------------------


def test_verify_missing_folder_subprocess(work):
    r = run_cli("lfm2_onnx.verify", "no-such-export", "--reference", "lfm2-tiny-random", cwd=work)
    assert_user_error(r.returncode, r.stdout, r.stderr, "no-such-export: no such export folder",
                      "python -m lfm2_onnx.build -o no-such-export")


@pytest.mark.parametrize("kind", ["empty", "checkpoint"])
def test_verify_folder_without_genai_config(work, capsys, tiny_checkpoint, kind):
    folder = tiny_checkpoint if kind == "checkpoint" else work / "empty"
    folder.mkdir(exist_ok=True)
    rc = verify_cli.main([str(folder), "--reference", "lfm2-tiny-random"])
    err = capsys.readouterr().err
    assert_user_error(rc, "", err, "no genai_config.json", "lfm2_onnx.build")
    assert_nothing_left(work)


def test_verify_bad_command_line(capsys):
    rc = verify_cli.main(["some-export"])
    assert_user_error(rc, "", capsys.readouterr().err, "required: --reference", "see python -m lfm2_onnx.verify --help")


def test_verify_reference_without_config(work, capsys, tiny_export):
    (work / "empty").mkdir()
    rc = verify_cli.main([str(tiny_export), "--reference", str(work / "empty")])
    err = capsys.readouterr().err
    assert_user_error(rc, "", err, "--reference", "no config.json", "the checkpoint folder the export was built from")


def test_build_verify_runs_the_comparison(tmp_path, capsys):
    """build --verify builds, then checks the export against transformers and reports the table."""
    from lfm2_onnx.build import main

    rc = main(["-m", "lfm2-tiny-random", "-o", str(tmp_path / "out"), "--verify", "-q"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max|Δlogit|" in out and "greedy match: 3/3 prompts identical over 32 tokens" in out
    assert "\nPASS (fp32" in out


def test_verify_reference_of_another_shape(work, capsys, tiny_export):
    """A reference of another shape: the configs are compared first, and the differing fields named."""
    from lfm2_onnx.builder.tiny import write_tiny_checkpoint

    other = write_tiny_checkpoint(work / "other", vocab_size=1024, layer_types=["conv", "full_attention"])
    rc = verify_cli.main([str(tiny_export), "--reference", str(other)])
    captured = capsys.readouterr()
    line = assert_user_error(rc, captured.out, captured.err, "was not built from", "vocab_size 768 vs 1024",
                             "layer_types [6 layers, 2 attention] vs [2 layers, 1 attention]",
                             "give --reference the checkpoint the export was built from")
    assert "hidden_size" not in line  # only the fields that differ
    assert captured.out == ""  # nothing was loaded or compared


def test_verify_prints_no_transformers_chatter(capfd, tiny_export, tiny_checkpoint):
    """verify's own use of transformers (loading bar, optional-kernel notes, deprecations) stays quiet."""
    assert verify_cli.main([str(tiny_export), "--reference", str(tiny_checkpoint), "--steps", "2"]) == 0
    captured = capfd.readouterr()
    assert captured.err == "", captured.err
    assert captured.out.splitlines()[0].startswith("phase") and "PASS (fp32" in captured.out


# --- interrupted builds --------------------------------------------------------------------------

SLOW_BUILD = """
import sys, time
from lfm2_onnx import build
from lfm2_onnx.builder import export

real = export.save_with_external_data

def slow(*args, **kwargs):  # writes the weights, then waits to be killed
    chunks = real(*args, **kwargs)
    print("written", flush=True)
    time.sleep(120)
    return chunks

export.save_with_external_data = slow
sys.exit(build.main(sys.argv[1:]))
"""


def test_sigterm_during_build_leaves_nothing(work):
    import signal

    proc = subprocess.Popen([sys.executable, "-c", SLOW_BUILD, "-m", "lfm2-tiny-random", "-o", "out", "-q"],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written", proc.stderr.read() if proc.poll() is not None else ""
        assert [p.name for p in work.glob(".out.partial-*")]  # the build is under way
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip() == "terminated"
    assert_nothing_left(work, work / "out")


def test_next_build_removes_stale_partials_only(work, capsys, tiny_checkpoint):
    import socket

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = work / f".out.partial-{host}-{dead_pid}-abc123"
    live = work / f".out.partial-{host}-{os.getpid()}-def456"  # a build still running (this process)
    other_host = work / f".out.partial-elsewhere-{dead_pid}-ghi789"  # can't tell: another machine's
    other_name = work / f".other.partial-{host}-{dead_pid}-jkl012"  # another output's
    legacy_old, legacy_new = work / ".out.partial-oldname1", work / ".out.partial-oldname2"  # no pid recorded
    for folder in (stale, live, other_host, other_name, legacy_old, legacy_new):
        (folder / "onnx").mkdir(parents=True)
        (folder / "onnx" / "model.onnx_data").write_bytes(b"\0" * 1024)
    day_ago = os.stat(legacy_old).st_mtime - 2 * 24 * 3600
    os.utime(legacy_old, (day_ago, day_ago))

    rc, out, err = run_build(capsys, "-i", tiny_checkpoint, "-o", work / "out")
    assert rc == 0, err
    assert (work / "out" / "genai_config.json").is_file()
    left = sorted(p.name for p in work.iterdir() if ".partial-" in p.name)
    assert left == sorted(p.name for p in (live, other_host, other_name, legacy_new))


# --- python -m lfm2_onnx.generate ----------------------------------------------------------------


def run_generate(capsys, *args) -> tuple[int, str, str]:
    from lfm2_onnx import generate

    rc = generate.main([*map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_generate_missing_weights(work, capsys, tiny_export):
    folder = shutil.copytree(tiny_export, work / "export")
    (folder / "onnx" / "model.onnx_data").unlink()
    rc, out, err = run_generate(capsys, folder, "--prompt", "Hi")
    assert_user_error(rc, out, err, "onnx/model.onnx_data", "is missing", "build it again")


@pytest.mark.parametrize("args,needles", [
    (["--max-length", "-1"], ["argument --max-length: must be an integer >= 1, got -1"]),
    (["--max-length", "100000"], ["--max-length 100000 exceeds the model's context of 4096", "at most 4096"]),
    (["--max-new-tokens", "0"], ["argument --max-new-tokens: must be an integer >= 1, got 0"]),
    (["--max-new-tokens", "5000"], ["+ --max-new-tokens 5000 exceeds the default --max-length 4096",
                                    "lower --max-new-tokens or raise --max-length"]),
    (["--max-length", "8", "--max-new-tokens", "6"], ["+ --max-new-tokens 6 exceeds --max-length 8"]),
    (["--top-k", "-1"], ["--top-k must be an integer >= 0"]),
    (["--top-p", "1.5"], ["--top-p must be in (0, 1]"]),
    (["--min-p", "1"], ["--min-p must be in [0, 1)"]),
    (["--temperature", "warm"], ["--temperature takes a number, got 'warm'"]),
    (["--repetition-penalty", "0"], ["--repetition-penalty must be > 0"]),
    (["--seed", "-2"], ["--seed must be an integer >= 0"]),
    (["--preset", "spicy"], ["--preset", "invalid choice: 'spicy'", "lfm2"]),
])
def test_generate_flags_are_checked_by_their_names(capsys, tiny_export, args, needles):
    rc, out, err = run_generate(capsys, tiny_export, "--prompt", "The capital of France is", *args)
    line = assert_user_error(rc, out, err, *needles)
    assert "max_new_tokens" not in line and "max_length" not in line and "top_k" not in line


def test_generate_chat_turn_checks_room(capsys, tiny_export, monkeypatch):
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))
    rc, out, err = run_generate(capsys, tiny_export, "--chat", "--prompt", "Hi", "--max-length", "12",
                                "--max-new-tokens", "8")
    assert_user_error(rc, "", err, "+ --max-new-tokens 8 exceeds --max-length 12")



# --- generate --image (LFM2-VL) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def vl_export(factory):
    return factory.export(factory.checkpoint(vl=True))


def write_picture(path: Path, height: int = 40, width: int = 56, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_generate_image_reply_equals_the_runtime_chat(capsys, vl_export, tmp_path):
    from lfm2_onnx.lfm2_model import Lfm2Model

    first, second = write_picture(tmp_path / "a.png"), write_picture(tmp_path / "b.jpg", 64, 32, seed=1)
    rc, out, err = run_generate(capsys, vl_export, "--image", first, "--image", second, "What are these?",
                                "--max-new-tokens", "12", "--temperature", "0")
    assert rc == 0, err
    model = Lfm2Model.load(vl_export)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(first)},
                                             {"type": "image", "image": str(second)},
                                             {"type": "text", "text": "What are these?"}]}]
    expected = model.chat(messages, max_new_tokens=12, temperature=0)["content"]
    assert expected and out == expected + "\n"
    rc, streamed, err = run_generate(capsys, vl_export, "--prompt", "What are these?", "--image", first, "--image",
                                     second, "--max-new-tokens", "12", "--temperature", "0", "--stream")
    assert rc == 0 and streamed == out, err


def test_generate_image_with_chat_starts_the_conversation(capsys, vl_export, tmp_path, monkeypatch):
    from lfm2_onnx.lfm2_model import Lfm2Model

    picture = write_picture(tmp_path / "a.png")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))
    rc, out, err = run_generate(capsys, vl_export, "--chat", "--image", picture, "--prompt", "Describe it.",
                                "--max-new-tokens", "10", "--temperature", "0")
    assert rc == 0, err
    messages = [{"role": "user", "content": [{"type": "image", "image": str(picture)},
                                             {"type": "text", "text": "Describe it."}]}]
    expected = Lfm2Model.load(vl_export).chat(messages, max_new_tokens=10, temperature=0)["content"]
    assert out == f"assistant> {expected}\n"


def test_generate_image_errors(capsys, tiny_export, vl_export, tmp_path):
    picture = write_picture(tmp_path / "a.png")
    rc, out, err = run_generate(capsys, vl_export, "--image", tmp_path / "missing.png", "Hi")
    assert_user_error(rc, out, err, "--image", "missing.png: no such file")
    (tmp_path / "notes.png").write_text("not a picture")
    rc, out, err = run_generate(capsys, vl_export, "--image", tmp_path / "notes.png", "Hi")
    assert_user_error(rc, out, err, "notes.png", "is not a readable image", "PNG, JPEG")
    rc, out, err = run_generate(capsys, tiny_export, "--image", picture, "Hi")
    assert_user_error(rc, out, err, "is a text-only export", "LFM2-VL export", "drop --image")
    rc, out, err = run_generate(capsys, vl_export, "--image", picture, "Hi", "--prompt", "Hello")
    assert_user_error(rc, out, err, "give the prompt once")
    big = write_picture(tmp_path / "big.png", 1024, 1024)  # 4 tiles + thumbnail: 1280 image tokens
    rc, out, err = run_generate(capsys, vl_export, "--image", big, "Hi", "--max-length", "512")
    assert_user_error(rc, out, err, "1280 of them for 1 image(s)", "at most 512")

def test_cuda_hint_says_uninstall_the_cpu_build_first(monkeypatch):
    import onnxruntime
    from importlib import metadata

    from lfm2_onnx import session

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    installed = {"onnxruntime": "1.32.0", "onnxruntime-genai": "0.18.0"}

    def version(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(UserError) as e:
        session.check_ep_flag("cuda")
    message = str(e.value)
    assert message.startswith("--ep cuda needs onnxruntime-gpu, but the CPU onnxruntime is installed")
    assert message.index("pip uninstall -y onnxruntime onnxruntime-genai") < message.index("pip install onnxruntime-gpu")
    assert "lfm2-onnx[cuda]" not in message and message.endswith("or use --ep cpu")
    installed.pop("onnxruntime-genai")
    with pytest.raises(UserError, match=r"pip uninstall -y onnxruntime, then pip install onnxruntime-gpu;"):
        session.check_ep_flag("cuda")
    installed.clear()
    with pytest.raises(UserError, match=r"needs onnxruntime-gpu with a CUDA device: pip install onnxruntime-gpu"):
        session.check_ep_flag("cuda")
    session.check_ep_flag("cpu")  # no check for the CPU


# --- --help --------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["lfm2_onnx.build", "lfm2_onnx.verify", "lfm2_onnx.generate", "lfm2_onnx.bench",
                                    "lfm2_onnx.builder.random_checkpoint"])
def test_every_option_has_help(module):
    import argparse
    import importlib

    parser = importlib.import_module(module).parser()
    undocumented = [a.option_strings or a.dest for a in parser._actions
                    if a.help is None and not isinstance(a, argparse._HelpAction)]
    assert undocumented == []


def test_readme_lists_every_pass_rule():
    """The README's Verify section states the thresholds verify applies, every one of them."""
    from lfm2_onnx.builder.parity import THRESHOLDS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Verify\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "≤" in line]
    assert len(rows) == len(THRESHOLDS)
    for row, (key, rule) in zip(rows, THRESHOLDS.items()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        number = lambda cell: float(cell.split()[1])  # noqa: E731  "≤ 1e-4 × max(1, std)" -> 1e-4
        assert cells[2].startswith("≤ ") and number(cells[2]) == rule["mean_kl"], (key, row)
        assert cells[3] == ("100%" if rule["top1"] == 1 else f"≥ {rule['top1']:.0%}"), (key, row)
        if rule["tie_margin"] == 0:
            assert cells[4] == "0 (every position)", (key, row)
        else:
            assert float(cells[4].split()[0]) == rule["tie_margin"] and cells[4].endswith("× max(1, std)"), (key, row)
        if rule["max_abs"] is None:
            assert cells[1] == "", (key, row)
        else:
            assert number(cells[1]) == rule["max_abs"] and cells[1].endswith("× max(1, std)"), (key, row)
        assert cells[5] == ("identical" if key == "fp32" else "not judged"), (key, row)
