"""Several exports of one model in one folder: which variants (EP x precision) it holds, and which one to run.

    OUT/onnx/model.onnx, model_q4.onnx, ...         the graphs, transformers.js's names
    OUT/genai_config.json                           onnxruntime-genai's default (the first variant built)
    OUT/genai_config.<ep>-<precision>.json          every variant's own genai config
    OUT/variants.json                               the list below: files, sizes, build options, verify result

Measured with onnxruntime-genai 0.18: it resolves decoder.filename under the folder of the
genai_config.json it opens and refuses `..` ("Config path must not contain path traversal") and
absolute paths, so a per-variant config can't sit in a subfolder and point back at onnx/ without
copying the weights there. Config.overlay() appends to arrays (an overlay of a whole config doubles
layer_types), so the variant configs are complete configs beside the root one, and onnxruntime-genai
runs a variant by overlaying only its file name on the folder:
    config = og.Config(OUT); config.overlay('{"model": {"decoder": {"filename": "onnx/model_q4.onnx"}}}')
(for a CUDA variant also config.clear_providers(); config.append_provider("cuda")).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError

# Every precision and execution provider an export can be built for (the builder decides which pairs are valid).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
EXECUTION_PROVIDERS = ("cpu", "cuda")

MANIFEST = "variants.json"
MANIFEST_FORMAT = 1
ROOT_GENAI_CONFIG = "genai_config.json"
# What a folder holds besides the graphs: every client needs these, whatever the variant.
METADATA_PATTERNS = ("*.json", "*.jinja", "tokenizer*", "README.md")

# The default variant for an EP: its build default first (exact), then by fidelity.
PREFERENCE = {"cpu": ("fp32", "fp16", "int8", "int4"), "cuda": ("fp16", "bf16", "int8", "int4")}
# EPs a variant built for one EP also runs on: CPU graphs run on CUDA (unfused Q/K norms), not the reverse.
RUNS_ON = {"cpu": ("cpu",), "cuda": ("cuda", "cpu")}


def variant_name(ep: str, precision: str) -> str:
    return f"{ep}-{precision}"


def genai_config_file(name: str) -> str:
    return f"genai_config.{name}.json"


@dataclass
class Variant:
    precision: str
    ep: str
    onnx_file: str  # relative to the folder, e.g. onnx/model_q4.onnx
    files: list[str]  # the graph and its external data, relative to the folder
    bytes: int
    options: dict = field(default_factory=dict)  # the build options (block size, lm head, ...)
    built_with: dict = field(default_factory=dict)  # command line, tool versions, date
    verify: dict | None = None  # builder.parity's summary, when the variant was verified

    @property
    def name(self) -> str:
        return variant_name(self.ep, self.precision)

    @property
    def genai_config(self) -> str:
        return genai_config_file(self.name)

    @property
    def verified(self) -> bool | None:
        """True/False: the stored verify passed/failed; None: never verified."""
        return None if self.verify is None else bool(self.verify.get("passed"))


@dataclass
class Manifest:
    variants: list[Variant]
    source: dict = field(default_factory=dict)  # the checkpoint: id or folder name, revision, card metadata
    default: str | None = None  # the variant the root genai_config.json names

    def get(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.variants]

    def to_json(self) -> dict:
        return {"format": MANIFEST_FORMAT, "default": self.default, "source": self.source,
                "variants": [{"name": v.name, **asdict(v)} for v in self.variants]}

    @classmethod
    def from_json(cls, data: dict) -> Manifest:
        variants = []
        for entry in data["variants"]:
            entry = {k: v for k, v in entry.items() if k != "name"}
            variants.append(Variant(**entry))
        return cls(variants, data.get("source") or {}, data.get("default"))


def read_manifest(folder: str | Path) -> Manifest | None:
    """The folder's variants.json, or None for a folder built before variants existed (one variant)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a variants list written by lfm2_onnx.build ({e!r}); "
                        "rebuild the folder") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(folder) / MANIFEST, manifest.to_json())


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON beside the target and rename it over: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=4) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose(manifest: Manifest, ep: str, precision: str | None = None, *, where: str = "") -> Variant:
    """The variant to run on `ep`: the one of `precision`, or the best one for the EP.

    A variant built for this EP wins over one built for another EP that also runs here (a CPU
    variant on CUDA); a variant whose stored verify failed is the default only if nothing else is.
    """
    if ep not in RUNS_ON:
        raise UserError(f"unknown execution provider {ep!r}; choose cpu or cuda")
    runnable = [v for v in manifest.variants if v.ep in RUNS_ON[ep]]
    if precision is not None:
        runnable = [v for v in runnable if v.precision == precision]
    if not runnable:
        wanted = f"{precision} variant" if precision else "variant"
        raise UserError(f"{where or 'the model'} has no {wanted} that runs on ep={ep}; it holds: "
                        f"{', '.join(manifest.names) or 'nothing'} (choose one of those, or add one with "
                        "python -m lfm2_onnx.build ... --add)")

    def rank(v: Variant) -> tuple:
        order = PREFERENCE[v.ep]
        return (v.verified is False, RUNS_ON[ep].index(v.ep),
                order.index(v.precision) if v.precision in order else len(order))

    return min(runnable, key=rank)


def variant_config_path(folder: Path, precision: str | None, ep: str, *, where: str = "") -> Path:
    """The genai config to run: the chosen variant's, or the root one for a single-variant folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        if precision is not None:
            raise UserError(f"{where or folder} holds a single export without {MANIFEST} (built by an older "
                            "lfm2_onnx); drop --precision or rebuild it")
        return folder / ROOT_GENAI_CONFIG
    return folder / config_file(manifest, choose(manifest, ep, precision, where=where or str(folder)))


def config_file(manifest: Manifest, variant: Variant) -> str:
    """The genai config a variant runs from: the root one for the default variant (what
    onnxruntime-genai reads, edits included), its own for the others."""
    return ROOT_GENAI_CONFIG if variant.name == manifest.default else variant.genai_config
