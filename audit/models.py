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
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from audit.errors import InputError
from audit.progress import log

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# what a checkpoint *is*: its weights, its config and its tokenizer, picked by name from
# the checkpoint folder itself (never a subfolder), so nothing else that lands in the
# folder (an --out inside it, notes, caches) changes the recorded identity
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_HASHED_NAMES = frozenset({
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.json", "chat_template.jinja",
    "model.safetensors.index.json", "pytorch_model.bin.index.json",
})


def cache_root() -> Path:
    """Where converted checkpoints and activation caches live (``$AUDIT_CACHE``)."""
    return Path(os.environ.get("AUDIT_CACHE", Path.home() / ".cache" / "unlearning-audit"))


def cached_json(model: LoadedModel, kind: str, parts: Sequence[str], compute: Callable[[], Any],
                encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Any:
    """``compute()`` of a loaded model, cached as JSON under ``$AUDIT_CACHE/<kind>``.

    The key is the checkpoint's content hash, its device and dtype, the torch version and
    ``parts`` (everything else the computation reads, a cache version first). An unreadable
    entry is recomputed, never trusted; a new entry is written atomically.
    """
    import json

    from audit.atomic import atomic_path

    # the dtype recorded at load: a cached entry is read without the weights resident (--low-memory)
    blob = "|".join([*parts, model.hash, str(model.device), str(model.dtype), torch.__version__])
    path = cache_root() / kind / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return decode(json.loads(path.read_text()))
        except Exception as e:  # noqa: BLE001 (an unreadable entry is recomputed)
            log.warning("%s cache entry %s is unreadable (%s); recomputing it", kind, path, e)
    out = compute()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(encode(out)))
    return out


def hashed_files(path: str | Path) -> list[Path]:
    """The files :func:`content_hash` reads: a file itself, or in a folder (not below it)
    the weight shards (``*.safetensors``, ``*.bin``, ``*.gguf``, ``*.pt``, ``*.pth``),
    ``config.json``, ``generation_config.json``, the tokenizer files and shard indexes."""
    p = Path(path)
    if p.is_file():
        return [p]
    return sorted(f for f in p.iterdir() if f.is_file() and (f.name in _HASHED_NAMES or f.suffix in _WEIGHT_SUFFIXES))


def content_hash(path: str | Path) -> str:
    """SHA-256 over a checkpoint's weight, config and tokenizer files (names and bytes).

    Only the files :func:`hashed_files` names count: anything else in the folder (an
    audit's output, a README) leaves the identity, and so ``--resume`` and the caches, alone.
    """
    h = hashlib.sha256()
    for f in hashed_files(path):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def check_device(device: str) -> str:
    """Check a torch device string before any model loads; returns it.

    ``cpu`` always works; ``cuda`` / ``cuda:N`` need CUDA and that GPU, ``mps`` needs
    Apple's backend; ``meta`` (no data) is refused; any other device must take a tensor.

    Raises:
        InputError: an unknown, unavailable or unsupported device, naming it.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InputError(f"unknown device '{device}': {str(e).splitlines()[0] if str(e) else 'not a torch device'}"
                         " (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return device
    if dev.type == "meta":
        raise InputError(f"device '{device}' holds no data, so nothing can be scored on it; use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}': CUDA is not available on this machine (use --device cpu)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InputError(f"device '{device}': this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return device
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device '{device}': the MPS backend is not available on this machine (use --device cpu)")
        return device
    try:
        torch.zeros(1, device=dev)
    except Exception as e:  # noqa: BLE001  (each backend raises its own error for "not here")
        raise InputError(f"device '{device}' is not usable here: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return device


@dataclass
class LoadedModel:
    """A checkpoint loaded for auditing.

    ``hf`` and ``bridge`` are the weights. Under a :class:`Residency` with ``low_memory``
    they may be put down while another model's passes run, and are read back from the
    checkpoint the next time they are asked for; the tokenizer, the config and the shape
    stay. Ask for ``m.hf`` / ``m.bridge`` where they are used, rather than holding them
    across another model's work, or two models are resident again."""

    role: str
    path: str
    hash: str
    _hf: Any
    tokenizer: Any
    _bridge: Any
    device: str = "cpu"
    meta: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    """The HF folder the weights were read from (safetensors), for lenses that edit weights
    in place and read the originals back one tensor at a time (``None``: unknown)."""
    reload: Callable[[], tuple[Any, Any]] | None = None
    """Reads the weights again (``(hf, bridge)``) after :meth:`unload` (``None``: they cannot be put down)."""
    residency: Residency | None = None
    config: Any = field(init=False)
    """The HF config, kept while the weights are put down."""
    n_layers: int = field(init=False)
    d_model: int = field(init=False)
    n_params: int = field(init=False)
    architecture: str = field(init=False)
    dtype: Any = field(init=False)
    """The weights' torch dtype, kept while they are put down."""

    def __post_init__(self) -> None:
        self.config = self._hf.config
        self.architecture = (self.config.architectures or [type(self._hf).__name__])[0]
        self.n_layers = int(self._bridge.cfg.n_layers)
        self.d_model = int(self._bridge.cfg.d_model)
        self.n_params = int(sum(p.numel() for p in self._hf.parameters()))
        self.dtype = next(self._hf.parameters()).dtype

    @property
    def resident(self) -> bool:
        return self._hf is not None

    @property
    def hf(self) -> Any:
        self._ensure()
        return self._hf

    @property
    def bridge(self) -> Any:
        self._ensure()
        return self._bridge

    def _ensure(self) -> None:
        if self._hf is None:
            if self.residency is None or self.reload is None:
                raise RuntimeError(f"the {self.role} model's weights were put down and cannot be read back")
            self.residency.bring_in(self)

    def unload(self) -> None:
        """Put the weights down (they are read back from the checkpoint when next used)."""
        if self._hf is None or self.reload is None:
            return
        self._hf = self._bridge = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits for right-padded ids, through the bridge (so active hooks apply)."""
        return self.bridge(ids, attention_mask=mask, return_type="logits")

    def info(self) -> dict[str, Any]:
        return {
            "role": self.role, "path": self.path, "hash": self.hash, "architecture": self.architecture,
            "model_type": self.config.model_type, "n_layers": self.n_layers, "d_model": self.d_model,
            "n_params": self.n_params, **self.meta,
        }


class Residency:
    """Which models of a run hold their weights in memory (``--low-memory``, issue 19).

    With ``low_memory``, at most one: asking for a model's weights puts every other
    model's down first, so B, U and N are never resident together and the peak is one
    model plus what a lens adds. Without it every model stays loaded (the fast default).
    ``loads`` counts the reads of each role's weights (the first load included) and
    ``peak`` the most models resident at once, for tests and the log.
    """

    def __init__(self, low_memory: bool = False) -> None:
        self.low_memory = low_memory
        self.models: list[LoadedModel] = []
        self.loads: dict[str, int] = {}
        self.peak = 0

    def make_room(self, keep: LoadedModel | None = None) -> None:
        """With ``low_memory``, put down every model but ``keep``."""
        if self.low_memory:
            for m in self.models:
                if m is not keep:
                    m.unload()

    def add(self, m: LoadedModel) -> LoadedModel:
        m.residency = self
        self.models.append(m)
        self.loads[m.role] = self.loads.get(m.role, 0) + 1
        self._count()
        return m

    def bring_in(self, m: LoadedModel) -> None:
        self.make_room(keep=m)
        assert m.reload is not None
        m._hf, m._bridge = m.reload()
        self.loads[m.role] = self.loads.get(m.role, 0) + 1
        self._count()

    def _count(self) -> None:
        self.peak = max(self.peak, sum(x.resident for x in self.models))


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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


_GGUF_MAGIC = b"GGUF"
_GGUF_MAX_COUNT = 1 << 24  # tensors or metadata entries: far beyond any real model


def check_gguf_header(path: str | Path) -> None:
    """Check a ``.gguf`` file's fixed header (magic, version, tensor and metadata counts).

    Raises:
        InputError: a file too short for the header, without the GGUF magic, of an unknown
            version, or with counts no real file has (garbage after the magic).
    """
    import struct

    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(24)
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from None
    if len(head) < 24 or head[:4] != _GGUF_MAGIC:
        raise InputError(f"{p} is not a GGUF file (no GGUF header)")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (1, 2, 3):
        raise InputError(f"{p} is not a readable GGUF file (header version {version}; 1-3 are known)")
    if not 0 < n_tensors <= _GGUF_MAX_COUNT or n_kv > _GGUF_MAX_COUNT:
        raise InputError(f"{p} is not a readable GGUF file (its header claims {n_tensors} tensors and "
                         f"{n_kv} metadata entries)")


def gguf_to_hf(gguf: Path, trust_remote_code: bool = False) -> Path:
    """Convert a .gguf file once into a cached HF directory (transformers' GGUF loader)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise InputError(f"checkpoint not found: {gguf}")
    check_gguf_header(gguf)
    out = cache_root() / "gguf" / content_hash(gguf)
    if (out / "config.json").is_file():
        return out
    log.info("converting %s to a Hugging Face checkpoint in %s (once)", gguf, out)
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
    except Exception as e:  # noqa: BLE001  (an untrusted file: struct.error, IndexError, ... are all "bad file")
        raise InputError(f"cannot read {gguf} as a GGUF checkpoint: {_first_line(e)}") from None
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # the weights are plain tensors now: drop the loader's state so they save
        quantizer.remove_quantization_config(model)
    _save_checkpoint(model, tok, out)
    return out


def _save_checkpoint(model: Any, tok: Any, out: Path) -> None:
    """Save a model and tokenizer as an HF folder at ``out``, built beside it and renamed
    over it: an interrupted save leaves no half-written directory."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` names a hub model (``org/name`` or
    ``org/name@revision``) rather than a local path; ``None`` otherwise."""
    if spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or Path(spec).exists():
        return None
    m = _HUB_ID.match(spec)
    return (m["repo"], m["rev"]) if m else None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_checkpoint(spec: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint as users name it: a local folder or ``.gguf`` (as is), or a Hugging Face
    hub ID ``org/name[@revision]`` resolved through ``huggingface_hub`` into its snapshot
    folder. With ``HF_HUB_OFFLINE=1`` only the local cache is read. Returns the local path
    and what to record about it (``hub_id``, ``revision``, ``commit``: the snapshot's hash).

    Raises:
        InputError: a path that does not exist and is no hub ID, or a hub ID that cannot be
            resolved (not cached while offline, unknown repository or revision).
    """
    hub = parse_hub_id(str(spec))
    if hub is None:
        return Path(spec), {}
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, rev = hub
    offline = _hub_offline()
    try:
        local = Path(snapshot_download(repo, revision=rev, local_files_only=offline,
                                       allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                       "*.gguf"]))
    except LocalEntryNotFoundError:
        where = "in the local Hugging Face cache" + (" (HF_HUB_OFFLINE=1: nothing is downloaded)" if offline else "")
        raise InputError(f"checkpoint not found: {spec} is neither a local path nor a hub model {where}; "
                         f"download it once with `huggingface-cli download {repo}` or give a folder") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise InputError(f"checkpoint not found: hub model {spec}: {_first_line(e)}") from None
    except (OSError, ValueError) as e:  # no network, a bad revision string, a broken cache
        raise InputError(f"cannot resolve hub model {spec}: {_first_line(e)}") from None
    return local, {"hub_id": repo, "revision": rev or "main", "commit": local.name}


def is_adapter(path: Path) -> bool:
    """A PEFT adapter folder (``adapter_config.json``, no full model config)."""
    return path.is_dir() and (path / "adapter_config.json").is_file()


def merge_adapter(adapter: Path, trust_remote_code: bool = False) -> tuple[Path, dict[str, Any]]:
    """A PEFT adapter applied to its base model (``base_model_name_or_path`` of its
    ``adapter_config.json``: a local folder, relative to the adapter's folder when it is not
    absolute, or a hub ID) and merged, saved once as an HF folder under
    ``$AUDIT_CACHE/merged/<adapter hash>-<base hash>``. Returns that folder and what to
    record (``adapter``, ``adapter_base``).

    Raises:
        InputError: an unreadable adapter config, a base that cannot be found, or an adapter
            that does not fit its base.
    """
    import json

    try:
        acfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        base_spec = acfg["base_model_name_or_path"]
        if not isinstance(base_spec, str) or not base_spec:
            raise KeyError("base_model_name_or_path")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{adapter / 'adapter_config.json'} is not a readable PEFT adapter config "
                         f"(it needs base_model_name_or_path): {_first_line(e)}") from None
    base_path = Path(base_spec)
    if parse_hub_id(base_spec) is None and not base_path.is_absolute():
        base_path = (adapter / base_path) if (adapter / base_path).exists() else base_path
    base_dir, base_meta = resolve_checkpoint(base_spec if parse_hub_id(base_spec) else base_path)
    if is_adapter(base_dir):
        raise InputError(f"adapter {adapter}: its base {base_spec} is itself an adapter; merge that one first")
    base_dir, _ = _hf_dir_for(base_dir, allow_pickle=False)
    h = hashlib.sha256()
    for f in sorted(adapter.iterdir()):
        if f.is_file() and (f.name == "adapter_config.json" or f.name.startswith("adapter_model")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    key = f"{h.hexdigest()[:16]}-{content_hash(base_dir)}"
    out = cache_root() / "merged" / key
    meta = {"adapter": str(adapter), "adapter_base": base_spec}
    if "commit" in base_meta:
        meta["adapter_base_commit"] = base_meta["commit"]
    if (out / "config.json").is_file():
        return out, meta
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("merging adapter %s into %s (once, cached in %s)", adapter, base_spec, out)
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base_dir
        tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, RuntimeError, KeyError, SafetensorError) as e:
        raise InputError(f"cannot apply adapter {adapter} to its base {base_spec}: {_first_line(e)}") from None
    _save_checkpoint(merged, tok, out)
    return out, meta


def load_model(
    path: str | Path,
    role: str = "model",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    residency: Residency | None = None,
) -> LoadedModel:
    """Load a checkpoint (HF directory, ``.gguf`` file, hub ID ``org/name[@revision]`` or
    PEFT adapter folder, merged into its base) as a hookable model.

    With a ``residency``, the model joins it: under ``low_memory`` every other model's
    weights are put down before this one's are read, and read back when next used.

    Raises:
        InputError: missing path, not a checkpoint, refused pickle, unreadable weights.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    check_device(device)
    p, meta = resolve_checkpoint(path)
    if is_adapter(p):
        adapter = p
        p, more = merge_adapter(adapter, trust_remote_code)
        meta |= more
    if p.suffix == ".gguf":
        digest = content_hash(p)
        hf_dir, safe = gguf_to_hf(p, trust_remote_code), True
        meta["converted_from"] = str(p)
    else:
        hf_dir, safe = _hf_dir_for(p, allow_pickle)
        digest = content_hash(hf_dir)
    try:
        tok = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot load checkpoint {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token

    def weights() -> tuple[Any, Any]:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                hf_dir, torch_dtype=DTYPES[dtype], use_safetensors=safe, trust_remote_code=trust_remote_code
            ).to(device).eval()
        except (ValueError, OSError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as e:
            # an UnpicklingError is torch.load(weights_only=True) refusing a pickle that names code
            raise InputError(f"cannot load checkpoint {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        for q in model.parameters():
            q.requires_grad_(False)
        bridge = TransformerBridge.boot_transformers(
            str(hf_dir), hf_model=model, tokenizer=tok, device=device, dtype=DTYPES[dtype],
            trust_remote_code=trust_remote_code,
        )
        bridge.eval()
        return model, bridge

    if residency is not None:
        residency.make_room()  # with low_memory, the others are put down before this one is read
    model, bridge = weights()
    m = LoadedModel(role, str(Path(path)), digest, model, tok, bridge, device, meta, source=hf_dir if safe else None,
                    reload=weights if residency is not None else None)
    return residency.add(m) if residency is not None else m


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
            a, b = getattr(first.config, k, None), getattr(other.config, k, None)
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


_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")


def context_length(model: LoadedModel) -> int | None:
    """Most tokens the model reads at once (its config's ``max_position_embeddings`` or
    the like), or None when its config does not say."""
    cfg = model.config
    for key in _CONTEXT_KEYS:
        v = getattr(cfg, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def check_context_window(model: LoadedModel, items: Mapping[str, Sequence[Any]], *, reserve: int = 2) -> None:
    """Every item's prompt plus its longest candidate (plus ``reserve`` tokens for sampled
    continuations) must fit the model's context window; call it before any lens runs,
    on the items as scored (after chat-template wrapping).

    Args:
        model: the model whose tokenizer and context window count (the base).
        items: item lists by set name (``{"forget": [...], "retain": [...]}``).
        reserve: tokens beyond the longest candidate a lens may generate (leak@k samples
            the answer's length + 2).

    Raises:
        InputError: naming the set, the item, its length in tokens and the window.
    """
    from audit.scoring import encode_items

    limit = context_length(model)
    if limit is None:
        return
    for name, its in items.items():
        its = list(its)
        if not its:
            continue
        enc = encode_items(model.tokenizer, its)
        for it, prompt, cands in zip(its, enc.prompts, enc.candidates, strict=True):
            n = len(prompt) + max(len(c) for c in cands) + reserve
            if n > limit:
                raise InputError(
                    f"{name} item '{it.id}': its prompt and longest candidate take {n} tokens "
                    f"({len(prompt)} in the prompt, {reserve} reserved), but {model.role} model {model.path} "
                    f"reads at most {limit}; shorten the prompt or leave the item out"
                )
