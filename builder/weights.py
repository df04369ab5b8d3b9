"""Streaming access to a checkpoint's safetensors: headers up front, tensor data one at a time.

Nothing is loaded until the graph writer asks for an initializer, and each tensor is released as
soon as it has been written, so a 2.6B model builds in a few GB of memory.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from safetensors import safe_open

from lfm2_onnx.errors import UserError

from .spec import Lfm2Spec
from .tensors import LM_HEAD, PER_EXPERT, expected_shapes

_NUMPY = {"fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}


class Checkpoint:
    """Tensor names, shapes and lazy loads over one or more .safetensors files."""

    def __init__(self, folder: Path, rename: Callable[[str], str] | None = None):
        """rename: stored tensor name -> the name the builder asks for (a VL checkpoint's layouts)."""
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._stored: dict[str, str] = {}  # presented name -> name in the file, where they differ
        for file in self._files():
            for stored, shape in _read_header(file).items():
                name = rename(stored) if rename else stored
                if rename and name in self._where:
                    raise UserError(f"{folder}: the weights hold {name} twice (as {self._stored.get(name, name)} "
                                    f"and {stored}); keep one checkpoint per folder")
                if name != stored:
                    self._stored[name] = stored
                self._where[name] = file
                self._shapes[name] = shape
        # Packed expert tensors assembled from an original checkpoint's per-expert ones.
        self._packed: dict[str, list[list[str]]] = {}
        self._unpackable: list[str] = []  # per-expert tensors missing from a packed group
        self._pack_per_expert()

    def _pack_per_expert(self) -> None:
        """Present experts.N.w1|w3|w2.weight as transformers 5's experts.gate_up_proj / down_proj.

        gate_up_proj[n] is w1[n] stacked over w3[n] (gate rows first), down_proj[n] is w2[n].
        """
        groups: dict[str, dict[str, set[int]]] = {}
        for name in self._shapes:
            match = PER_EXPERT.match(name)
            if match:
                base, expert, kind = match.groups()
                groups.setdefault(base, {}).setdefault(kind, set()).add(int(expert))
        for base, kinds in groups.items():
            count = 1 + max(max(found) for found in kinds.values())
            for packed, parts in ((f"{base}.gate_up_proj", ("w1", "w3")), (f"{base}.down_proj", ("w2",))):
                names = [[f"{base}.{n}.{part}.weight" for part in parts] for n in range(count)]
                missing = [name for row in names for name in row if name not in self._shapes]
                if missing:
                    self._unpackable.extend(missing)
                    continue
                rows, cols = self._shapes[names[0][0]]
                self._packed[packed] = names
                self._shapes[packed] = (count, rows * len(parts), cols)

    def _files(self) -> list[Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                files = sorted({self.folder / f for f in weight_map.values()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
                raise UserError(f"{index}: not a safetensors index ({type(e).__name__}: {e}); "
                                "download it again or remove it") from None
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise UserError(f"{self.folder}: shards listed in the index are missing: {', '.join(missing[:3])}"
                                f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}; "
                                "download them again")
            return files
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            found = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt"))
            hint = f" (found {', '.join(found)}: convert them to safetensors first)" if found else ""
            raise UserError(f"{self.folder}: no *.safetensors weights{hint}")
        return files

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def load(self, name: str) -> torch.Tensor:
        if name in self._packed:
            return torch.stack([torch.cat([self.load(part) for part in parts]) for parts in self._packed[name]])
        file = self._where[name]
        try:
            with safe_open(file, framework="pt") as f:
                return f.get_tensor(self._stored.get(name, name))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise UserError(f"{file}: cannot read tensor {name} ({e}); the file is damaged, download it again") from None

    def names(self) -> list[str]:
        return list(self._shapes)

    def validate(self, spec: Lfm2Spec, extra: dict[str, tuple[int, ...]] | None = None) -> None:
        """Every tensor the spec needs is present with the shape the spec implies.

        extra: more expected tensors (a VL checkpoint's vision tower and projector)."""
        expected = {**expected_shapes(spec), **(extra or {})}
        missing = [n for n in expected if n not in self._shapes
                   and not (n == LM_HEAD and spec.tie_word_embeddings)]
        missing = self._unpackable + missing  # a missing expert names itself, not its packed group
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise UserError(f"{self.folder}: weights missing for the config: {', '.join(missing[:3])}{more}; "
                            "config.json and the weights must come from the same checkpoint")
        wrong = [f"{n} is {list(self._shapes[n])}, config implies {list(s)}"
                 for n, s in expected.items() if n in self._shapes and self._shapes[n] != s]
        if wrong:
            more = f" (and {len(wrong) - 2} more)" if len(wrong) > 2 else ""
            raise UserError(f"{self.folder}: weights disagree with config.json: {'; '.join(wrong[:2])}{more}; "
                            "use the config.json that came with these weights")


def _read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Parse a safetensors header and check the file is long enough for the data it declares."""
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            size = file.stat().st_size
            if header_len > size - 8:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(header_len))
        shapes, data_end = {}, 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            shapes[name] = tuple(int(d) for d in info["shape"])
            data_end = max(data_end, int(info["data_offsets"][1]))
    except IsADirectoryError:
        raise UserError(f"{file}: a folder, not a safetensors file; remove it or download the weights again") from None
    except OSError as e:
        raise UserError(f"{file}: cannot read it ({e.strerror}); check the file and its permissions") from None
    except (struct.error, ValueError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise UserError(f"{file}: not a valid safetensors file ({type(e).__name__}: {e}); download it again") from None
    if 8 + header_len + data_end > size:
        raise UserError(f"{file}: truncated ({size} bytes, header declares {8 + header_len + data_end}); download it again")
    return shapes


def to_numpy(tensor: torch.Tensor, precision: str) -> np.ndarray:
    """Cast on the torch side (bf16 sources included), then hand numpy the bytes."""
    if precision == "bf16":
        return tensor.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    torch_dtype = torch.float16 if precision == "fp16" else torch.float32
    return tensor.to(torch_dtype).contiguous().numpy()
