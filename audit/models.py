"""Checkpoints: load a Hugging Face directory or a ``.gguf`` file into a hookable model.

Every model is wrapped in transformer-lens' ``TransformerBridge`` so activation sites are
TransformerLens hook names (``blocks.{l}.hook_resid_post``). Weights load from
safetensors; pickle-based weights are refused unless the caller allows them (and are
then read with ``weights_only=True`` by transformers). ``trust_remote_code`` is off
unless asked for. A ``.gguf`` file is converted once into a cached HF directory.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from audit.errors import InputError
from audit.progress import log

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_HASHED = (".json", ".safetensors", ".gguf", ".model", ".txt", *_PICKLE_SUFFIXES)


def cache_root() -> Path:
    """Where converted checkpoints and activation caches live (``$AUDIT_CACHE``)."""
    return Path(os.environ.get("AUDIT_CACHE", Path.home() / ".cache" / "unlearning-audit"))


def content_hash(path: str | Path) -> str:
    """SHA-256 over a checkpoint's weight, config and tokenizer files (names and bytes)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _HASHED)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class LoadedModel:
    """A checkpoint loaded for auditing."""

    role: str
    path: str
    hash: str
    hf: Any
    tokenizer: Any
    bridge: Any
    device: str = "cpu"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits for right-padded ids, through the bridge (so active hooks apply)."""
        return self.bridge(ids, attention_mask=mask, return_type="logits")

    def info(self) -> dict[str, Any]:
        cfg = self.hf.config
        return {
            "role": self.role, "path": self.path, "hash": self.hash,
            "architecture": (cfg.architectures or [type(self.hf).__name__])[0],
            "model_type": cfg.model_type, "n_layers": self.n_layers, "d_model": self.d_model,
            "n_params": int(sum(p.numel() for p in self.hf.parameters())), **self.meta,
        }


def _hf_dir_for(path: Path, allow_pickle: bool) -> tuple[Path, bool]:
    """Validate a checkpoint directory; returns (dir, use_safetensors)."""
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise InputError(f"{path} is neither a Hugging Face checkpoint directory nor a .gguf file")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
    names = [f.name for f in path.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return path, True
    pickled = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
    if pickled:
        if not allow_pickle:
            raise InputError(
                f"{path} holds pickle-based weights ({', '.join(sorted(pickled))}); unpickling can run "
                "arbitrary code, so they are refused. Convert them to safetensors, or pass --allow-pickle "
                "if you trust the file (it is then read with torch.load(weights_only=True))."
            )
        return path, False
    raise InputError(f"{path} has a config.json but no weights (*.safetensors)")


def gguf_to_hf(gguf: Path, trust_remote_code: bool = False) -> Path:
    """Convert a .gguf file once into a cached HF directory (transformers' GGUF loader)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise InputError(f"checkpoint not found: {gguf}")
    out = cache_root() / "gguf" / content_hash(gguf)
    if (out / "config.json").is_file():
        return out
    log.info("converting %s to a Hugging Face checkpoint in %s (once)", gguf, out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # newer transformers keep quantized GGUF weights packed (and refuse to save them) unless
    # told to unpack; older ones always unpack and have no GgufConfig
    unpack: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        unpack["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32, trust_remote_code=trust_remote_code,
            **unpack,
        )
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot read {gguf} as a GGUF checkpoint: {e}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now: drop the loader's state so they save
        quantizer.remove_quantization_config(model)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:  # an interrupted conversion leaves no half-written directory
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_model(
    path: str | Path,
    role: str = "model",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a checkpoint (HF directory or ``.gguf`` file) as a hookable model.

    Raises:
        InputError: missing path, not a checkpoint, refused pickle, unreadable weights.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    p = Path(path)
    meta: dict[str, Any] = {}
    if p.suffix == ".gguf":
        digest = content_hash(p)
        hf_dir, safe = gguf_to_hf(p, trust_remote_code), True
        meta["converted_from"] = str(p)
    else:
        hf_dir, safe = _hf_dir_for(p, allow_pickle)
        digest = content_hash(hf_dir)
    try:
        tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            hf_dir, torch_dtype=DTYPES[dtype], use_safetensors=safe, trust_remote_code=trust_remote_code
        ).to(device).eval()
    except (ValueError, OSError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as e:
        # an UnpicklingError is torch.load(weights_only=True) refusing a pickle that names code
        raise InputError(f"cannot load checkpoint {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for q in model.parameters():
        q.requires_grad_(False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    bridge = TransformerBridge.boot_transformers(
        str(hf_dir), hf_model=model, tokenizer=tok, device=device, dtype=DTYPES[dtype],
        trust_remote_code=trust_remote_code,
    )
    bridge.eval()
    return LoadedModel(role, str(p), digest, model, tok, bridge, device, meta)


def _vocab_hash(tok) -> str:
    items = sorted(tok.get_vocab().items())
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def check_compatible(models: list[LoadedModel]) -> None:
    """Base, unlearned and reference must share architecture and tokenizer.

    Raises:
        InputError: naming the two models and what differs.
    """
    first = models[0]
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    for other in models[1:]:
        for k in keys:
            a, b = getattr(first.hf.config, k, None), getattr(other.hf.config, k, None)
            if a != b:
                raise InputError(
                    f"{first.role} and {other.role} have different architectures: "
                    f"{k} is {a} in {first.path} but {b} in {other.path}"
                )
        if _vocab_hash(first.tokenizer) != _vocab_hash(other.tokenizer):
            va, vb = first.tokenizer.get_vocab(), other.tokenizer.get_vocab()
            diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
            raise InputError(
                f"{first.role} and {other.role} have different tokenizers "
                f"({len(va)} vs {len(vb)} tokens; e.g. {diff})"
            )
