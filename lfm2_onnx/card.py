"""The model card (README.md) of a published export: Hub metadata, the variants, how to run it.

Made with huggingface_hub's ModelCard/ModelCardData, so the YAML header is what the Hub parses.
"""

from __future__ import annotations

from pathlib import Path

from .variants import PREFERENCE, Manifest, Variant, read_manifest

# The source card's fields the export inherits: the weights' license is the source model's.
_INHERITED = ("license", "license_name", "license_link", "language")
# LiquidAI's models are under the LFM Open License v1.0; used when the source card isn't at hand
# (a checkpoint downloaded before README.md was fetched, or an offline cache).
_LIQUIDAI_LICENSE = {"license": "other", "license_name": "lfm1.0", "license_link": "LICENSE"}
TAGS = ["onnx", "onnxruntime-genai", "transformers.js", "lfm2", "liquid", "edge", "conversational"]

TEMPLATE = """\
---
{{ card_data }}
---

# {{ title }}

ONNX exports of [{{ base_model or "an LFM2 checkpoint" }}]({{ base_model_url }}) for **onnxruntime-genai**,
**transformers.js** and **onnxruntime**: one folder, {{ variants | length }} variant{{ "s" if variants | length != 1 else "" }}, built with lfm2_onnx from the
original weights. Attention layers are com.microsoft GroupQueryAttention; conv layers carry their
state as `past_conv.<i>` / `present_conv.<i>`.

## Variants

| variant | file | precision | EP | size | verify: max\\|Δlogit\\| / mean KL / greedy |
|---|---|---|---|---|---|
{% for v in variants -%}
| `{{ v.name }}`{{ " (default)" if v.name == default else "" }} | `{{ v.onnx_file }}` | {{ v.precision }}{{ " (transformers.js `" ~ v.options.js_dtype ~ "`)" if v.options.js_dtype else "" }} | {{ v.ep }} | {{ v.size }} | {{ v.verify_text }} |
{% endfor %}
{{ verify_note }}

## Use it

**lfm2_onnx** (`pip install lfm2-onnx[cpu]`; downloads only the chosen variant):

```python
from lfm2_onnx import Lfm2Model

model = Lfm2Model.load("{{ repo_id }}", ep="{{ example.ep }}", precision="{{ example.precision }}")
print(model.generate("The capital of France is", max_new_tokens=32))
```

```bash
python -m lfm2_onnx.generate {{ repo_id }} --ep {{ example.ep }} --precision {{ example.precision }} --prompt "Hello"
```

**onnxruntime-genai** (`genai_config.json` runs the `{{ default }}` variant; `genai_config.<variant>.json`
is each variant's complete config. onnxruntime-genai only opens files under the folder of the config
it reads, so another variant is selected by overlaying its file name):

```python
import onnxruntime_genai as og
from huggingface_hub import snapshot_download

folder = snapshot_download("{{ repo_id }}", allow_patterns=["*.json", "*.jinja", "tokenizer*", "{{ example.onnx_file }}*"])
config = og.Config(folder)
config.overlay('{"model": {"decoder": {"filename": "{{ example.onnx_file }}"}}}')
# a CUDA variant: also config.clear_providers(); config.append_provider("cuda")
model = og.Model(config)
```

**transformers.js** (`dtype` picks the file in `onnx/`):

```js
import { pipeline } from "@huggingface/transformers";

const generator = await pipeline("text-generation", "{{ repo_id }}", { dtype: "{{ js_example }}" });
const out = await generator([{ role: "user", content: "Hello" }], { max_new_tokens: 64 });
```

## How it was made

{% for v in variants -%}
- `{{ v.name }}`: `{{ v.built_with.command or "(built from Python)" }}`{{ " (" ~ v.built_with.date ~ ")" if v.built_with.date else "" }}
{% endfor %}
Versions: {{ versions }}.
`variants.json` lists every variant's files, build options and verify result.
"""


def source_card_metadata(checkpoint: Path) -> dict:
    """The license (and language) of the checkpoint's own card, if it has one."""
    readme = Path(checkpoint) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a README without (valid) metadata: nothing to inherit
        return {}
    return {k: data[k] for k in _INHERITED if data.get(k)}


def _license(manifest: Manifest, base_model: str | None) -> dict:
    meta = dict(manifest.source.get("card") or {})
    if not meta.get("license") and base_model and base_model.split("/")[0] == "LiquidAI":
        meta.update(_LIQUIDAI_LICENSE)
    link = meta.get("license_link")
    if link and base_model and "://" not in link:  # relative to the source repo, which holds the file
        meta["license_link"] = f"https://huggingface.co/{base_model}/blob/main/{link}"
    return meta


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _verify_text(v: Variant) -> str:
    if v.verify is None:
        return "not verified"
    r = v.verify
    worst = max((r[p] for p in ("prefill", "decode") if p in r), key=lambda p: p["mean_kl"], default=None)
    numbers = f"{worst['max_abs_logit_diff']:.2g} / {worst['mean_kl']:.2g} / " if worst else ""
    matched, total = r.get("greedy_match", [0, 0])
    verdict = "PASS" if r.get("passed") else "FAIL"
    against = " vs dequantized weights" if r.get("judged_against") == "dequantized weights" else ""
    return f"{verdict}{against}: {numbers}{matched}/{total} ({r.get('ep', '?')})"


def make_card(folder: Path, repo_id: str, *, base_model: str | None = None):
    """The ModelCard for `folder` published as `repo_id`."""
    from huggingface_hub import ModelCard, ModelCardData

    manifest = read_manifest(folder)
    base_model = base_model or manifest.source.get("model")
    if base_model and "/" not in base_model:  # lfm2-tiny-random and other non-Hub sources
        base_model = None
    data = ModelCardData(
        base_model=base_model, library_name="transformers.js", pipeline_tag="text-generation",
        tags=list(TAGS), **_license(manifest, base_model),
        **({"base_model_relation": "quantized"} if base_model else {}),
    )
    variants = []
    for v in manifest.variants:
        row = dict(vars(v), name=v.name, size=_size(v.bytes), verify_text=_verify_text(v),
                   genai_config=v.genai_config)
        variants.append(row)
    example = _example(manifest)
    named = [v for v in manifest.variants if v.options.get("js_dtype")]  # the ones transformers.js can pick
    js = next((v.options["js_dtype"] for v in named if v.ep == "cpu"), None) or (named[0].options["js_dtype"]
                                                                                  if named else "fp32")
    versions = {}
    for v in manifest.variants:
        versions.update((v.built_with or {}).get("versions") or {})
    verify_note = ("Verify: the export against transformers (fp32) on the same prompts, prefill then decode "
                   "steps; quantized variants are judged against transformers running their own dequantized "
                   "weights (`python -m lfm2_onnx.verify`).")
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=f"{repo_id.split('/')[-1]}", base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else "#",
        variants=variants, default=manifest.default, repo_id=repo_id, example=example, js_example=js,
        versions=", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or "unknown", verify_note=verify_note)


def _example(manifest: Manifest) -> dict:
    """The variant the usage examples run: the default one for the CPU when there is one."""
    cpu = [v for v in manifest.variants if v.ep == "cpu"]
    pool = cpu or manifest.variants
    order = PREFERENCE[pool[0].ep]
    v = min(pool, key=lambda v: order.index(v.precision) if v.precision in order else len(order))
    return {"ep": v.ep, "precision": v.precision, "onnx_file": v.onnx_file, "genai_config": v.genai_config}
